"""The stopping study's lines (`benchmarks/study_stopping.py`, issue 14) summarised: per task, level and crop size,
what each image gets without ground truth against the best output along its run.

Two views of the same lines: `summarise` (the study's own print-out: every row and rule, with the goal's criteria)
and `section` (the results document's: per image, the oracle, the fixed count, the deployed rules and the default
that ``restore`` returns, with the full table folded underneath). Both judge every rule against the base run's oracle
and fixed count, and both read the refit of self-validation off the base run (`refit_rows`).
"""

from __future__ import annotations

import gzip
import json
import math
import statistics
from collections.abc import Iterable, Sequence

GOAL_MEAN_DB, GOAL_WORST_DB = 0.5, 1.0  # issue 14: within 0.5 dB of the oracle on average, 1.0 dB on every image
REFIT = "selfval→refit"  # the rows of what restore's self-validation returns, made from the runs already there
_LEVEL_WORDS = {
    "sigma": lambda v: f"σ = {v} (not given to any rule)",
    "quality": lambda v: f"JPEG quality {v} (blind)",
    "drop": lambda v: f"{100 * v:g} % of pixels dropped",
    "scale": lambda v: f"×{v}",
}
_TASK_WORDS = {"denoise": "Denoising", "jpeg": "JPEG restoration", "inpaint": "Inpainting", "sr": "Super-resolution"}


def read_lines(data: bytes) -> list[dict]:
    """The rows of a study's JSON lines, gzipped (as committed: they hold curves, MBs) or not."""
    text = gzip.decompress(data).decode() if data[:2] == b"\x1f\x8b" else data.decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def groups(rows: Iterable[dict]) -> dict[tuple, list[dict]]:
    """The rows per (task, level, level value, crop size, net width), in the order they came."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["task"], r["level"], r["level_value"], r["size"], r["channels"]), []).append(r)
    return out


def refit_rows(group: list[dict], base: dict[str, dict]) -> list[dict]:
    """What ``restore``'s self-validation returns (``dipcore.selfvalidation``), from the runs already there: the
    held-out fit's pick, then the base run — the refit on every pixel, same seed — at that count, returning the
    preset's output. One row per image (variant ``selfval→refit``), with each pick's cost in iterations: the search
    up to where the rule fired (its whole run if it never did), plus the refit, over the fixed count."""
    rows = []
    for r in group:
        b = base.get(r["image"])
        if r["variant"] != "selfval" or b is None:
            continue
        returned = b["picks"]["fixed"]["output"]
        picks, cost = {}, {}
        for name, c in r["picks"].items():
            if name.startswith("selfval_avg"):
                t = c["iteration"]
                picks[name] = {**c, "output": returned, "psnr": b["curves"][returned][t - 1]}
                cost[name] = ((c["fired_at"] or r["iterations"]) + t) / b["count"]
        rows.append({**r, "variant": REFIT, "oracle": b["oracle"], "picks": picks, "cost": cost})
    return rows


def default_rule(task: str) -> tuple[str, str]:
    """(row, rule) of the study that is what ``restore`` returns by default for ``task`` under the paper preset:
    read from dipcore, so that the document follows the code."""
    from dipcore.selfvalidation import SELFVAL_PATIENCE
    from dipcore.tasks import DEFAULT_STOPPING, TaskPreset

    rule = DEFAULT_STOPPING.get(task, False)
    if rule == "selfval":
        return REFIT, f"selfval_avg_p{SELFVAL_PATIENCE}"
    if rule in (True, "variance"):
        return "base", f"wmv_raw_p{TaskPreset.es_patience}"
    return "base", "fixed"


# ---------------------------------------------------------------------------------------------- the study's view


def summarise(rows: list[dict]) -> list[str]:
    """Per task, level and size: every (row, rule) against the base run's oracle and fixed count, image by image."""
    lines = []
    for (task, level, value, size, channels), group in groups(rows).items():
        base = {r["image"]: r for r in group if r["variant"] == "base"}
        if not base:
            continue
        refits = refit_rows(group, base)
        oracle_db = {image: r["oracle"]["psnr"] for image, r in base.items()}
        fixed_db = {image: r["picks"]["fixed"]["psnr"] for image, r in base.items()}
        lines += [
            "",
            f"### {task}, {level} = {value}, {size}² crops, {channels} channels: {len(base)} images, degraded "
            f"{_mean(r['psnr_degraded'] for r in base.values()):.2f} dB, oracle (base) "
            f"{_mean(oracle_db.values()):.2f} dB, fixed count (base, {_first(base)['picks']['fixed']['iteration']} it) "
            f"{_mean(fixed_db.values()):.2f} dB",
            "",
            *rule_table(group + refits, oracle_db, fixed_db),
        ]
        lines += _cost_lines(refits)
    lines += ["", *costs(rows)]
    return lines


