"""The DIP optimisation loop: Adam over the weights of a freshly initialised net, with input jitter, an exponential
moving average of outputs, backtracking on loss jumps, early stopping (acted on, or only observed), monitors and
callbacks.

The loop keeps everything on the fit's device — losses, PSNRs, the average, the backtracking snapshot, the
early-stopping state — and reads them on the host only every ``sync_every`` iterations, so a GPU is never stalled
by a per-iteration ``.item()`` (the published code also copied all weights to the CPU almost every iteration).
The device-side state lives in a `_Recorder`, the early-stopping decision in a `_StoppingPolicy`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from .checkpointing import checkpointed
from .engine import EngineOptions, backend_flags, fit_work
from .metrics import PsnrProtocol, psnr_stacked
from .operators import Operator
from .step import TrainingStep

__all__ = [
    "FitPart",
    "FitProblem",
    "FitResult",
    "FitSettings",
    "Monitor",
    "StepRecord",
    "StopReason",
    "fit",
    "fit_stacked",
]

# A PSNR drop of more than 5 dB from the last accepted iteration undoes the step (published denoising code).
_BACKTRACK_DB = 5.0

StopReason = Literal["iterations", "early_stopping", "callback"]  # why a fit ended


@dataclass
class FitPart:
    """Fit k of stacked fits of different sizes on one shared canvas: its image's box in the canvas, and what its
    loss and curves compare (its own operator, target and reference)."""

    crop: tuple[int, int, int, int]  # (top, left, H, W) in the shared canvas
    operator: Operator
    target: Tensor
    reference: Tensor | None = None


@dataclass
class FitProblem:
    """One fit: ``min_θ ‖A(crop(f_θ(z))) − target‖²``; or K fits stacked along channels (``dipcore.batched``).

    Stacked fits of different sizes on one shared canvas have ``parts``, one per fit (its box, operator, target and
    reference); ``crop`` is then the box that holds every part's, and ``operator``, ``target`` and ``reference``
    are None.
    """

    net: nn.Module
    z: Tensor  # (1, D, Hc, Wc): the code; Hc, Wc are a multiple of what the net needs
    operator: Operator | None
    target: Tensor | None  # the observation in A's space
    crop: tuple[int, int, int, int]  # (top, left, H, W): the image inside the net's canvas
    reference: Tensor | None = None  # (1, C, H, W) ground truth, for PSNR curves only
    parts: list[FitPart] | None = None

    def blocks(self, out: Tensor, k: int) -> list[Tensor]:
        """Each of the K fits' images in ``out``, the stacked output inside ``crop`` (1, K·C, H, W): its channel
        block, cut to its own box when the fits differ in size (views, no copy)."""
        blocks = out.chunk(k, dim=1)
        if self.parts is None:
            return list(blocks)
        top, left = self.crop[:2]
        return [
            b[..., t - top : t - top + h, lf - left : lf - left + w]
            for b, (t, lf, h, w) in zip(blocks, (part.crop for part in self.parts), strict=True)
        ]

    def per_fit_loss(self, k: int) -> Callable[[Tensor], Tensor]:
        """The loss of the stacked output inside ``crop`` (1, K·C, H, W) -> (K,): each fit's MSE in A's space."""
        if self.parts is None:
            op, target = self.operator, self.target
            return lambda out: (op(out) - target).pow(2).reshape(k, -1).mean(1)
        parts = self.parts

        def loss(out: Tensor) -> Tensor:  # one small loss per fit: each has its own size and operator
            blocks = self.blocks(out, k)
            return torch.stack([(p.operator(b) - p.target).pow(2).mean() for p, b in zip(parts, blocks, strict=True)])

        return loss

    def references(self) -> list[Tensor] | None:
        """The references of the curves, None unless every fit has one: one per part, else ``[reference]`` (the
        stacked fits' references, stacked as their outputs are)."""
        refs = [p.reference for p in self.parts] if self.parts is not None else [self.reference]
        return None if any(r is None for r in refs) else refs


class Monitor(Protocol):
    """What watches a fit without steering it (a study's candidate stopping rules): ``update`` is called after every
    iteration with the fit's output (1, C, H, W) and its moving average (None without ``ema``), on the device.

    The loop never reads a monitor, so one that stays on the device costs the fit no host synchronisation. The
    tensors it is handed are the loop's own (a graphed step overwrites its output on the next replay): a monitor
    copies what it keeps and never writes to them.
    """

    def update(self, output: Tensor, average: Tensor | None, iteration: int) -> None: ...


@dataclass(frozen=True)
class FitSettings:
    lr: float = 0.01
    iterations: int = 2000
    reg_noise_std: float = 0.0
    ema: float | None = None  # weight of the moving average of outputs (0.99 in the denoising code)
    backtrack: bool = False
    # A factory (each fit gets a fresh rule) or one factory per fit (stacked or side by side: fit i calls the i-th).
    # A rule is `VarianceStopping`'s shape; one whose `watches` is "average" sees the moving average, not the output.
    stopping: Callable[[], Any] | tuple[Callable[[], Any], ...] | None = None
    # With `stopping`: run every iteration and only record what the rule would have returned (an ES study).
    observe_stopping: bool = False
    # Factories of monitors: each fit gets fresh ones, returned in its FitResult. Empty (the default): none is called.
    monitors: tuple[Callable[[], Monitor], ...] = ()
    # The factor of ``lr`` at each iteration (1-based), e.g. a cosine decay. The step then runs eagerly: a CUDA
    # graph keeps the learning rate it was captured with.
    lr_schedule: Callable[[int], float] | None = None
    psnr_protocol: PsnrProtocol = field(default_factory=PsnrProtocol)  # how the curves measure PSNR
    engine: EngineOptions = field(default_factory=EngineOptions)


def settings_for_fit(settings: FitSettings, i: int) -> FitSettings:
    """The settings fit i of a batch runs with when it runs on its own (side by side, or one after another): its own
    stopping factory where there is one per fit."""
    if isinstance(settings.stopping, tuple):
        return dataclasses.replace(settings, stopping=(settings.stopping[i],))
    return settings


@dataclass(frozen=True)
class StepRecord:
    """What a callback sees for each iteration (delivered in order at the loop's sync points)."""

    iteration: int
    iterations: int
    loss: float
    psnr: float | None = None  # of the raw output against the reference, when one is given
    psnr_average: float | None = None  # of the moving average
    phase: str | None = None  # of a fit in phases (self-validation: "search", then "refit"); None for one fit


@dataclass
class FitResult:
    final: Tensor  # (1, C, H, W) output of the last iteration
    average: Tensor | None  # moving average of outputs, when ema is set
    stopped: Tensor | None  # the output chosen by early stopping, when it fired
    iteration: int  # the iteration `stopped` comes from, else the last one
    iterations_run: int
    stop_reason: StopReason
    history: dict[str, list[float]]
    backtracks: int = 0
    # The early-stopping rule's choice at the first sync point where it said stop: what a stopping run of this fit
    # alone returns. In stopping mode it is `stopped` (stacked fits stop when all rules agree: then it is their
    # choice there). None when the rule is off or never fired.
    es_output: Tensor | None = None
    es_iteration: int | None = None  # the iteration `es_output` comes from
    es_fired_at: int | None = None  # the sync point at which the rule said stop
    monitors: list[Any] = field(default_factory=list)  # this fit's monitors (`FitSettings.monitors`), in order


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
    k, n = len(generators), settings.iterations
    assert n >= 1, "a fit runs at least one iteration"
    engine = settings.engine.resolved(problem.z.device, work=fit_work(problem.net, *problem.crop[2:], fits=k))
    net, z = _on_engine(problem.net, problem.z, engine)
    params = [p for p in net.parameters() if p.requires_grad]
    recorder = _Recorder(settings, k, params, problem, z.device)
    policy = _StoppingPolicy(settings, k)
    monitors = [[make() for make in settings.monitors] for _ in range(k)]  # fit i's monitors
    step = _training_step(problem, net, z, params, settings, engine, k, before_step=recorder.before_step)
    stop_reason: StopReason = "iterations"
    with backend_flags(engine, z.device):
        for it in range(1, n + 1):
            if settings.lr_schedule is not None:
                for group in step.opt.param_groups:
                    group["lr"] = settings.lr * settings.lr_schedule(it)
            out, per_fit = step(_jitter(generators, z, settings.reg_noise_std))  # (1, K·C, H, W), (K,)
            recorder.record(it, out, per_fit)
            blocks = problem.blocks(out, k)
            policy.update(blocks, it, lambda: problem.blocks(recorder.average, k))
            if settings.monitors:
                _update_monitors(monitors, blocks, problem, recorder, it)
            if it % engine.sync_every and it != n:
                continue  # nothing is read on the host between sync points: the device runs ahead of Python
            # Sync point: the loop's only host reads — the new history rows, the callback, each rule's decision.
            if recorder.sync(it, callback):
                stop_reason = "callback"
                break
            if policy.stop(it):
                stop_reason = "early_stopping"
                break
    return _results(problem, out, recorder, policy, monitors, it, stop_reason)


def _update_monitors(
    monitors: list[list[Monitor]], blocks: list[Tensor], problem: FitProblem, recorder: _Recorder, it: int
) -> None:
    """Each fit's monitors see its image and moving average (on the device; nothing is read on the host)."""
    k = len(monitors)
    averages = problem.blocks(recorder.average, k) if recorder.average is not None else [None] * k
    with torch.no_grad():
        for fit_monitors, block, average in zip(monitors, blocks, averages, strict=True):
            for monitor in fit_monitors:
                monitor.update(block, average, it)


def _on_engine(net: nn.Module, z: Tensor, engine: EngineOptions) -> tuple[nn.Module, Tensor]:
    """The net and code in the engine's memory format, the net checkpointed when the engine says so."""
    memory_format = torch.channels_last if engine.channels_last else torch.contiguous_format
    net.to(memory_format=memory_format)
    if engine.checkpoint is True:
        net = checkpointed(net)  # the same parameters; keeps less for backward, recomputes the rest
    return net, z.contiguous(memory_format=memory_format)


def _training_step(
    problem: FitProblem,
    net: nn.Module,
    z: Tensor,
    params: list[Tensor],
    settings: FitSettings,
    engine: EngineOptions,
    k: int,
    *,
    before_step: Callable[[Tensor], None] | None,
) -> TrainingStep:
    """Adam and the step of ``problem``, eager or replayed from a CUDA graph, its net compiled or not."""
    # Backtracking decides on the device too, but stays eager: its per-parameter selects gain little from a graph.
    # A learning-rate schedule needs eager steps too: a captured Adam step keeps the rate it was captured with.
    graphed = (
        bool(engine.cuda_graph) and z.device.type == "cuda" and not settings.backtrack and settings.lr_schedule is None
    )
    opt = torch.optim.Adam(params, lr=settings.lr, fused=engine.fused_adam, capturable=graphed)
    autocast = (
        torch.autocast(z.device.type, dtype=torch.bfloat16) if engine.autocast == "bf16" else contextlib.nullcontext()
    )
    return TrainingStep(
        net,
        z,
        problem.per_fit_loss(k),
        problem.crop,
        opt,
        reg_noise_std=settings.reg_noise_std,
        autocast=autocast,
        before_step=before_step,
        cuda_graph=graphed,
        compile=bool(engine.compile),
    )


def _jitter(generators: list[torch.Generator], z: Tensor, std: float) -> Tensor | None:
    """Fresh N(0, 1) jitter of the code, fit k's block from ``generators[k]`` (None without jitter)."""
    if std <= 0:
        return None
    shape = (1, z.shape[1] // len(generators), *z.shape[2:])  # (1, D, Hc, Wc)
    return torch.cat([torch.randn(shape, generator=g, device=z.device) for g in generators], dim=1)  # (1, K·D, …)


class _Recorder:
    """What the loop keeps on the device for K stacked fits — per-iteration losses and PSNRs, the moving average of
    outputs, backtracking's snapshot, accepted losses and count — and the histories they reach at sync points."""

    def __init__(
        self, settings: FitSettings, k: int, params: list[Tensor], problem: FitProblem, device: torch.device
    ) -> None:
        n = settings.iterations
        self.n, self.k, self.ema, self.problem = n, k, settings.ema, problem
        reference = problem.references()
        self.reference = reference
        self.protocol = settings.psnr_protocol
        self.losses = torch.zeros(n, k, device=device)  # (n, K)
        self.psnrs = torch.zeros(n, k, device=device) if reference is not None else None
        self.psnrs_avg = torch.zeros(n, k, device=device) if reference is not None and settings.ema else None
        self.average: Tensor | None = None  # (1, K·C, H, W)
        # Backtracking: the weights of each fit's last accepted step, its loss, and how often a step was undone.
        self.snapshot = [p.detach().clone() for p in params] if settings.backtrack else None
        self.accepted = torch.full((k,), math.inf, device=device)  # (K,)
        self.backtracks = torch.zeros(k, dtype=torch.int64, device=device)  # (K,)
        self.before_step: Callable[[Tensor], None] | None = None  # what the step runs before Adam's update
        if self.snapshot is not None:
            self.before_step = functools.partial(
                _backtrack, params, self.snapshot, accepted=self.accepted, count=self.backtracks
            )
        self.histories = [_empty_history(reference is not None, bool(settings.ema)) for _ in range(k)]
        self.synced = 0  # iterations up to here are in the histories

    @torch.no_grad()
    def record(self, it: int, out: Tensor, per_fit: Tensor) -> None:
        """Iteration ``it``'s loss, moving average and PSNRs, written on the device (no host read)."""
        self.losses[it - 1] = per_fit
        if self.ema:
            self.average = out.clone() if self.average is None else self.average.lerp_(out, 1.0 - self.ema)
        if self.psnrs is not None:
            self.psnrs[it - 1] = self._psnr(out)
        if self.psnrs_avg is not None:
            self.psnrs_avg[it - 1] = self._psnr(self.average)

    def _psnr(self, out: Tensor) -> Tensor:
        """(K,) each fit's PSNR against its reference: in one go when the fits share a size, else fit by fit."""
        if self.problem.parts is None:
            return psnr_stacked(out, self.reference[0], self.k, self.protocol)
        blocks = self.problem.blocks(out, self.k)
        return torch.cat([psnr_stacked(b, r, 1, self.protocol) for b, r in zip(blocks, self.reference, strict=True)])

    def sync(self, it: int, callback: Callable[[StepRecord], bool | None] | None) -> bool:
        """At a sync point: copy iterations (synced, it] of the device buffers into the histories (host reads) and
        hand them to the callback in order, each the mean over the K fits; True when the callback says stop."""
        start, self.synced = self.synced, it
        rows = {"loss": self.losses[start:it].tolist()}  # (it - start) rows of K
        if self.psnrs is not None:
            rows["psnr"] = self.psnrs[start:it].tolist()
        if self.psnrs_avg is not None:
            rows["psnr_average"] = self.psnrs_avg[start:it].tolist()
        for i, history in enumerate(self.histories):
            for key, chunk in rows.items():
                history[key].extend(row[i] for row in chunk)
        if callback is None:
            return False
        for j, loss_row in enumerate(rows["loss"]):
            record = StepRecord(
                iteration=start + j + 1,
                iterations=self.n,
                loss=statistics.fmean(loss_row),
                psnr=statistics.fmean(rows["psnr"][j]) if "psnr" in rows else None,
                psnr_average=statistics.fmean(rows["psnr_average"][j]) if "psnr_average" in rows else None,
            )
            if callback(record):
                return True
        return False


class _StoppingPolicy:
    """The early-stopping rules of K stacked fits (one each) and what the loop does with them: act — the fits stop
    together at the first sync point where every rule says stop, as one net cannot drop a fit — or observe — each
    rule's first choice is kept and the fits run their full count."""

    def __init__(self, settings: FitSettings, k: int) -> None:
        factories = settings.stopping
        if isinstance(factories, tuple):
            if len(factories) != k:
                raise ValueError(f"{k} stacked fits need {k} stopping factories, got {len(factories)}")
            self.rules = [make() for make in factories]
        else:
            self.rules = [factories() for _ in range(k)] if factories else []
        self.on_average = [getattr(rule, "watches", "output") == "average" for rule in self.rules]
        if any(self.on_average) and not settings.ema:
            raise ValueError("a stopping rule that watches the moving average needs `ema`")
        self.observe = settings.observe_stopping
        self.observed: list[tuple[Tensor, int, int] | None] = [None] * k  # observe: (output, iteration, fired at)

    def update(self, blocks: list[Tensor], it: int, averages: Callable[[], list[Tensor]]) -> None:
        """Each rule sees its fit's image (``blocks[k]``) or, if it watches it, its moving average (``averages()``,
        asked for only then), on the device; an observed rule is left alone once it has fired (its choice is kept),
        and when all have, no rule is updated any more."""
        if self.rules and not all(self.observed):
            means = averages() if any(self.on_average) else None
            for i, (rule, block) in enumerate(zip(self.rules, blocks, strict=True)):
                rule.update(means[i] if self.on_average[i] else block, it)

    def stop(self, it: int) -> bool:
        """At a sync point (one host read per rule): observing, keep each rule's choice the first time it says
        stop — what a stopping run would return there; acting, True when every rule says stop."""
        if self.observe:
            for i, rule in enumerate(self.rules):
                if self.observed[i] is None and rule.should_stop(it):
                    # The rule would go on updating (its minimum can move on): its choice is copied, not referenced.
                    self.observed[i] = (rule.best_output.clone(), int(rule.best_iteration), it)
            return False
        return bool(self.rules) and all(rule.should_stop(it) for rule in self.rules)

    def choice(self, i: int, it: int, stopped: bool) -> tuple[Tensor, int, int] | None:
        """Fit i's (output, iteration, fired at) when the loop ended at ``it`` (``stopped``: because every rule
        said stop): the observed choice, or, acting, the rule's choice where it says stop at the end; else None."""
        if self.observe or not self.rules:
            return self.observed[i]
        rule = self.rules[i]
        if stopped or rule.should_stop(it):  # a host read: the loop has ended
            return rule.best_output, int(rule.best_iteration), it
        return None


def _results(
    problem: FitProblem,
    out: Tensor,
    recorder: _Recorder,
    policy: _StoppingPolicy,
    monitors: list[list[Monitor]],
    it: int,
    reason: StopReason,
) -> list[FitResult]:
    """One FitResult per stacked fit, the loop having ended after iteration ``it`` for ``reason``."""
    k = recorder.k  # the host reads below (backtrack counts, the rules' last word) come after the loop
    finals = problem.blocks(out, k)  # K × (1, C, H_k, W_k)
    averages = problem.blocks(recorder.average, k) if recorder.average is not None else [None] * k
    results = []
    for i in range(k):
        choice = policy.choice(i, it, stopped=reason == "early_stopping")
        acted = choice is not None and not policy.observe  # the fit returns the rule's choice
        es_output, es_iteration, es_fired_at = choice or (None, None, None)
        result = FitResult(
            final=finals[i],
            average=averages[i],
            stopped=es_output if acted else None,
            iteration=es_iteration if acted else it,
            iterations_run=it,
            stop_reason="early_stopping" if acted else reason,
            history=recorder.histories[i],
            backtracks=int(recorder.backtracks[i]),
            es_output=es_output,
            es_iteration=es_iteration,
            es_fired_at=es_fired_at,
            monitors=monitors[i],
        )
        results.append(result)
    return results


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
