"""The results document (``docs/results.md``): dipflow beside the paper, per benchmark, generated from report rows.

One section per (dataset, task, scale, settings) found in the rows. Each says what it covers (images of the set,
failures), the protocol and settings of its numbers, hardware and software, iterations, time per image and dates;
then dipflow's figures beside the paper's and its baselines with the signed gap (dipflow − paper, dB), a per-image
table (with the paper's Table 1 for inpainting) and, when the rows carry it, the early-stopping study.

Report schema v1 rows lack the early-stopping, two-run, classical-baseline, torch and engine columns: the cells that
need them say "not measured" / "not recorded" and the study is left out. Pure pyarrow + stdlib: the caller reads the
rows (`pipelines.reporting.reports.read_report`, then `reports.latest_rows`) and passes them in.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.evaluation.benchmarks import BENCHMARKS, Benchmark, benchmark_for
from pipelines.evaluation.paper import PaperBenchmark, match_image
from pipelines.reporting.stopping_study import section as stopping_section
from pipelines.stats import mean

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.evaluation.paper import Figure

__all__ = ["ES_TARGET_DB", "Comparison", "Section", "comparisons", "render", "sections"]

ES_TARGET_DB = 0.5  # issue 6's goal: the no-ground-truth rule within 0.5 dB of the oracle on every image
NOT_MEASURED = "not measured"
_MINUS = "\u2212"


@dataclass
class Section:
    """The rows of one benchmark under one configuration, and the paper's figures for it (None if it has none)."""

    dataset: str
    task: str
    scale: int | None
    config: dict[str, Any]  # parsed config_json ({} when not recorded)
    rows: list[dict[str, Any]]  # every status, sorted by image key
    benchmark: Benchmark | None  # the paper's benchmark these rows can be set beside
    label: str = ""  # what sets these settings apart from another section of the same benchmark

    @property
    def paper(self) -> PaperBenchmark | None:
        """The paper's figures for it (None: not one of the paper's benchmarks)."""
        return self.benchmark.paper if self.benchmark else None

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "ok"]

    @property
    def synthesis(self) -> dict[str, Any]:
        return self.config.get("synthesis") or {}

    @property
    def title(self) -> str:
        base = (
            self.paper.title
            if self.paper
            else f"{_task_words(self.task, self.scale, self.synthesis)} on " + f"`{self.dataset}`"
        )
        return f"{base} ({self.label})" if self.label else base


@dataclass(frozen=True)
class Comparison:
    """One line of a section's comparison: dipflow's mean (None: not measured) beside the paper's figure."""

    label: str
    ours: float | None
    covered: int  # images with a value
    paper: float | None
    dip: bool  # a figure of DIP's (a shortfall is dipflow's), not a baseline's
    difference: bool = False  # a difference of two PSNRs (shown signed), not a PSNR

    @property
    def gap(self) -> float | None:
        return None if self.ours is None or self.paper is None else self.ours - self.paper

    def show(self, value: float | None) -> str:
        return _signed(value) if self.difference else _db(value)


def _task_words(task: str, scale: int | None, synthesis: Mapping[str, Any]) -> str:
    if task == "sr":
        return f"SR ×{scale}"
    if task == "denoise":
        return f"Denoising σ = {_plain(synthesis['sigma'])}" if synthesis.get("sigma") else "Denoising"
    if task == "inpaint" and synthesis.get("drop"):
        return f"Inpainting, {_plain(100 * float(synthesis['drop']))} % of pixels dropped"
    return task.replace("_", " ").capitalize()


# ------------------------------------------------------------------------------------------------ grouping


