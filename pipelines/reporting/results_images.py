"""The results document's per-image tables: each image's figures beside the paper's Table 1 (`per_image`), and the
early-stopping study (`early_stopping`: the fixed count, the no-ground-truth rule's choice and the oracle)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipelines.evaluation.paper import match_image
from pipelines.reporting.results_format import db, distinct, md_table, one_or_counted, signed
from pipelines.stats import mean

if TYPE_CHECKING:
    from pipelines.reporting.results_sections import Section

ES_TARGET_DB = 0.5  # issue 6's goal: the no-ground-truth rule within 0.5 dB of the oracle on every image
_Column = tuple[str, Callable[[dict[str, Any]], Any], Callable[[Any], str]]


def _get(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: r.get(name)


def _diff(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else a - b


def _image_columns(s: Section) -> list[_Column]:
    p = s.paper
    base = (
        one_or_counted(r.get("baseline_name") for r in s.ok)
        if len(distinct(s.ok, "baseline_name")) == 1
        else "baseline"
    )
    cols: list[_Column] = [("PSNR (returned)" if s.task == "denoise" else "PSNR", _get("psnr"), db)]
    if s.task == "denoise":
        cols += [
            ("raw", _get("psnr_final"), db),
            ("EMA", _get("psnr_average"), db),
            ("2 runs", _get("psnr_two_runs"), db),
        ]
    cols += [
        (base, _get("psnr_baseline"), db),
        (f"PSNR − {base}", lambda r: _diff(r.get("psnr"), r.get("psnr_baseline")), signed),
    ]
    classical = distinct(s.ok, "classical_name")
    cols.append((classical[0] if len(classical) == 1 else "classical", _get("psnr_classical"), db))
    if p and p.per_image:

        def paper(r: dict[str, Any]) -> float | None:
            return p.per_image.get(match_image(p, r["image_key"]))

        cols += [("paper: DIP", paper, db), ("gap", lambda r: _diff(r.get("psnr"), paper(r)), signed)]
        for method, values in p.baseline_per_image.items():
            cols.append((f"paper: {method}", lambda r, v=values: v.get(match_image(p, r["image_key"])), db))
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


def per_image(s: Section) -> list[str]:
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
    return ["### Per image", "", *md_table(["image", *(c[0] for c in cols)], rows)]


_ES_INTRO = (
    "PSNR (dB) of the output after the fixed iteration count; of the output that the running-variance rule "
    "selects without ground truth (auto); and the best along the run (oracle: it needs the ground truth). "
    "Iterations saved: those after the rule's stop."
)


def _whole(v: float) -> str:
    return f"{v:.0f}"


# The study's columns: header, a cell's format, the format of the column's mean (the mean row skips the image).
_ES_COLUMNS: tuple[tuple[str, Callable[[Any], str], Callable[[Any], str]], ...] = (
    ("image", str, str),
    ("iterations run", str, _whole),
    ("fixed count", db, db),
    ("auto rule", db, db),
    ("at iteration", str, _whole),
    ("oracle best", db, db),
    ("at iteration", str, _whole),
    ("auto − oracle", signed, signed),
    ("auto − fixed", signed, signed),
    ("rule stops at", str, _whole),
    ("iterations saved", str, _whole),
)


def early_stopping(s: Section) -> list[str]:
    """Fixed count vs the no-ground-truth rule's choice vs the oracle, per image (rows with ``psnr_auto`` only)."""
    table = [_es_row(r) for r in s.ok if r.get("psnr_auto") is not None]
    if not table:
        return []
    body = [["–" if v is None else f(v) for v, (_, f, _) in zip(row, _ES_COLUMNS, strict=True)] for row in table]
    means = [mean([v for v in col if isinstance(v, (int, float))]) for col in zip(*table, strict=True)]
    body.append(
        ["**mean**", *("–" if m is None else f(m) for m, (_, _, f) in zip(means[1:], _ES_COLUMNS[1:], strict=True))]
    )
    header = [h for h, _, _ in _ES_COLUMNS]
    return [
        "### Early stopping without ground truth",
        "",
        _ES_INTRO,
        "",
        *md_table(header, body),
        "",
        *_es_findings(table),
    ]


def _es_row(r: dict[str, Any]) -> list[Any]:
    """One image's cells of the study, in `_ES_COLUMNS`' order (None: not recorded)."""
    fixed = r.get("psnr") if r.get("stop_reason") == "iterations" else None
    run, stop = r.get("iterations_run"), r.get("es_stop_iteration")
    spared = None if run is None else run - stop if stop is not None else 0
    return [
        r["image_key"],
        run,
        fixed,
        r["psnr_auto"],
        r.get("iteration_auto"),
        r.get("psnr_best"),
        r.get("iteration_best"),
        _diff(r["psnr_auto"], r.get("psnr_best")),
        _diff(r["psnr_auto"], fixed),
        "did not stop" if stop is None else stop,
        spared,
    ]


def _es_findings(table: list[list[Any]]) -> list[str]:
    """The study's lines under its table: how many images the rule's choice keeps within the goal, and the
    iterations it saves."""
    gaps = [(row[7], row[0]) for row in table if row[7] is not None]  # (auto − oracle, image)
    saved = [(row[10], row[1]) for row in table if row[10] is not None]  # (iterations saved, run)
    lines = []
    if gaps:
        within = sum(g >= -ES_TARGET_DB for g, _ in gaps)
        worst, key = min(gaps)
        lines.append(
            f"- The rule's choice is within {ES_TARGET_DB} dB of the oracle on {within} of {len(gaps)} "
            f"images (the goal: all); the worst is {signed(worst)} dB ({key})."
        )
    if saved and sum(run for _, run in saved):
        spared, total = sum(x for x, _ in saved), sum(run for _, run in saved)
        lines.append(
            f"- Stopping by the rule saves {spared / len(saved):.0f} iterations per image on average, "
            f"{100 * spared / total:.0f} % of those run."
        )
    return lines
