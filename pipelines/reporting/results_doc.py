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

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.evaluation.benchmarks import BENCHMARKS
from pipelines.evaluation.paper import PaperBenchmark, match_image
from pipelines.reporting.results_facts import facts
from pipelines.reporting.results_format import MINUS, NOT_MEASURED, db, distinct, finite_values, md_table, signed
from pipelines.reporting.results_images import ES_TARGET_DB, early_stopping, per_image
from pipelines.reporting.results_sections import Section, sections
from pipelines.reporting.stopping_study import section as stopping_section
from pipelines.stats import mean

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.evaluation.paper import Figure

__all__ = ["ES_TARGET_DB", "Comparison", "Section", "comparisons", "render", "sections"]


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
        return signed(value) if self.difference else db(value)


# ------------------------------------------------------------------------------------------------ figures

# Denoising: the paper's three DIP figures, in its order, and the report column that measures each.
_DENOISE_FIGURES = (
    ("DIP, raw output (last iterate)", "psnr_final"),
    ("DIP, EMA of outputs", "psnr_average"),
    ("DIP, averaged over 2 runs", "psnr_two_runs"),
)


def _mean_figure(label: str, rows: list[dict], column: str, paper: float | None, *, dip: bool) -> Comparison:
    values = finite_values(rows, column)
    return Comparison(label, mean(values), len(values), paper, dip)


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _classical(paper: PaperBenchmark | None, name: str) -> Figure | None:
    """The paper's figure for a classical denoiser measured here, by name: ``bm3d`` ↔ CBM3D, ``nlm`` ↔ NLM."""
    a = _squash(name)
    if paper is None or len(a) < 3:
        return None
    return next((f for f in paper.baselines if (b := _squash(f.label)) and (a in b or b in a)), None)


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
    for name in distinct(ok, "baseline_name"):
        fig = p.baseline(name) if p else None
        used |= {fig.label} if fig else set()
        rows = [r for r in ok if r.get("baseline_name") == name]
        out.append(_mean_figure(_baseline_words(name, s), rows, "psnr_baseline", fig.psnr if fig else None, dip=False))
    for name in distinct(ok, "classical_name"):
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
        gap = "– (cropped images)" if _is_smoke(s) and f.gap is not None else signed(f.gap)
        rows.append([f.label, ours, "–" if f.paper is None else f.show(f.paper), gap])
    return md_table(["figure (PSNR, dB)", "dipflow", "paper", "gap (dipflow − paper)"], rows)


def _shortfalls(figs: list[Comparison]) -> str:
    measured = [f for f in figs if f.dip and f.gap is not None]
    short = [f for f in measured if signed(f.gap).startswith(MINUS)]
    if not measured:
        return ""
    if not short:
        return "- **Against the paper:** dipflow reaches or passes each of the paper's figures it is compared with."
    parts = [f"{f.label}, {abs(f.gap):.2f} dB below the paper's {f.show(f.paper)}" for f in short]
    return "- **Short of the paper:** " + "; ".join(parts) + "."


# ------------------------------------------------------------------------------------------------ document


def _section(s: Section) -> list[str]:
    figs = comparisons(s)
    lines = [f"## {s.title}", "", *facts(s), ""]
    lines += [*_figure_table(s, figs), ""]
    if _is_smoke(s):
        lines += [
            "- **No gap to the paper is given:** the images were cropped before the run, so these PSNRs do "
            "not measure what the paper's do; the section shows the ordering of outputs and baselines.",
            "",
        ]
    elif shortfalls := _shortfalls(figs):
        lines += [shortfalls, ""]
    lines += [*per_image(s), ""]
    if study := early_stopping(s):
        lines += [*study, ""]
    return lines


def _overview(secs: list[Section]) -> list[str]:
    rows = []
    for s in secs:
        head = comparisons(s)[0]
        total = s.paper.images if s.paper else len(s.rows)
        secs_mean = mean(finite_values(s.ok, "wall_seconds"))
        devices = ", ".join(sorted({r["device"] for r in s.ok if r.get("device")})) or "–"
        gap = "– (cropped images)" if _is_smoke(s) else signed(head.gap)
        rows.append(
            [
                s.title,
                devices,
                f"{len(s.ok)} of {total}",
                NOT_MEASURED if head.ours is None else db(head.ours),
                db(head.paper),
                gap,
                "–" if secs_mean is None else f"{secs_mean:.1f}",
            ]
        )
    header = ["benchmark", "device", "images", "dipflow (dB)", "paper (dB)", "gap (dB)", "s / image"]
    return ["## Overview", "", *md_table(header, rows, right_from=2), ""]


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
