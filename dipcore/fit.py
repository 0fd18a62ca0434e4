"""The DIP optimisation loop: Adam over the weights of a freshly initialised net, with input jitter, an exponential
moving average of outputs, backtracking on loss jumps, early stopping (acted on, or only observed) and callbacks.

The loop keeps everything on the fit's device — losses, PSNRs, the average, the backtracking snapshot, the
early-stopping state — and reads them on the host only every ``sync_every`` iterations, so a GPU is never stalled
by a per-iteration ``.item()`` (the published code also copied all weights to the CPU almost every iteration).
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .batched import unstack_block
from .checkpointing import checkpointed
from .engine import EngineOptions, backend_flags
from .metrics import PsnrProtocol, psnr_stacked
from .operators import Operator
from .step import TrainingStep
from .stopping import VarianceStopping

__all__ = ["FitProblem", "FitResult", "FitSettings", "StepRecord", "fit", "fit_stacked"]

# A PSNR drop of more than 5 dB from the last accepted iteration undoes the step (published denoising code).
_BACKTRACK_DB = 5.0


@dataclass
class FitProblem:
    """One fit: ``min_θ ‖A(crop(f_θ(z))) − target‖²``."""

    net: nn.Module
    z: Tensor  # (1, D, Hc, Wc): the code; Hc, Wc are a multiple of what the net needs
    operator: Operator
    target: Tensor  # the observation in A's space
    crop: tuple[int, int, int, int]  # (top, left, H, W): the image inside the net's canvas
    reference: Tensor | None = None  # (1, C, H, W) ground truth, for PSNR curves only


@dataclass(frozen=True)
class FitSettings:
    lr: float = 0.01
    iterations: int = 2000
    reg_noise_std: float = 0.0
    ema: float | None = None  # weight of the moving average of outputs (0.99 in the denoising code)
    backtrack: bool = False
    stopping: Callable[[], VarianceStopping] | None = None  # a factory: each fit gets a fresh rule
    # With `stopping`: run every iteration and only record what the rule would have returned (an ES study).
    observe_stopping: bool = False
    psnr_protocol: PsnrProtocol = field(default_factory=PsnrProtocol)  # how the curves measure PSNR
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
    # The early-stopping rule's choice at the first sync point where it said stop: what a stopping run of this fit
    # alone returns. In stopping mode it is `stopped` (stacked fits stop when all rules agree: then it is their
    # choice there). None when the rule is off or never fired.
    es_output: Tensor | None = None
    es_iteration: int | None = None  # the iteration `es_output` comes from
    es_fired_at: int | None = None  # the sync point at which the rule said stop


def fit(
    problem: FitProblem,
    settings: FitSettings,
    *,
    generator: torch.Generator,
    callback: Callable[[StepRecord], bool | None] | None = None,
) -> FitResult:
    """Run one DIP fit. ``generator`` (on the fit's device) draws the input jitter; a callback returning True stops."""
    return fit_stacked(problem, settings, generators=[generator], callback=callback)[0]


def fit_stacked(
    problem: FitProblem,
    settings: FitSettings,
    *,
    generators: list[torch.Generator],
    callback: Callable[[StepRecord], bool | None] | None = None,
) -> list[FitResult]:
    """Run K = ``len(generators)`` independent fits stacked along channels in one net (see ``dipcore.batched``).

    Fit k owns channel block k of the code, the output, the target and every parameter's first dimension, so
    per-fit losses add up to a loss whose gradient is each fit's own; BatchNorm and Adam are per channel, hence
    per fit. Fit k draws its jitter from ``generators[k]``. With K = 1 this is the plain DIP loop.
    Callbacks see the mean over the K fits.
    """
    k = len(generators)
    device = problem.z.device
    engine = settings.engine.resolved(device)
    net, z, op = problem.net, problem.z, problem.operator
    memory_format = torch.channels_last if engine.channels_last else torch.contiguous_format
    net.to(memory_format=memory_format)
    if engine.checkpoint is True:
        net = checkpointed(net)  # the same parameters; keeps less for backward, recomputes the rest
    z = z.contiguous(memory_format=memory_format)
    z_blocks = z.shape[1] // k
    ref = problem.reference
    n = settings.iterations
    params = [p for p in net.parameters() if p.requires_grad]
    # Backtracking decides on the device too, but stays eager: its per-parameter selects gain little from a graph.
    graphed = bool(engine.cuda_graph) and device.type == "cuda" and not settings.backtrack
    opt = torch.optim.Adam(params, lr=settings.lr, fused=engine.fused_adam, capturable=graphed)
    rules = [settings.stopping() for _ in range(k)] if settings.stopping else None
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if engine.autocast == "bf16" else contextlib.nullcontext()
    )

    losses = torch.zeros(n, k, device=device)
    psnrs = torch.zeros(n, k, device=device) if ref is not None else None
    psnrs_avg = torch.zeros(n, k, device=device) if ref is not None and settings.ema else None
    average: Tensor | None = None
    snapshot = [p.detach().clone() for p in params] if settings.backtrack else None
    accepted_loss = torch.full((k,), math.inf, device=device)
    backtracks = torch.zeros(k, dtype=torch.int64, device=device)
    histories = [_empty_history(ref is not None, bool(settings.ema)) for _ in range(k)]
    observed: list[tuple[Tensor, int, int] | None] = [None] * k  # observe mode: (output, iteration, fired at)
    out = None
    stop_reason: Literal["iterations", "early_stopping", "callback"] = "iterations"
    synced = 0
    it = 0

    backtrack = None
    if snapshot is not None:
        backtrack = functools.partial(_backtrack, params, snapshot, accepted=accepted_loss, count=backtracks)
    step = TrainingStep(
        net,
        z,
        op,
        problem.target,
        problem.crop,
        k,
        opt,
        reg_noise_std=settings.reg_noise_std,
        autocast=autocast,
        before_step=backtrack,
        cuda_graph=graphed,
    )
    with backend_flags(engine, device):
        for it in range(1, n + 1):
            jitter = None
            if settings.reg_noise_std > 0:
                jitter = torch.cat(
                    [torch.randn((1, z_blocks, *z.shape[2:]), generator=g, device=device) for g in generators], dim=1
                )
            out, per_fit = step(jitter)

            with torch.no_grad():
                losses[it - 1] = per_fit
                if settings.ema:
                    average = out.clone() if average is None else average.lerp_(out, 1.0 - settings.ema)
                if ref is not None:
                    psnrs[it - 1] = psnr_stacked(out, ref, k, settings.psnr_protocol)
                    if psnrs_avg is not None:
                        psnrs_avg[it - 1] = psnr_stacked(average, ref, k, settings.psnr_protocol)
                if rules is not None and not all(observed):  # an observed rule is left alone once it has fired
                    for rule, block in zip(rules, out.chunk(k, dim=1), strict=True):
                        rule.update(block, it)

            if it % engine.sync_every and it != n:
                continue
            stop = _deliver(histories, callback, losses, psnrs, psnrs_avg, synced, it, n)
            synced = it
            if stop:
                stop_reason = "callback"
                break
            if rules is not None and settings.observe_stopping:
                _observe(rules, observed, it)
            elif rules is not None and all(rule.should_stop(it) for rule in rules):
                stop_reason = "early_stopping"
                break

    results = []
    for i in range(k):
        rule = rules[i] if rules is not None and not settings.observe_stopping else None
        fired = rule is not None and (stop_reason == "early_stopping" or rule.should_stop(it))
        result = FitResult(
            final=unstack_block(out, k, i),
            average=None if average is None else unstack_block(average, k, i),
            stopped=rule.best_output if fired else None,
            iteration=int(rule.best_iteration) if fired else it,
            iterations_run=it,
            stop_reason="early_stopping" if fired else stop_reason,
            history=histories[i],
            backtracks=int(backtracks[i]),
        )
        if fired:
            result.es_output, result.es_iteration, result.es_fired_at = result.stopped, result.iteration, it
        elif observed[i] is not None:
            result.es_output, result.es_iteration, result.es_fired_at = observed[i]
        results.append(result)
    return results


