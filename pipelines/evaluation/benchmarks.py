"""The paper's benchmarks, each named once: what ``dipflow evaluate NAME`` synthesises and scores, and the figures the
paper published for it.

Every other place that needs a benchmark reads it from `BENCHMARKS`: the protocols (`pipelines.evaluation.protocols`:
how the observation is made, how many runs are averaged), the evaluate flow (which names are folders under the data
root), the CLI (its help and the ``--data-root`` check) and both reports (`benchmark_for`: which report rows can be
set beside the paper, and in which order). Light on purpose — the standard library and `paper` only — because the
CLI builds its help from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.evaluation.paper import CBM3D9, HEIDE11, SET5, SET14, PaperBenchmark

__all__ = ["BENCHMARKS", "Benchmark", "benchmark_for", "describe"]


@dataclass(frozen=True)
class Benchmark:
    """One of the paper's benchmarks: a folder of clean images under the data root, the degradation it is evaluated
    on, and the paper's figures for it."""

    name: str  # the folder under --data-root, and the report's dataset
    task: str  # the dipcore task
    paper: PaperBenchmark  # what the paper reports
    scale: int | None = None  # sr: the factor
    sigma: float | None = None  # denoise: the noise level, 0–255 units
    drop: float | None = None  # inpaint: the fraction of pixels dropped
    runs: int = 1  # independent runs averaged per image for the paper's headline figure

    @property
    def label(self) -> str:
        """The degradation in a few words: ``SR x4``, ``denoise σ=25``, ``inpaint 50%``."""
        if self.task == "sr":
            return f"SR x{self.scale}"
        if self.task == "denoise":
            return f"denoise σ={self.sigma:g}"
        if self.task == "inpaint":
            return f"inpaint {100 * (self.drop or 0):g}%"
        return self.task


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("set5", "sr", SET5, scale=4),
        Benchmark("set14", "sr", SET14, scale=4),
        # σ = 25 as in the paper's table: the denoise preset's 1800 iterations (the paper's count; its published code
        # runs 3000), the EMA of outputs, and `runs` independent runs averaged (seeds s, s + 1): 29.22 / 30.43 / 31.00.
        Benchmark("cbm3d9", "denoise", CBM3D9, sigma=25.0, runs=2),
        Benchmark("heide11", "inpaint", HEIDE11, drop=0.5),  # Table 1: a Bernoulli mask drops half the pixels
    )
}
"""The paper's benchmarks by name, in the paper's order."""


def benchmark_for(dataset: str | None, task: str | None, scale: int | None) -> Benchmark | None:
    """The benchmark that report rows of (dataset, task, scale) can be set beside, or None: the dataset name must be
    a benchmark's (any case) and the task and SR factor must be its own."""
    b = BENCHMARKS.get(str(dataset or "").lower())
    if b is None or b.task != task or (b.scale is not None and b.scale != scale):
        return None
    return b


def describe() -> str:
    """The names with their degradations, neighbours of one degradation together: ``set5, set14 (SR x4), …``."""
    groups: list[tuple[str, list[str]]] = []
    for b in BENCHMARKS.values():
        if groups and groups[-1][0] == b.label:
            groups[-1][1].append(b.name)
        else:
            groups.append((b.label, [b.name]))
    return ", ".join(f"{', '.join(names)} ({label})" for label, names in groups)
