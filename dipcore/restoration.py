"""What ``restore`` and ``restore_batch`` return: a ``Restoration`` per image, its runs (``RunOutput``) and the
early-stopping rule's choice (``StoppingChoice``), collected from the fits' results (``collect``)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .engine import EngineOptions
from .fit import FitResult
from .metrics import PsnrProtocol
from .preset import TaskPreset

__all__ = ["Restoration", "RunOutput", "StoppingChoice", "collect"]


@dataclass(frozen=True)
class StoppingChoice:
    """What the early-stopping rule returns — in observe mode, would have returned — for one run."""

    image: np.ndarray  # the rule's output where it fired; where it never fired, what the run returns at its end
    iteration: int  # the iteration `image` comes from
    fired_at: int | None  # the iteration (a sync point) at which the rule said stop; None: never within the run


@dataclass
class RunOutput:
    """One optimisation run (seed ``seed``) of a restoration; with ``restarts`` > 1 the Restoration averages them."""

    seed: int
    image: np.ndarray  # what this run alone returns (final, average or the early-stopping choice, as the preset says)
    final: np.ndarray  # its last iterate
    average: np.ndarray | None  # its moving average of outputs
    iteration: int  # the iteration `image` comes from
    stop_reason: str
    stopping: StoppingChoice | None  # None when early stopping is off
    history: dict[str, list[float]]


@dataclass
class Restoration:
    """The result of ``restore``: images are H×W×C float32 arrays in [0, 1] at the task's output size.

    With ``restarts`` > 1, ``image``, ``final`` and ``average`` are means over the runs (paper: "averaged over two
    optimization runs"), ``history`` and ``stopping`` are the first run's, and ``runs`` keeps every run apart.
    """

    image: np.ndarray  # the returned output (see `iteration` and `stop_reason`)
    final: np.ndarray  # output of the last iteration run
    average: np.ndarray | None  # moving average of outputs (when the preset averages)
    iteration: int  # iteration `image` comes from
    iterations_run: int
    stop_reason: str  # "iterations" | "early_stopping" | "callback"
    history: dict[str, list[float]]  # per-iteration "loss", and "psnr"/"psnr_average" with a reference
    config: dict[str, Any]  # every setting used, JSON-able
    seconds: float
    device: str
    backtracks: int = 0
    restarts: list[dict[str, Any]] = field(default_factory=list)  # per-restart summary when restarts > 1
    runs: list[RunOutput] = field(default_factory=list)  # every run's own outputs, seeds seed, seed + 1, …
    stopping: StoppingChoice | None = None  # the first run's early-stopping choice (early_stopping True/"observe")
    psnr_protocol: PsnrProtocol | None = None  # how the history's PSNR curves are measured (with a reference)
    engine: dict[str, Any] = field(default_factory=dict)  # the resolved EngineOptions the fit ran with

    @property
    def best_psnr(self) -> float | None:
        """The best PSNR of the first run's raw outputs along the run (``psnr_protocol``): an oracle."""
        curve = self.history.get("psnr")
        return max(curve) if curve else None

    @property
    def best_iteration(self) -> int | None:
        curve = self.history.get("psnr")
        return int(np.argmax(curve)) + 1 if curve else None


def _returned(run: FitResult, p: TaskPreset) -> Tensor:
    if run.stopped is not None:
        return run.stopped
    if p.output == "average" and run.average is not None:
        return run.average
    return run.final


def _numpy(x: Tensor | None) -> np.ndarray | None:
    if x is None:
        return None
    return x[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _run_output(run: FitResult, p: TaskPreset, seed: int) -> RunOutput:
    image = _numpy(_returned(run, p))
    stopping = None
    if p.early_stopping:
        fired = run.es_output is not None
        stopping = StoppingChoice(
            image=image if run.stopped is not None or not fired else _numpy(run.es_output),
            iteration=run.es_iteration if fired else run.iteration,
            fired_at=run.es_fired_at,
        )
    return RunOutput(
        seed=seed,
        image=image,
        final=_numpy(run.final),
        average=_numpy(run.average),
        iteration=run.iteration,
        stop_reason=run.stop_reason,
        stopping=stopping,
        history=run.history,
    )


def _canvas_config(ran_on: tuple[int, int] | None, own: tuple[int, int]) -> dict[str, list[int]]:
    """The config's record of a fit that ran on a canvas larger than its own: ``{"canvas": [Hc, Wc]}``."""
    return {"canvas": list(ran_on)} if ran_on is not None and tuple(ran_on) != tuple(own) else {}


def collect(
    runs: list[FitResult],
    p: TaskPreset,
    seed: int,
    dev: torch.device,
    started: float,
    *,
    protocol: PsnrProtocol | None,
    engine: EngineOptions,
    canvas: tuple[tuple[int, int] | None, tuple[int, int]],
) -> Restoration:
    """One Restoration from the restarts: the returned images are averaged across them (paper: 2 runs); each run's
    own outputs stay in ``runs``. ``canvas``: (the canvas the fits ran on or None, their own); a larger one than
    their own is recorded in the config."""
    outputs = [_run_output(r, p, seed + i) for i, r in enumerate(runs)]
    first = outputs[0]

    def mean(xs):
        return xs[0] if len(xs) == 1 else np.mean(xs, axis=0, dtype=np.float32)

    return Restoration(
        image=mean([o.image for o in outputs]),
        final=mean([o.final for o in outputs]),
        average=mean([o.average for o in outputs]) if first.average is not None else None,
        iteration=first.iteration,
        iterations_run=runs[0].iterations_run,
        stop_reason=first.stop_reason,
        history=first.history,
        config={**p.to_dict(), "seed": seed, **_canvas_config(*canvas)},
        seconds=time.perf_counter() - started,
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        backtracks=sum(r.backtracks for r in runs),
        restarts=[{"seed": o.seed, "iteration": o.iteration, "stop_reason": o.stop_reason} for o in outputs]
        if len(runs) > 1
        else [],
        runs=outputs,
        stopping=first.stopping,
        psnr_protocol=protocol,
        engine=dataclasses.asdict(engine),
    )
