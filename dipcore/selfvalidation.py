"""Self-validation: when to stop a DIP fit, judged by pixels the fit never sees (issue 14).

A random tenth of the observed pixels is held out of the loss. Every iteration the fit's moving average is scored on
them; where that score was lowest, the fit stopped generalising to pixels it does not fit, and the rule stops
``SELFVAL_PATIENCE`` iterations after that minimum without a newer one (the same decision as ES-WMV's, on another
signal). Held-out pixels cost the held-out fit itself some PSNR (the study measured it at σ = 15), so the image
returned is a second fit on every pixel, same seed, run to the count the first one found (``restore`` runs both
phases). How close that refit comes to the best output along the run, against the preset's fixed count:
`benchmarks/RESULTS.md`, "Stopping without ground truth", and docs/results.md (figures live there, not here).

The held-out split is that of zero-shot self-supervised learning (Yaman et al., ICLR 2022) applied to DIP; Li et al.
("Self-Validation", 2021) validate on an online autoencoder of the outputs instead.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from torch import Tensor, nn

from .fit import FitProblem, FitSettings
from .operators import Identity, Mask, Operator
from .stopping import MinimumStopping

__all__ = [
    "SELFVAL_HOLDOUT",
    "SELFVAL_PATIENCE",
    "SELFVAL_SEARCH",
    "CountStopping",
    "DataFit",
    "HeldOut",
    "HeldOutStopping",
    "held_out_mask",
    "hold_out",
    "holding_out",
    "observed_pixels",
    "refit_settings",
    "search_settings",
]

SELFVAL_HOLDOUT = 0.1  # fraction of the observed pixels held out of the first fit's loss
SELFVAL_PATIENCE = 300  # iterations without a new minimum before the first fit stops (1000 chose the same)
SELFVAL_SEARCH = 1.5  # the first fit runs at most this × the preset's count (the study's runs: where rules can fire)
_SEARCH_EMA = 0.99  # the moving average the rule watches where a preset keeps none (the denoising code's weight)
_MASK_STREAM = 7919  # the held-out pixels' own random stream: the degradation and the fit draw from the seed itself


def held_out_mask(observed: Tensor, fraction: float, seed: int) -> Tensor:
    """(1, 1, h, w): 1 on a random ``fraction`` of the pixels that ``observed`` (1, 1, h, w) marks as known, drawn
    from ``seed`` (the same pixels on every device)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed + _MASK_STREAM)
    draw = torch.from_numpy(rng.random(tuple(observed.shape[-2:])) < fraction).float().to(observed.device)
    return observed * draw


class HeldOut(Operator):
    """A(x) on the kept entries only (``keep`` (1, 1, h, w) in A's space): the first fit's operator."""

    def __init__(self, operator: nn.Module, keep: Tensor) -> None:
        super().__init__()
        self.operator = operator
        self.register_buffer("keep", keep, persistent=False)

    def A(self, x: Tensor) -> Tensor:
        return self.operator(x) * self.keep.to(x.dtype)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return self.operator.output_size(height, width)


def holding_out(operator: nn.Module, keep: Tensor) -> Operator:
    """``operator`` restricted to the entries ``keep`` marks: a mask where the operator is one or none (so that
    stacked fits still stack their operators into one), else ``HeldOut``."""
    if isinstance(operator, Identity):
        return Mask(keep)
    if isinstance(operator, Mask):
        return Mask(operator.mask * keep)
    return HeldOut(operator, keep)


class DataFit:
    """‖A(x) − y‖² averaged over the entries of A's output that ``weight`` (1, 1, h, w) counts: on the held-out
    ones, how well an image predicts the pixels its fit never saw (the study also counts all observed ones)."""

    def __init__(self, operator: nn.Module, target: Tensor, weight: Tensor) -> None:
        self.operator, self.target = operator, target
        per_entry = weight.expand_as(target)
        self.weight = per_entry / per_entry.sum().clamp_min(1)  # a weighted mean in one multiply-add

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return ((self.operator(x.float()) - self.target).square() * self.weight).sum()


class HeldOutStopping(MinimumStopping):
    """The first phase's rule: ES-WMV's decision (``MinimumStopping``) on the held-out fit of the moving average
    (``watches``), which stays on the device; the loop reads one scalar at its sync points."""

    watches = "average"

    def __init__(self, fit_of: DataFit, *, patience: int = SELFVAL_PATIENCE) -> None:
        super().__init__(patience)
        self.fit_of = fit_of

    @torch.no_grad()
    def update(self, x: Tensor, iteration: int) -> None:
        self.offer(self.fit_of(x), x.detach(), iteration)


class CountStopping:
    """The second phase's rule: keep the image at iteration ``count`` and stop there — so that stacked fits, which
    run to the largest count of the batch, each return their own count's image."""

    def __init__(self, count: int, *, watches: str = "average") -> None:
        if count < 1:
            raise ValueError(f"need a count ≥ 1, got {count}")
        self.count, self.watches = count, watches
        self.best_output: Tensor | None = None
        self.best_iteration: int | None = None

    @torch.no_grad()
    def update(self, x: Tensor, iteration: int) -> None:
        if iteration == self.count:
            self.best_output, self.best_iteration = x.detach().clone(), iteration

    def should_stop(self, iteration: int) -> bool:
        return iteration >= self.count


def observed_pixels(operator: nn.Module, target: Tensor) -> Tensor:
    """(1, 1, h, w) in A's space: 1 on the entries an observation holds (a mask's known pixels; else all)."""
    if isinstance(operator, Mask):
        return operator.mask[:, :1].float()
    return torch.ones((1, 1, *target.shape[-2:]), device=target.device)


def hold_out(problem: FitProblem, seed: int, fraction: float = SELFVAL_HOLDOUT) -> DataFit:
    """Take a ``fraction`` of ``problem``'s observed pixels out of its loss (in place: its operator and target) and
    return the measure of the fit on them (``observed_pixels``)."""
    operator, target = problem.operator, problem.target
    held = held_out_mask(observed_pixels(operator, target), fraction, seed)
    keep = 1.0 - held
    problem.operator, problem.target = holding_out(operator, keep), target * keep
    return DataFit(operator, target, held)


def search_settings(settings: FitSettings, fits: list[DataFit]) -> FitSettings:
    """The first phase: the fits on their kept pixels, each stopped by its own held-out rule, for at most
    ``SELFVAL_SEARCH`` × the count (a moving average is kept for the rule where the preset keeps none)."""
    return dataclasses.replace(
        settings,
        iterations=max(1, round(SELFVAL_SEARCH * settings.iterations)),
        ema=settings.ema or _SEARCH_EMA,
        stopping=tuple(functools.partial(HeldOutStopping, f, patience=SELFVAL_PATIENCE) for f in fits),
        observe_stopping=False,
    )


def refit_settings(settings: FitSettings, counts: list[int], *, watches: str) -> FitSettings:
    """The second phase: every pixel, fit i's image kept at ``counts[i]`` (stacked fits run to the largest)."""
    return dataclasses.replace(
        settings,
        iterations=max(counts),
        stopping=tuple(functools.partial(CountStopping, c, watches=watches) for c in counts),
        observe_stopping=False,
    )