def rule_table(group: list[dict], oracle_db: dict[str, float], fixed_db: dict[str, float]) -> list[str]:
    """Every (row, rule) of ``group``, best mean gap first, with the goal's three criteria."""
    lines = [
        f"| row | rule | images | fired | mean dB | gap to oracle: mean | worst | − fixed | mean ≤ {GOAL_MEAN_DB} "
        f"| worst ≤ {GOAL_WORST_DB} | ≥ fixed | ms/it |",
        "|---|---|---:|---:|---:|---:|---:|---:|:-:|:-:|:-:|---:|",
    ]
    table = []
    for variant in dict.fromkeys(r["variant"] for r in group):
        by_image = {r["image"]: r for r in group if r["variant"] == variant and r["image"] in oracle_db}
        own = [] if variant == REFIT else ["oracle"]  # the refit's oracle is the base run's
        names = dict.fromkeys([*own, *(n for r in by_image.values() for n in r["picks"])])
        for rule in names:
            choices = {
                image: (r["oracle"] if rule == "oracle" else r["picks"].get(rule)) for image, r in by_image.items()
            }
            choices = {image: c for image, c in choices.items() if c is not None}
            if not choices:
                continue
            gaps = [oracle_db[image] - c["psnr"] for image, c in choices.items()]
            mean_db = _mean(c["psnr"] for c in choices.values())
            over_fixed = mean_db - _mean(fixed_db[image] for image in choices)
            ms = 1e3 * _mean(by_image[image]["seconds_per_iteration"] for image in choices)
            table.append(
                (
                    _mean(gaps),
                    f"| {variant} | {rule} | {len(choices)} | {sum(c['fired'] for c in choices.values())} "
                    f"| {mean_db:.2f} | {_mean(gaps):.2f} | {max(gaps):.2f} | {over_fixed:+.2f} "
                    f"| {_mark(_mean(gaps) <= GOAL_MEAN_DB)} | {_mark(max(gaps) <= GOAL_WORST_DB)} "
                    f"| {_mark(over_fixed >= 0)} | {ms:.1f} |",
                )
            )
    return lines + [line for _, line in sorted(table, key=lambda t: t[0])]


def _cost_lines(refits: list[dict]) -> list[str]:
    lines = []
    for rule in dict.fromkeys(n for r in refits for n in r["cost"]):
        spent = [r["cost"][rule] for r in refits if rule in r["cost"]]
        lines.append(
            f"\n`{REFIT}` with {rule}: search + refit cost {_mean(spent):.2f}× the fixed count's iterations "
            f"on average ({min(spent):.2f}–{max(spent):.2f}×)."
        )
    return lines


