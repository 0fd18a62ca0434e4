"""Early stopping without ground truth: the running-variance rule of Wang et al., "Early Stopping for Deep Image
Prior" (ES-WMV).

DIP's PSNR rises, peaks and then falls as the net starts to fit the noise; around the peak, consecutive outputs
change least. The rule keeps the variance of the last W outputs, remembers the output where that variance reached
its minimum, and stops once no new minimum has come for P iterations. Everything stays on the fit's device: the
loop reads two scalars only at its sync points.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MinimumStopping", "VarianceStopping", "WindowVariance"]


class WindowVariance:
    """ES-WMV's signal: the mean over pixels of the variance of the last ``window`` outputs, None until the window is
    full. Σx and Σx² over a ring of the window's outputs are kept in float64: O(pixels) per update, not
    O(window × pixels) (at 256² and W = 100 recomputing the window took longer than a CPU training step), and
    float64 keeps E[x²] − E[x]² exact enough over any run length (float32 outputs square exactly in it)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.ring: Tensor | None = None  # (W, *x.shape) the last outputs
        self._sum: Tensor | None = None
        self._sum_sq: Tensor | None = None
        self.count = 0

    @torch.no_grad()
    def update(self, x: Tensor) -> Tensor | None:
        x = x.detach().float()
        if self.ring is None:
            self.ring = x.new_zeros((self.window, *x.shape))
            self._sum = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
            self._sum_sq = torch.zeros_like(self._sum)
        slot = self.ring[self.count % self.window]  # zeros until the window has filled once
        new, old = x.double(), slot.double()
        self._sum.add_(new - old)
        self._sum_sq.add_(new.square() - old.square())
        slot.copy_(x)
        self.count += 1
        if self.count < self.window:
            return None
        # Mean squared distance of the window's outputs to their mean (Wang et al.), averaged over pixels.
        mean = self._sum / self.window
        return (self._sum_sq / self.window - mean.square()).clamp_min(0).mean().float()


class MinimumStopping:
    """What a rule that stops past a signal's minimum keeps: the lowest value so far, the image and iteration where
    it came (a strict new minimum moves them), all on the device; it says stop ``patience`` iterations after it."""

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"need patience ≥ 1, got {patience}")
        self.patience = patience
        self.best_value: Tensor | None = None
        self.best_output: Tensor | None = None
        self.best_iteration: Tensor | None = None  # 0-d int64 on the device

    @torch.no_grad()
    def offer(self, value: Tensor, x: Tensor, iteration: int) -> None:
        now = torch.tensor(iteration, device=x.device)
        if self.best_value is None:
            self.best_value, self.best_output, self.best_iteration = value.clone(), x.clone(), now
            return
        better = value < self.best_value  # decided on the device: no host synchronisation
        self.best_value = torch.where(better, value, self.best_value)
        self.best_output = torch.where(better, x, self.best_output)
        self.best_iteration = torch.where(better, now, self.best_iteration)

    def should_stop(self, iteration: int) -> bool:
        """True once ``patience`` iterations have passed since the minimum (one host read)."""
        if self.best_iteration is None:
            return False
        return iteration - int(self.best_iteration) >= self.patience


class VarianceStopping(MinimumStopping):
    """ES-WMV with window ``window`` (W = 100) and ``patience`` (P = 1000); ``ema_alpha`` switches to the
    O(1)-memory exponential variant (ES-EMV, α = 0.1) that keeps no window of outputs.

    ``update(x, iteration)`` is called with every output (N, C, H, W); ``should_stop()`` is cheap to call at sync
    points; ``best_output`` / ``best_iteration`` hold the output at the variance minimum.
    """

    def __init__(self, *, window: int = 100, patience: int = 1000, ema_alpha: float | None = None):
        if window < 2 or patience < 1:
            raise ValueError(f"need window ≥ 2 and patience ≥ 1, got {window=} {patience=}")
        super().__init__(patience)
        self.window, self.ema_alpha = window, ema_alpha
        self._window = WindowVariance(window)
        self._mean: Tensor | None = None  # EMV: running mean of outputs
        self._count = 0
        self.variance: Tensor | None = None  # latest variance, a 0-d device tensor

    @torch.no_grad()
    def update(self, x: Tensor, iteration: int) -> None:
        x = x.detach().float()
        var = self._ema_variance(x) if self.ema_alpha else self._window.update(x)
        self._count += 1
        if var is None:  # the window is not full yet
            return
        self.variance = var
        self.offer(var, x, iteration)

    @property
    def best_variance(self) -> Tensor | None:
        return self.best_value

    def _ema_variance(self, x: Tensor) -> Tensor | None:
        a = self.ema_alpha
        if self._mean is None:
            self._mean, self._var = x.clone(), x.new_zeros(())
            return None
        self._var = (1 - a) * self._var + a * (1 - a) * (x - self._mean).pow(2).mean()
        self._mean = (1 - a) * self._mean + a * x
        return self._var if self._count + 1 >= self.window else None