def _observe(rules: list[VarianceStopping], observed: list, it: int) -> None:
    """At a sync point: keep each rule's choice the first time it says stop — what a stopping run would return
    there. The rule would go on updating (its minimum can move on), so its choice is copied, not referenced."""
    for i, rule in enumerate(rules):
        if observed[i] is None and rule.should_stop(it):
            observed[i] = (rule.best_output.clone(), int(rule.best_iteration), it)


def _empty_history(with_psnr: bool, with_average: bool) -> dict[str, list[float]]:
    history: dict[str, list[float]] = {"loss": []}
    if with_psnr:
        history["psnr"] = []
        if with_average:
            history["psnr_average"] = []
    return history


@torch.no_grad()
def _backtrack(params: list[Tensor], snapshot: list[Tensor], loss: Tensor, accepted: Tensor, count: Tensor) -> None:
    """Before the step: where a fit's loss jumped by more than 5 dB against its last accepted one, go back to the
    weights that gave that loss and drop this gradient; elsewhere the current weights become the snapshot.

    ``loss``, ``accepted`` and ``count`` hold one value per stacked fit, and fit k owns block k of every
    parameter's first dimension. Decided on the device with ``torch.where``: no host read, no CPU copy.
    """
    k = loss.numel()
    jump = 10.0 * torch.log10(loss.clamp_min(1e-12) / accepted) > _BACKTRACK_DB  # (K,)
    for p, s in zip(params, snapshot, strict=True):
        mask = jump.repeat_interleave(p.shape[0] // k).view(-1, *([1] * (p.dim() - 1)))
        s.copy_(torch.where(mask, s, p))
        p.copy_(s)
        if p.grad is not None:
            p.grad.mul_(~mask)
    accepted.copy_(torch.where(jump, accepted, loss))
    count.add_(jump.long())


def _deliver(histories, callback, losses, psnrs, psnrs_avg, start: int, end: int, n: int) -> bool:
    """Copy iterations (start, end] of the device buffers (n, K) into the histories and hand them to the callback."""
    chunks = {"loss": losses[start:end].tolist()}
    if psnrs is not None:
        chunks["psnr"] = psnrs[start:end].tolist()
    if psnrs_avg is not None:
        chunks["psnr_average"] = psnrs_avg[start:end].tolist()
    for i, history in enumerate(histories):
        for key, rows in chunks.items():
            history[key].extend(row[i] for row in rows)
    if callback is None:
        return False
    for j, loss_row in enumerate(chunks["loss"]):
        record = StepRecord(
            iteration=start + j + 1,
            iterations=n,
            loss=statistics.fmean(loss_row),
            psnr=statistics.fmean(chunks["psnr"][j]) if "psnr" in chunks else None,
            psnr_average=statistics.fmean(chunks["psnr_average"][j]) if "psnr_average" in chunks else None,
        )
        if callback(record):
            return True
    return False