def costs(rows: list[dict]) -> list[str]:
    """What each candidate costs per iteration: the fit of each variant, and each signal on the device (host time on
    a CPU, summed over the outputs a fit watches), beside the deployed ES-WMV's update."""
    lines = [
        "### Cost per iteration (median over fits)",
        "",
        "| task | size | fit | outputs watched | fit ms/it | variance | data fit | held-out | longer averages "
        "| deployed ES-WMV update |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per_fit: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["variant"] == r["fit"]:  # one row per fit
            per_fit.setdefault((r["task"], r["size"], r["fit"]), []).append(r)
    for (task, size, fit_name), group in per_fit.items():
        ms = [r["signal_ms_per_iteration"] or {} for r in group]

        def median(key: str, ms=ms) -> str:
            values = [m[key] for m in ms if key in m]
            return f"{statistics.median(values):.2f}" if values else "—"

        deployed = [r.get("wmv_deployed_ms") for r in group if r.get("wmv_deployed_ms") is not None]
        lines.append(
            f"| {task} | {size} | {fit_name} | {group[0]['outputs_watched']} | "
            f"{1e3 * statistics.median(r['seconds_per_iteration'] for r in group):.1f} | {median('variance')} | "
            f"{median('datafit')} | {median('heldout')} | {median('ema')} | "
            f"{f'{statistics.median(deployed):.2f}' if deployed else '—'} |"
        )
    return lines


# ------------------------------------------------------------------------------------------ the document's view


def _columns() -> tuple[tuple[str, str, str], ...]:
    """The columns of the per-image table: (heading, row, rule). The deployed rules, self-validation at dipcore's
    patience (so the default's column moves with it), then the default (added per task where it is another)."""
    from dipcore.selfvalidation import SELFVAL_PATIENCE

    selfval = f"selfval_avg_p{SELFVAL_PATIENCE}"
    return (
        ("fixed count", "base", "fixed"),
        ("ES-WMV (W 100, P 1000)", "base", "wmv_raw_p1000"),
        ("held-out fit's own output", "selfval", selfval),
        ("self-validation + refit", REFIT, selfval),
    )


def section(rows: list[dict], sources: Sequence[str]) -> list[str]:
    """The results document's section on stopping without ground truth, from a study's rows (read from
    ``sources``)."""
    where = ", ".join(f"`{s}`" for s in sources) or "the rows given"
    lines = [
        "## Stopping without ground truth",
        "",
        f"From the stopping study's lines in {where} (`benchmarks/study_stopping.py`; the commands that made them are "
        "in `benchmarks/RESULTS.md`). Each image is centre-cropped, degraded with a seeded protocol and fitted once "
        "with the task's paper preset at the study's width, run past the preset's count so that rules can fire. "
        "The **oracle** is the best output along that run (it needs the ground truth); every other column is what a "
        "rule returns without it, as PSNR (dB) with its gap to the oracle in brackets; a rule that never fires "
        "returns the run's last output (self-validation's search has the same limit, 1.5× the count; "
        "`early_stopping=True` stops at the count itself). **Default** is what "
        "`restore` returns under the paper preset today (`dipcore.tasks.DEFAULT_STOPPING`). The goal (issue 14): "
        f"within {GOAL_MEAN_DB} dB of the oracle on average and {GOAL_WORST_DB} dB on every image, never below the "
        "fixed count on average.",
        "",
    ]
    overview, details = [], []
    for (task, level, value, size, channels), group in groups(rows).items():
        base = {r["image"]: r for r in group if r["variant"] == "base"}
        if base:
            refits = refit_rows(group, base)  # once: both views read them
            overview.append(_overview_row(task, level, value, size, channels, group + refits, base))
            details += _group_section(task, level, value, size, channels, group + refits, base)
    header = ["task", "level", "crop", "net width", "images", "default", "default: mean / worst gap"]
    header += ["fixed count: mean / worst", "goal met"]
    lines += ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|---|---:|---:|:-:|", *overview, ""]
    return lines + details


def _gaps(rows: list[dict], base: dict[str, dict], variant: str, rule: str) -> list[float]:
    """Each image's PSNR of (``variant``, ``rule``) − the base run's oracle (≤ 0: below it)."""
    picks = [(image, _choice(rows, variant, rule, image)) for image in base]
    return [c["psnr"] - base[image]["oracle"]["psnr"] for image, c in picks if c is not None]


def _overview_row(
    task: str, level: str, value, size: int, channels: int, rows: list[dict], base: dict[str, dict]
) -> str:
    """``rows``: the group's lines and their refit rows."""
    variant, rule = default_rule(task)
    default, fixed = _gaps(rows, base, variant, rule), _gaps(rows, base, "base", "fixed")
    met = (
        bool(default)
        and len(default) == len(base)
        and (-_mean(default) <= GOAL_MEAN_DB and -min(default) <= GOAL_WORST_DB and _mean(default) >= _mean(fixed))
    )
    name = next((h for h, *key in _columns() if tuple(key) == (variant, rule)), f"{variant}: {rule}")
    words = _LEVEL_WORDS.get(level, lambda v: f"{level} = {v}")(value).split(" (")[0]
    cells = [
        _TASK_WORDS.get(task, task),
        words,
        f"{size}²",
        str(channels),
        str(len(base)),
        name,
        f"{_signed(_mean(default))} / {_signed(min(default))}" if default else "—",
        f"{_signed(_mean(fixed))} / {_signed(min(fixed))}",
        _mark(met),
    ]
    return "| " + " | ".join(cells) + " |"


def _group_section(
    task: str, level: str, value, size: int, channels: int, rows: list[dict], base: dict[str, dict]
) -> list[str]:
    """``rows``: the group's lines and their refit rows."""
    default = default_rule(task)
    columns = [c for c in _columns() if any(_choice(rows, c[1], c[2], image) for image in base)]
    if default not in [(row, rule) for _, row, rule in columns]:
        columns.append((f"{default[0]}: {default[1]}", *default))
    columns = [(f"**{h} (default)**" if (row, rule) == default else h, row, rule) for h, row, rule in columns]
    first = _first(base)
    oracle_db = {image: r["oracle"]["psnr"] for image, r in base.items()}
    fixed_db = {image: r["picks"]["fixed"]["psnr"] for image, r in base.items()}
    lines = [
        f"### {_TASK_WORDS.get(task, task)}, {_LEVEL_WORDS.get(level, lambda v: f'{level} = {v}')(value)}, "
        f"{size}² crops, {channels} channels",
        "",
        f"{len(base)} image{'s' * (len(base) != 1)}" + (f" of `{first['set']}`" if first.get("set") else "") + ", "
        f"{first['iterations']} iterations run, fixed count {first['count']}, "
        f"seed {first['seed']}; torch {first.get('torch', '?')}, {first.get('threads', '?')} thread(s) on "
        f"{first.get('cpu') if first.get('device') == 'cpu' else first.get('device', '?')}.",
        "",
        "| image | degraded | oracle (iteration) | " + " | ".join(h for h, *_ in columns) + " |",
        "|---|---:|---:|" + "---:|" * len(columns),
    ]
    gaps: dict[str, list[float]] = {h: [] for h, *_ in columns}
    for image, b in base.items():
        cells = [image, f"{b['psnr_degraded']:.2f}", f"{b['oracle']['psnr']:.2f} ({b['oracle']['iteration']})"]
        for heading, row, rule in columns:
            c = _choice(rows, row, rule, image)
            if c is None:
                cells.append("—")
                continue
            gap = c["psnr"] - oracle_db[image]
            gaps[heading].append(gap)
            cells.append(f"{c['psnr']:.2f} ({_signed(gap)})")
        lines.append("| " + " | ".join(cells) + " |")
    for label, pick in (("mean gap", _mean), ("worst gap", min)):
        cells = [f"**{label}**", "", ""]
        cells += [_signed(pick(gaps[h])) if gaps[h] else "—" for h, *_ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    refits = [r for r in rows if r["variant"] == REFIT]
    costs_ = [r["cost"][default[1]] for r in refits if default[0] == REFIT and default[1] in r["cost"]]
    if costs_:
        lines += [
            "",
            f"The default's search + refit ran {_mean(costs_):.2f}× the fixed count's iterations on average "
            f"({min(costs_):.2f}–{max(costs_):.2f}×).",
        ]
    lines += [
        "",
        "<details><summary>Every row and rule of the study on these images</summary>",
        "",
        *rule_table(rows, oracle_db, fixed_db),
        "",
        "</details>",
        "",
    ]
    return lines


def _choice(rows: list[dict], variant: str, rule: str, image: str) -> dict | None:
    for r in rows:
        if r["variant"] == variant and r["image"] == image:
            return r["picks"].get(rule)
    return None


def _signed(gap: float) -> str:
    return f"{gap:+.2f}".replace("-", "−")


def _mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else math.nan


def _first(d: dict) -> dict:
    return next(iter(d.values()))


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"