def sections(table: pa.Table) -> list[Section]:
    """The table's rows (one per image: pass `reports.latest_rows`) grouped by dataset, task, scale and settings;
    the paper's benchmarks first, in the paper's order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        key = (row["dataset"], row["task"], row.get("scale"), row.get("config_hash") or row.get("config_json"))
        groups.setdefault(key, []).append(row)
    order = list(BENCHMARKS)
    out = []
    for (dataset, task, scale, _), rows in groups.items():
        rows.sort(key=lambda r: r["image_key"])
        config = _config(rows[0].get("config_json"))
        out.append(Section(dataset, task, scale, config, rows, benchmark_for(dataset, task, scale)))
    out.sort(
        key=lambda s: (
            s.benchmark is None,
            order.index(s.benchmark.name) if s.benchmark else 0,
            s.dataset,
            s.task,
            s.scale or 0,
            _first_finish(s),
        )
    )
    _label_siblings(out)
    return out


def _config(text: str | None) -> dict[str, Any]:
    """A row's settings; a missing or unreadable config_json reads as none recorded."""
    try:
        config = json.loads(text or "{}")
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _first_finish(s: Section) -> str:
    return min((str(r.get("finished_at")) for r in s.rows if r.get("finished_at")), default="")


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def _label_siblings(secs: list[Section]) -> None:
    """Sections of one benchmark with different settings get a label naming the settings that differ."""
    by_bench: dict[tuple, list[Section]] = {}
    for s in secs:
        by_bench.setdefault((s.dataset, s.task, s.scale), []).append(s)
    for group in by_bench.values():
        if len(group) < 2:
            continue
        flats = [_flat(s.config) for s in group]
        keys = sorted({k for f in flats for k in f if len({json.dumps(g.get(k)) for g in flats}) > 1})
        for s, f in zip(group, flats, strict=True):
            s.label = ", ".join(f"{k} {_plain(f.get(k))}" for k in keys[:3]) or "settings not recorded"


# ------------------------------------------------------------------------------------------------ numbers


