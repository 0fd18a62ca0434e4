"""The DIP optimisation loop: Adam over the weights of a freshly initialised net, with input jitter, an exponential
moving average of outputs, backtracking on loss jumps, early stopping and callbacks.

The loop keeps everything on the fit's device — losses, PSNRs, the average, the backtracking snapshot, the
early-stopping state — and reads them on the host only every ``sync_every`` iterations, so a GPU is never stalled
by a per-iteration ``.item()`` (the published code also copied all weights to the CPU almost every iteration).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .operators import Operator
from .stopping import VarianceStopping

__all__ = ["FitProblem", "FitSettings", "EngineOptions", "StepRecord", "FitResult", "fit", "default_device"]

# A PSNR drop of more than 5 dB from the last accepted iteration undoes the step (published denoising code).
_BACKTRACK_DB = 5.0


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class FitProblem:
    """One fit: ``min_θ ‖A(crop(f_θ(z))) − target‖²``."""

    net: nn.Module
    z: Tensor  # (1, D, Hc, Wc): the code; Hc, Wc are a multiple of what the net needs
    operator: Operator
    target: Tensor  # the observation in A's space
    crop: tuple[int, int, int, int]  # (top, left, H, W): the image inside the net's canvas
    reference: Tensor | None = None  # (1, C, H, W) ground truth, for PSNR curves only
    loss_mask: Tensor | None = None  # optional weights on the residual (unused by the paper's tasks)


@dataclass(frozen=True)
class EngineOptions:
    """How the loop runs on its device; none of these change the maths beyond float rounding (bf16 aside)."""

    sync_every: int | None = None  # host reads every k iterations; default 1 on the CPU, 25 on CUDA
    channels_last: bool | None = None  # default: on for CUDA
    tf32: bool | None = None  # TF32 convolutions and matmuls; default: on for CUDA, off gives strict fp32
    autocast: Literal["bf16"] | None = None  # bf16 autocast of the forward pass (opt-in; costs some PSNR)
    cudnn_benchmark: bool | None = None  # default: on for CUDA (shapes are static during a fit)

    def resolved(self, device: torch.device) -> "EngineOptions":
        cuda = device.type == "cuda"
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return EngineOptions(
            sync_every=pick(self.sync_every, 25 if cuda else 1),
            channels_last=pick(self.channels_last, cuda),
            tf32=pick(self.tf32, cuda),
            autocast=self.autocast,
            cudnn_benchmark=pick(self.cudnn_benchmark, cuda),
        )


@dataclass(frozen=True)
class FitSettings:
    lr: float = 0.01
    iterations: int = 2000
    reg_noise_std: float = 0.0
    ema: float | None = None  # weight of the moving average of outputs (0.99 in the denoising code)
    backtrack: bool = False
    stopping: Callable[[], VarianceStopping] | None = None  # a factory: each fit gets a fresh rule
    engine: EngineOptions = field(default_factory=EngineOptions)


@dataclass(frozen=True)
class StepRecord:
    """What a callback sees for each iteration (delivered in order at the loop's sync points)."""

    iteration: int
    iterations: int
    loss: float
    psnr: float | None = None  # of the raw output against the reference, when one is given
    psnr_average: float | None = None  # of the moving average


@dataclass
class FitResult:
    final: Tensor  # (1, C, H, W) output of the last iteration
    average: Tensor | None  # moving average of outputs, when ema is set
    stopped: Tensor | None  # the output chosen by early stopping, when it fired
    iteration: int  # the iteration `stopped` comes from, else the last one
    iterations_run: int
    stop_reason: Literal["iterations", "early_stopping", "callback"]
    history: dict[str, list[float]]
    backtracks: int = 0


def _psnr(x: Tensor, ref: Tensor) -> Tensor:
    mse = (x.float() - ref).pow(2).mean().clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


@contextlib.contextmanager
def _backend_flags(engine: EngineOptions, device: torch.device):
    """Apply TF32/cuDNN flags for the fit and restore the caller's values after it."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(engine.tf32)
    torch.backends.cudnn.benchmark = bool(engine.cudnn_benchmark)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved  # fmt: skip


def fit(
    problem: FitProblem,
    settings: FitSettings,
    *,
    generator: torch.Generator,
    callback: Callable[[StepRecord], bool | None] | None = None,
) -> FitResult:
    """Run one DIP fit. ``generator`` (on the fit's device) draws the input jitter; a callback returning True stops."""
    device = problem.z.device
    engine = settings.engine.resolved(device)
    net, z, op = problem.net, problem.z, problem.operator
    memory_format = torch.channels_last if engine.channels_last else torch.contiguous_format
    net.to(memory_format=memory_format)
    z = z.contiguous(memory_format=memory_format)
    top, left, h, w = problem.crop
    ref = problem.reference
    n = settings.iterations
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=settings.lr)
    stopping = settings.stopping() if settings.stopping else None
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if engine.autocast == "bf16" else contextlib.nullcontext()
    )

    losses = torch.zeros(n, device=device)
    psnrs = torch.zeros(n, device=device) if ref is not None else None
    psnrs_avg = torch.zeros(n, device=device) if ref is not None and settings.ema else None
    average: Tensor | None = None
    snapshot = [p.detach().clone() for p in params] if settings.backtrack else None
    accepted_loss = torch.full((), math.inf, device=device)
    backtracks = torch.zeros((), dtype=torch.int64, device=device)
    history: dict[str, list[float]] = {"loss": []}
    if ref is not None:
        history["psnr"] = []
        if settings.ema:
            history["psnr_average"] = []
    out = None
    stop_reason: Literal["iterations", "early_stopping", "callback"] = "iterations"
    synced = 0
    it = 0

    with _backend_flags(engine, device):
        for it in range(1, n + 1):
            z_in = z
            if settings.reg_noise_std > 0:
                jitter = torch.randn(z.shape, generator=generator, device=device)
                z_in = z + settings.reg_noise_std * jitter
            with autocast:
                out = net(z_in)[..., top : top + h, left : left + w].float()  # (1, C, H, W)
                loss = F.mse_loss(op(out), problem.target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if snapshot is not None:
                _backtrack(params, snapshot, loss.detach(), accepted_loss, backtracks)
            opt.step()

            with torch.no_grad():
                out = out.detach()
                losses[it - 1] = loss.detach()
                if settings.ema:
                    average = out.clone() if average is None else average.lerp_(out, 1.0 - settings.ema)
                if ref is not None:
                    psnrs[it - 1] = _psnr(out, ref)
                    if psnrs_avg is not None:
                        psnrs_avg[it - 1] = _psnr(average, ref)
                if stopping is not None:
                    stopping.update(out, it)

            if it % engine.sync_every and it != n:
                continue
            stop = _deliver(history, callback, losses, psnrs, psnrs_avg, synced, it, n)
            synced = it
            if stop:
                stop_reason = "callback"
                break
            if stopping is not None and stopping.should_stop(it):
                stop_reason = "early_stopping"
                break

    stopped = None
    iteration = it
    if stop_reason == "early_stopping":
        stopped, iteration = stopping.best_output, int(stopping.best_iteration)
    return FitResult(
        final=out, average=average, stopped=stopped, iteration=iteration, iterations_run=it,
        stop_reason=stop_reason, history=history, backtracks=int(backtracks),
    )  # fmt: skip


@torch.no_grad()
def _backtrack(params: list[Tensor], snapshot: list[Tensor], loss: Tensor, accepted: Tensor, count: Tensor) -> None:
    """Before the step: if the loss of the current weights jumped by more than 5 dB against the last accepted one,
    go back to the weights that gave it and drop this gradient; otherwise the current weights become the snapshot.

    Decided on the device with ``torch.where``: no host read, and the snapshot is a device copy.
    """
    jump = 10.0 * torch.log10(loss.clamp_min(1e-12) / accepted) > _BACKTRACK_DB
    keep = (~jump).to(params[0].dtype)
    for p, s in zip(params, snapshot):
        s.copy_(torch.where(jump, s, p))
        p.copy_(s)
        if p.grad is not None:
            p.grad.mul_(keep)
    accepted.copy_(torch.where(jump, accepted, loss))
    count.add_(jump.long())


def _deliver(history, callback, losses, psnrs, psnrs_avg, start: int, end: int, n: int) -> bool:
    """Copy iterations (start, end] of the device buffers into the history and hand them to the callback."""
    chunk_loss = losses[start:end].tolist()
    chunk_psnr = psnrs[start:end].tolist() if psnrs is not None else None
    chunk_avg = psnrs_avg[start:end].tolist() if psnrs_avg is not None else None
    history["loss"].extend(chunk_loss)
    if chunk_psnr is not None:
        history["psnr"].extend(chunk_psnr)
    if chunk_avg is not None:
        history["psnr_average"].extend(chunk_avg)
    if callback is None:
        return False
    for i, loss in enumerate(chunk_loss):
        record = StepRecord(
            iteration=start + i + 1, iterations=n, loss=loss,
            psnr=chunk_psnr[i] if chunk_psnr else None, psnr_average=chunk_avg[i] if chunk_avg else None,
        )  # fmt: skip
        if callback(record):
            return True
    return False
