"""The results document's sections: report rows grouped by benchmark and settings (`Section`, `sections`), each
with the paper's figures it can be set beside, and sections of one benchmark labelled by the settings that differ."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.evaluation.benchmarks import BENCHMARKS, Benchmark, benchmark_for
from pipelines.reporting.results_format import plain

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.evaluation.paper import PaperBenchmark


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


def _task_words(task: str, scale: int | None, synthesis: Mapping[str, Any]) -> str:
    if task == "sr":
        return f"SR ×{scale}"
    if task == "denoise":
        return f"Denoising σ = {plain(synthesis['sigma'])}" if synthesis.get("sigma") else "Denoising"
    if task == "inpaint" and synthesis.get("drop"):
        return f"Inpainting, {plain(100 * float(synthesis['drop']))} % of pixels dropped"
    return task.replace("_", " ").capitalize()


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
            s.label = ", ".join(f"{k} {plain(f.get(k))}" for k in keys[:3]) or "settings not recorded"