def _values(rows: Iterable[Mapping[str, Any]], column: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(column)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(float(v))
    return out


def _db(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    """A signed dB difference: +0.28, −0.31, 0.00."""
    if value is None:
        return "–"
    text = f"{abs(value):.2f}"
    return "0.00" if text == "0.00" else ("+" if value > 0 else _MINUS) + text


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return "none" if value is None else str(value)


def _counted(values: Iterable[Any], fmt: Callable[[Any], str] = str) -> str:
    """Distinct values with how many images each: "NVIDIA H200 (5 images)"; '' when there are none."""
    counts = Counter(v for v in values if v not in (None, ""))
    return ", ".join(f"{fmt(v)} ({n} image{'s' * (n != 1)})" for v, n in counts.most_common())


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
    ]


def _one_or_counted(values: Iterable[Any], fmt: Callable[[Any], str] = str) -> str:
    """The value when every image shares it, else each value with its count; '' when there are none."""
    kept = [v for v in values if v not in (None, "")]
    if len(set(kept)) == 1:
        return fmt(kept[0])
    return _counted(kept, fmt)


# ------------------------------------------------------------------------------------------------ figures

# Denoising: the paper's three DIP figures, in its order, and the report column that measures each.
_DENOISE_FIGURES = (
    ("DIP, raw output (last iterate)", "psnr_final"),
    ("DIP, EMA of outputs", "psnr_average"),
    ("DIP, averaged over 2 runs", "psnr_two_runs"),
)


def _mean_figure(label: str, rows: list[dict], column: str, paper: float | None, *, dip: bool) -> Comparison:
    values = _values(rows, column)
    return Comparison(label, mean(values), len(values), paper, dip)


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _classical(paper: PaperBenchmark | None, name: str) -> Figure | None:
    """The paper's figure for a classical denoiser measured here, by name: ``bm3d`` ↔ CBM3D, ``nlm`` ↔ NLM."""
    a = _squash(name)
    if paper is None or len(a) < 3:
        return None
    return next((f for f in paper.baselines if (b := _squash(f.label)) and (a in b or b in a)), None)


def _names(rows: list[dict], column: str) -> list[str]:
    return sorted({r[column] for r in rows if r.get(column)})


def comparisons(s: Section) -> list[Comparison]:
    """dipflow's means beside the paper's figures: DIP's own first, then the baselines measured here, then the
    paper's other baselines (not measured), then DIP's margin over bicubic."""
    p, ok = s.paper, s.ok
    dip = [f.psnr for f in p.dip] if p else []
    dip += [None] * (len(_DENOISE_FIGURES) - len(dip))  # the paper's figure for each of ours, or None
    if s.task == "denoise":
        out = [_mean_figure(label, ok, col, dip[i], dip=True) for i, (label, col) in enumerate(_DENOISE_FIGURES)]
    else:
        out = [_mean_figure("DIP, returned output", ok, "psnr", dip[0], dip=True)]
    out += _same_images(s)
    used: set[str] = set()
    for name in _names(ok, "baseline_name"):
        fig = p.baseline(name) if p else None
        used |= {fig.label} if fig else set()
        rows = [r for r in ok if r.get("baseline_name") == name]
        out.append(_mean_figure(_baseline_words(name, s), rows, "psnr_baseline", fig.psnr if fig else None, dip=False))
    for name in _names(ok, "classical_name"):
        fig = _classical(p, name)
        used |= {fig.label} if fig else set()
        rows = [r for r in ok if r.get("classical_name") == name]
        out.append(
            _mean_figure(
                f"{name} (classical, measured here)", rows, "psnr_classical", fig.psnr if fig else None, dip=False
            )
        )
    out += [Comparison(f.label, None, 0, f.psnr, dip=False) for f in (p.baselines if p else ()) if f.label not in used]
    return out + _margin(s)


def _same_images(s: Section) -> list[Comparison]:
    """With part of a set that has per-image figures in the paper: the paper's mean over the same images."""
    p = s.paper
    if p is None or not p.per_image or len(s.ok) >= p.images:
        return []
    pairs = [
        (r["psnr"], p.per_image[name])
        for r in s.ok
        if (name := match_image(p, r["image_key"])) in p.per_image and r.get("psnr") is not None
    ]
    if not pairs:
        return []
    return [
        Comparison(
            f"DIP, mean over the {len(pairs)} image(s) run",
            mean([a for a, _ in pairs]),
            len(pairs),
            mean([b for _, b in pairs]),
            dip=True,
        )
    ]


def _margin(s: Section) -> list[Comparison]:
    """DIP − bicubic, per image then averaged, beside the paper's difference of means."""
    bicubic = s.paper.baseline("bicubic") if s.paper else None
    diffs = [
        r["psnr"] - r["psnr_baseline"]
        for r in s.ok
        if r.get("baseline_name") == "bicubic" and r.get("psnr") is not None and r.get("psnr_baseline") is not None
    ]
    if bicubic is None or not diffs:
        return []
    return [
        Comparison(
            "DIP's margin over bicubic", mean(diffs), len(diffs), s.paper.psnr - bicubic.psnr, dip=True, difference=True
        )
    ]


def _baseline_words(name: str, s: Section) -> str:
    if name == "bicubic":
        return f"bicubic (Pillow BICUBIC ×{s.scale or s.synthesis.get('scale', '?')}, measured here)"
    if name == "input":
        return "the degraded input itself"
    return f"{name} (measured here)"


def _is_smoke(s: Section) -> bool:
    """Images cropped before the run (a CPU smoke protocol): its PSNRs do not measure what the paper's do."""
    return bool(s.synthesis.get("crop_size"))


def _figure_table(s: Section, figs: list[Comparison]) -> list[str]:
    n = len(s.ok)
    rows = []
    for f in figs:
        ours = (
            NOT_MEASURED
            if f.ours is None
            else f.show(f.ours) + (f" ({f.covered} of {n} images)" if f.covered < n else "")
        )
        gap = "– (cropped images)" if _is_smoke(s) and f.gap is not None else _signed(f.gap)
        rows.append([f.label, ours, "–" if f.paper is None else f.show(f.paper), gap])
    return _table(["figure (PSNR, dB)", "dipflow", "paper", "gap (dipflow − paper)"], rows)


def _shortfalls(figs: list[Comparison]) -> str:
    measured = [f for f in figs if f.dip and f.gap is not None]
    short = [f for f in measured if _signed(f.gap).startswith(_MINUS)]
    if not measured:
        return ""
    if not short:
        return "- **Against the paper:** dipflow reaches or passes each of the paper's figures it is compared with."
    parts = [f"{f.label}, {abs(f.gap):.2f} dB below the paper's {f.show(f.paper)}" for f in short]
    return "- **Short of the paper:** " + "; ".join(parts) + "."


# ------------------------------------------------------------------------------------------------ the facts

_CHANNEL = {"y": "on Y (BT.601, 16–235)", "rgb": "over the RGB channels", "gray": "on the grey image"}


def _crop_words(label: str) -> str:
    parts = []
    for part in label.split("+"):
        if m := re.fullmatch(r"(\d+)x(\d+)", part):
            parts.append(f"a {m[1]}×{m[2]} centre crop of the clean image")
        elif m := re.fullmatch(r"center(\d+)", part):
            parts.append(f"a centre crop of the clean image to a multiple of {m[1]}")
        elif part:
            parts.append(f"the crop {part!r}")
    return ", then ".join(parts)


def _psnr_words(protocol: tuple[Any, Any, Any]) -> str:
    channel, shave, crop = protocol
    text = "PSNR " + (_CHANNEL.get(channel, f"on {channel}") if channel else "(channel not recorded)")
    text += "" if shave is None else f", {shave} pixels shaved from each border" if shave else ", no border shaved"
    return text + (f", after {_crop_words(crop)}" if crop else ", on the whole image")


def _observation_words(s: Section) -> str:
    syn = s.synthesis
    task = syn.get("task")
    if not syn:
        return "the images as given (no synthesised degradation)"
    if task == "sr":
        return f"the LR image made from the clean one with Pillow LANCZOS ×{syn.get('scale')}"
    if task == "denoise":
        text = f"Gaussian noise of σ = {_plain(syn.get('sigma'))} (0–255 units) added, clipped to [0, 1]"
    elif task == "inpaint":
        text = f"a Bernoulli mask dropping {_plain(100 * float(syn.get('drop') or 0))} % of the pixels"
    else:
        text = f"dipcore.degrade(task={task!r})"
    return text + ", drawn from a fixed per-image seed (the run's seed and the image key)"


def _net_words(c: Mapping[str, Any]) -> str:
    o = c.get("net_options") or {}
    down, up, skip = o.get("channels_down"), o.get("channels_up"), o.get("channels_skip")
    if c.get("net") != "skip" or not down:
        return f"{c.get('net')} net" + (
            f" ({', '.join(f'{k} {_plain(v)}' for k, v in sorted(o.items()))})" if o else ""
        )
    width = (
        f"{down[0]} channels at {len(down)} scales"
        if len(set(down)) == 1 and down == up
        else f"channels {_plain(down)} down and {_plain(up)} up"
    )
    skips = f"{skip[0]} skip channels" if skip and len(set(skip)) == 1 else f"skip channels {_plain(skip)}"
    rest = ([f"{o['upsample']} upsampling"] if o.get("upsample") else []) + (
        [f"{o['pad']} padding"] if o.get("pad") else []
    )
    return ", ".join([f"skip net with {width}", skips, *rest])


def _settings_words(c: Mapping[str, Any]) -> str:
    if not c:
        return "not recorded"
    parts = [_net_words(c)]
    if c.get("input"):
        parts.append(f"input z: {c['input']}, {c.get('input_depth')} channels")
    parts.append(f"Adam, LR {_plain(c.get('lr'))}, {c.get('iterations')} iterations")
    if c.get("reg_noise_std"):
        parts.append(f"input jitter σ {c['reg_noise_std']:.3g}")
    if c.get("ema"):
        parts.append(f"EMA of outputs with weight {_plain(c['ema'])}")
    parts.append("returns the EMA of outputs" if c.get("output") == "average" else "returns the last iterate")
    if (c.get("restarts") or 1) > 1:
        parts.append(f"{c['restarts']} runs averaged")
    if c.get("backtrack"):
        parts.append("backtracking when the loss jumps")
    if c.get("early_stopping"):
        parts.append(
            f"early stopping by the running-variance rule (W = {c.get('es_window')}, P = {c.get('es_patience')})"
        )
    if c.get("crop") == "center":
        parts.append("centre-cropped to the net's multiple")
    return "; ".join(parts)


def _engine_words(text: str | None) -> str | None:
    if not text:
        return None
    try:
        engine = json.loads(text)
    except ValueError:
        return text
    if isinstance(engine, Mapping):
        return ", ".join(f"{k} {_plain(v)}" for k, v in sorted(engine.items()))
    return _plain(engine)


def _coverage(s: Section) -> str:
    ok = s.ok
    total = s.paper.images if s.paper else len(s.rows)
    text = f"{len(ok)} of {total} images" + ("" if s.paper else " in the report")
    if s.paper and len(ok) < total:
        text += (" (partial): " + ", ".join(r["image_key"] for r in ok)) if ok else " (none restored)"
    failed = [r for r in s.rows if r["status"] == "error"]
    if failed:
        text += f"; {len(failed)} failed: " + ", ".join(
            f"{r['image_key']} ({(r.get('error') or 'no message')[:80]})" for r in failed
        )
    skipped = [r["image_key"] for r in s.rows if r["status"] == "skipped"]
    if skipped:
        text += f"; {len(skipped)} restored by a run that is not in these reports: " + ", ".join(skipped)
    return f"- **Coverage:** {text}."


def _against_paper(s: Section) -> str:
    p = s.paper
    if p is None:
        return "- **The paper:** has no figure for this dataset and task."
    reasons = []
    if len(s.ok) < p.images:
        reasons.append(f"{len(s.ok)} of the set's {p.images} images")
    if crop := s.synthesis.get("crop_size"):
        reasons.append(f"each image centre-cropped to {crop}×{crop} first (a smoke run)")
    iterations = s.config.get("iterations")
    if iterations is not None and iterations != p.iterations:
        reasons.append(f"{iterations} iterations (the paper: {p.iterations})")
    head = (
        "not directly: " + "; ".join(reasons)
        if reasons
        else f"the whole set with the paper's iteration count ({p.iterations})"
    )
    return f"- **Against the paper's setting:** {head}. The paper's protocol: {p.protocol}."


def _facts(s: Section) -> list[str]:
    ok = s.ok
    protocols = [(r.get("psnr_channel"), r.get("psnr_shave"), r.get("psnr_crop")) for r in ok]
    seeds = _one_or_counted(r.get("seed") for r in ok) or "not recorded"
    devices = _one_or_counted(r.get("device") for r in ok) or "not recorded"
    nodes = len({r["ray_node"] for r in ok if r.get("ray_node")})
    torch = _one_or_counted(r.get("torch_version") for r in ok) or "not recorded in these reports"
    engine = _one_or_counted(_engine_words(r.get("engine_json")) for r in ok) or "not recorded in these reports"
    protocol = (
        f"- **Protocol:** {_one_or_counted(protocols, _psnr_words) or 'not recorded'}. Observation: "
        f"{_observation_words(s)}. Seed {seeds} (the net's initialisation and input)."
    )
    hardware = (
        f"- **Hardware and software:** {devices}{f' on {nodes} Ray node(s)' if nodes else ''}; "
        f"torch {torch}; engine {engine}."
    )
    settings = f"- **Settings:** {_settings_words(s.config)}."
    return [_coverage(s), protocol, settings, hardware, _iterations(ok), _time(ok), _against_paper(s)]


def _iterations(ok: list[dict]) -> str:
    run = _one_or_counted(r.get("iterations_run") for r in ok) or "not recorded"
    returned = _one_or_counted(r.get("iteration_returned") for r in ok) or "not recorded"
    why = _one_or_counted(r.get("stop_reason") for r in ok)
    return (
        f"- **Iterations:** {run} run per image; output returned from iteration {returned}"
        + (f" (stopped by: {why})" if why and why != "iterations" else "")
        + "."
    )


def _time(ok: list[dict]) -> str:
    secs = _values(ok, "wall_seconds")
    days = sorted({r["finished_at"].date().isoformat() for r in ok if r.get("finished_at")})
    runs = ", ".join(f"`{x}`" for x in sorted({r["run_id"] for r in ok}))
    when = " to ".join(dict.fromkeys([days[0], days[-1]])) if days else "not recorded"
    if not secs:
        return f"- **Time per image:** not recorded. **Dates:** {when}. **Runs:** {runs or '–'}."
    return (
        f"- **Time per image:** {mean(secs):.1f} s on average ({min(secs):.1f} to {max(secs):.1f} s; "
        f"{sum(secs):.1f} s for {len(secs)} images), the wall-clock time of each image's final attempt. "
        f"**Dates:** {when} (UTC). **Runs:** {runs}."
    )


# ------------------------------------------------------------------------------------------------ per image

_Column = tuple[str, Callable[[dict[str, Any]], Any], Callable[[Any], str]]


def _get(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: r.get(name)


def _diff(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else a - b


def _image_columns(s: Section) -> list[_Column]:
    p = s.paper
    base = (
        _one_or_counted(r.get("baseline_name") for r in s.ok) if len(_names(s.ok, "baseline_name")) == 1 else "baseline"
    )
    cols: list[_Column] = [("PSNR (returned)" if s.task == "denoise" else "PSNR", _get("psnr"), _db)]
    if s.task == "denoise":
        cols += [
            ("raw", _get("psnr_final"), _db),
            ("EMA", _get("psnr_average"), _db),
            ("2 runs", _get("psnr_two_runs"), _db),
        ]
    cols += [
        (base, _get("psnr_baseline"), _db),
        (f"PSNR − {base}", lambda r: _diff(r.get("psnr"), r.get("psnr_baseline")), _signed),
    ]
    classical = _names(s.ok, "classical_name")
    cols.append((classical[0] if len(classical) == 1 else "classical", _get("psnr_classical"), _db))
    if p and p.per_image:

        def paper(r: dict[str, Any]) -> float | None:
            return p.per_image.get(match_image(p, r["image_key"]))

        cols += [("paper: DIP", paper, _db), ("gap", lambda r: _diff(r.get("psnr"), paper(r)), _signed)]
        for method, values in p.baseline_per_image.items():
            cols.append((f"paper: {method}", lambda r, v=values: v.get(match_image(p, r["image_key"])), _db))
    cols += [
        ("SSIM", _get("ssim"), lambda v: f"{v:.4f}"),
        ("iterations", _get("iterations_run"), str),
        ("seconds", _get("wall_seconds"), lambda v: f"{v:.1f}"),
    ]
    return [c for c in cols if any(c[1](r) is not None for r in s.ok)]


def _image_rows(s: Section) -> list[dict[str, Any]]:
    """The section's rows; with the paper's per-image figures, in the paper's order, the images not run included."""
    p = s.paper
    if not (p and p.per_image):
        return s.rows
    order = list(p.per_image)
    seen = {match_image(p, r["image_key"]) for r in s.rows}
    missing = [{"image_key": name, "status": "not run"} for name in order if name not in seen]

    def rank(r: dict[str, Any]) -> tuple[int, str]:  # the paper's order, then the images it does not list
        name = match_image(p, r["image_key"])
        return (order.index(name) if name in order else len(order), r["image_key"])

    return sorted(s.rows + missing, key=rank)


def _per_image(s: Section) -> list[str]:
    cols = _image_columns(s)
    p = s.paper
    rows = []
    for r in _image_rows(s):
        name = match_image(p, r["image_key"]) if p and p.per_image else None
        image = r["image_key"] if name is None or name == r["image_key"] else f"{name} ({r['image_key']})"
        cells = [image] + ["–" if (v := get(r)) is None else fmt(v) for _, get, fmt in cols]
        if r["status"] != "ok" and len(cells) > 1:
            cells[1] = {"error": "failed", "skipped": "done elsewhere"}.get(r["status"], r["status"])
        rows.append(cells)
    return ["### Per image", "", *_table(["image", *(c[0] for c in cols)], rows)]


# ------------------------------------------------------------------------------------------ early stopping


_ES_INTRO = (
    "PSNR (dB) of the output after the fixed iteration count; of the output that the running-variance rule "
    "selects without ground truth (auto); and the best along the run (oracle: it needs the ground truth). "
    "Iterations saved: those after the rule's stop."
)


def _early_stopping(s: Section) -> list[str]:
    """Fixed count vs the no-ground-truth rule's choice vs the oracle, per image (rows with ``psnr_auto`` only)."""
    rows = [r for r in s.ok if r.get("psnr_auto") is not None]
    if not rows:
        return []
    table, gaps, saved = [], [], []
    for r in rows:
        fixed = r.get("psnr") if r.get("stop_reason") == "iterations" else None
        run, stop = r.get("iterations_run"), r.get("es_stop_iteration")
        spared = None if run is None else run - stop if stop is not None else 0
        if (gap := _diff(r["psnr_auto"], r.get("psnr_best"))) is not None:
            gaps.append((gap, r["image_key"]))
        if spared is not None:
            saved.append((spared, run))
        table.append(
            [
                r["image_key"],
                run,
                fixed,
                r["psnr_auto"],
                r.get("iteration_auto"),
                r.get("psnr_best"),
                r.get("iteration_best"),
                gap,
                _diff(r["psnr_auto"], fixed),
                "did not stop" if stop is None else stop,
                spared,
            ]
        )
    fmts = [str, str, _db, _db, str, _db, str, _signed, _signed, str, str]
    means = [mean([v for v in col if isinstance(v, (int, float))]) for col in zip(*table, strict=True)]
    mean_fmts = [
        str,
        lambda v: f"{v:.0f}",
        _db,
        _db,
        lambda v: f"{v:.0f}",
        _db,
        lambda v: f"{v:.0f}",
        _signed,
        _signed,
        lambda v: f"{v:.0f}",
        lambda v: f"{v:.0f}",
    ]
    body = [["–" if v is None else f(v) for v, f in zip(row, fmts, strict=True)] for row in table]
    body.append(["**mean**", *("–" if m is None else f(m) for m, f in zip(means[1:], mean_fmts[1:], strict=True))])
    header = [
        "image",
        "iterations run",
        "fixed count",
        "auto rule",
        "at iteration",
        "oracle best",
        "at iteration",
        "auto − oracle",
        "auto − fixed",
        "rule stops at",
        "iterations saved",
    ]
    lines = ["### Early stopping without ground truth", "", _ES_INTRO, "", *_table(header, body), ""]
    if gaps:
        within = sum(g >= -ES_TARGET_DB for g, _ in gaps)
        worst, key = min(gaps)
        lines.append(
            f"- The rule's choice is within {ES_TARGET_DB} dB of the oracle on {within} of {len(gaps)} "
            f"images (the goal: all); the worst is {_signed(worst)} dB ({key})."
        )
    if saved and sum(run for _, run in saved):
        spared, total = sum(x for x, _ in saved), sum(run for _, run in saved)
        lines.append(
            f"- Stopping by the rule saves {spared / len(saved):.0f} iterations per image on average, "
            f"{100 * spared / total:.0f} % of those run."
        )
    return lines


# ------------------------------------------------------------------------------------------------ document


def _section(s: Section) -> list[str]:
    figs = comparisons(s)
    lines = [f"## {s.title}", "", *_facts(s), ""]
    lines += [*_figure_table(s, figs), ""]
    if _is_smoke(s):
        lines += [
            "- **No gap to the paper is given:** the images were cropped before the run, so these PSNRs do "
            "not measure what the paper's do; the section shows the ordering of outputs and baselines.",
            "",
        ]
    elif shortfalls := _shortfalls(figs):
        lines += [shortfalls, ""]
    lines += [*_per_image(s), ""]
    if study := _early_stopping(s):
        lines += [*study, ""]
    return lines


def _overview(secs: list[Section]) -> list[str]:
    rows = []
    for s in secs:
        head = comparisons(s)[0]
        total = s.paper.images if s.paper else len(s.rows)
        secs_mean = mean(_values(s.ok, "wall_seconds"))
        devices = ", ".join(sorted({r["device"] for r in s.ok if r.get("device")})) or "–"
        gap = "– (cropped images)" if _is_smoke(s) else _signed(head.gap)
        rows.append(
            [
                s.title,
                devices,
                f"{len(s.ok)} of {total}",
                NOT_MEASURED if head.ours is None else _db(head.ours),
                _db(head.paper),
                gap,
                "–" if secs_mean is None else f"{secs_mean:.1f}",
            ]
        )
    header = ["benchmark", "device", "images", "dipflow (dB)", "paper (dB)", "gap (dB)", "s / image"]
    return ["## Overview", "", *_table(header, rows, right_from=2), ""]


def _not_measured(secs: list[Section]) -> list[str]:
    present = {s.benchmark.name for s in secs if s.benchmark and not _is_smoke(s)}
    missing = [b.paper for name, b in BENCHMARKS.items() if name not in present]
    if not missing:
        return []
    lines = [
        "## Not measured in these reports",
        "",
        "The paper's figures for its benchmarks that no report here covers on whole images:",
        "",
    ]
    for b in missing:
        figs = "; ".join(f"{f.label} {f.psnr:.2f}" for f in (*b.dip, *b.baselines))
        lines.append(f"- **{b.title}** ({b.images} images, {b.iterations} iterations in the paper): {figs}.")
    return [*lines, ""]


_INTRO = (
    "Each section says what its numbers cover: the images, the protocol, the settings and the hardware. The "
    "paper's figures are those of its text and Table 1 (`pipelines/evaluation/paper.py`); a gap is dipflow − paper "
    "in dB, so a negative gap is a shortfall."
)


def render(
    table: pa.Table,
    *,
    command: str | None = None,
    sources: Sequence[str] = (),
    notes: str | None = None,
    notes_source: str | None = None,
    stopping_study: Sequence[dict] = (),
    stopping_sources: Sequence[str] = (),
) -> str:
    """The results document for report rows `table` (one row per image: pass `reports.latest_rows`).

    `command` is the command that regenerates it, named on the first line; `sources` the report roots read;
    `notes` hand-written markdown appended verbatim (from `notes_source`), so that a discussion survives
    regeneration; `stopping_study` the stopping study's lines (from `stopping_sources`), as a section of their own.
    Raises ValueError when there are no rows.
    """
    secs = sections(table)
    if not secs:
        raise ValueError("no report rows to write a results document from")
    lines = []
    if command:
        lines.append(
            f"<!-- Generated by `{command}`. Do not edit by hand: edit "
            f"{notes_source or 'the notes'} and run the command again. -->"
        )
    lines += ["# dipflow beside the paper", ""]
    where = ", ".join(f"`{x}`" for x in sources) or "the rows given"
    lines.append(
        f"Generated from the Parquet reports in {where} (the latest row of each image)" + (" by:" if command else ".")
    )
    if command:
        lines += ["", "```bash", command, "```"]
    lines += ["", _INTRO, ""]
    lines += _overview(secs)
    for s in secs:
        lines += _section(s)
    if stopping_study:
        lines += stopping_section(list(stopping_study), stopping_sources)
    lines += _not_measured(secs)
    if notes:
        lines += [f"<!-- {notes_source or 'notes'}: hand-written, included verbatim -->", notes.strip("\n"), ""]
    return "\n".join(lines).rstrip("\n") + "\n"
