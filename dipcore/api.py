"""The public entry points: ``restore`` one observation with the Deep Image Prior, ``restore_batch`` several as one
batch (of one shape, or of different shapes on a shared canvas); below them, for benchmarks, the parts of a fit:
``build_problem`` and ``run_fits``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import nets
from .batched import stack_problems
from .canvas import MAX_CANVAS_WASTE, fit_canvases, own_canvas, shared_canvas
from .concurrent import concurrent_workers, fit_concurrently
from .crop import center_box, center_crop_to_multiple
from .engine import EngineOptions, default_device, fit_work
from .errors import ConfigError
from .fit import FitProblem, FitResult, FitSettings, StepRecord, fit, fit_stacked, settings_for_fit
from .imageio import to_float_image
from .memory import decide_checkpoint
from .metrics import PsnrProtocol, check_protocol
from .observation import Observation, binary_mask
from .operators import meshgrid_code, noise_code
from .preset import TaskPreset
from .selfvalidation import hold_out, refit_settings, search_settings
from .stopping import VarianceStopping
from .task_defs import get_task
from .tasks import preset_for

__all__ = ["Restoration", "RunOutput", "StoppingChoice", "build_problem", "restore", "restore_batch", "run_fits"]


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


def _as_tensor(image: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)  # (1, C, H, W)


def _center_crop(arr: np.ndarray | None, multiple: int) -> np.ndarray | None:
    return arr if arr is None or multiple <= 1 else center_crop_to_multiple(arr, multiple)


def _pad_to(x: Tensor, height: int, width: int) -> Tensor:
    """Reflection-pad (1, C, h, w) to (1, C, height, width), centred; replicate where reflection cannot reach."""
    top, left, h, w = center_box(height, width, x.shape[-2], x.shape[-1])
    pad = (left, width - w - left, top, height - h - top)  # (left, right, top, bottom)
    mode = "reflect" if max(pad) < min(x.shape[-2:]) else "replicate"
    return F.pad(x, pad, mode=mode)


def build_problem(
    p: TaskPreset,
    obs: Observation,
    *,
    device: torch.device,
    seed: int,
    reference: np.ndarray | None = None,
    features_weights: str | Path | None = None,
    operator: nn.Module | None = None,
    canvas: tuple[int, int] | None = None,
) -> FitProblem:
    """Net, code, operator and target of one fit, all drawn from ``seed`` on the CPU (identical on every device).

    The operator is the task's (``get_task(p.task).operator``), or ``operator``, the caller's, checked against the
    observation's shape; the task still sets the output's size and channels. The net runs on ``canvas`` (Hc, Wc),
    a canvas shared with other fits (``dipcore.canvas``), else on the image's own (``nets.canvas_size``); the image
    sits centred in it and the code is drawn at its size.
    """
    gen = torch.Generator().manual_seed(seed)
    task = get_task(p.task)
    h, w, out_channels = task.output_shape(obs.image.shape, p.scale)
    hc, wc = nets.canvas_size(p.net, h, w, **p.net_options)
    if canvas is not None:
        multiple = nets.required_multiple(p.net, **p.net_options)
        if canvas[0] < hc or canvas[1] < wc or canvas[0] % multiple or canvas[1] % multiple:
            raise ConfigError(
                f"a canvas of {canvas[1]}×{canvas[0]} cannot hold this image: it needs sides that are multiples "
                f"of {multiple} and at least its own canvas, {wc}×{hc}"
            )
        hc, wc = canvas
    crop = center_box(hc, wc, h, w)  # the image centred in the canvas

    net = nets.get_net(p.net, in_channels=p.input_depth, out_channels=out_channels, **p.net_options)
    nets.reinitialise(net, gen)
    net = net.to(device)

    code = nets.code_size(p.net, hc, wc, **p.net_options)  # a code of its own size (the deep decoder's) is noise
    if code is not None:
        z = noise_code(p.input_depth, *code, generator=gen, scale=p.input_scale)
    elif p.input == "noise":
        z = noise_code(p.input_depth, hc, wc, generator=gen, scale=p.input_scale)
    elif p.input == "meshgrid":
        if p.input_depth != 2:
            raise ConfigError(f"a meshgrid input has 2 channels, not input_depth={p.input_depth}")
        z = meshgrid_code(hc, wc)
    elif p.input == "guide":
        if obs.guide is None:
            raise ConfigError(f"task {p.task!r} takes its input from a guide image (the flash image): pass guide=")
        if obs.guide.shape[:2] != (h, w):
            raise ConfigError(f"guide is {obs.guide.shape[1]}×{obs.guide.shape[0]}, the image is {w}×{h}")
        z = _pad_to(_as_tensor(obs.guide, torch.device("cpu")), hc, wc)
        if z.shape[1] != p.input_depth:
            raise ConfigError(f"the guide has {z.shape[1]} channels but input_depth={p.input_depth}")
    else:
        raise ConfigError(f"unknown input {p.input!r}")

    y = _as_tensor(obs.image, device)  # (1, C, h, w)
    if operator is not None:
        op = _callers_operator(operator, (out_channels, h, w), y)
    else:
        op = task.operator(p, obs, features_weights=features_weights).to(device)
        if task.target == "A(y)":
            with torch.no_grad():
                y = op(y)  # the masked image with its holes zeroed; the features of the image to invert
    ref = None
    if reference is not None:
        ref_arr = to_float_image(reference)
        if ref_arr.shape != (h, w, out_channels):
            raise ConfigError(f"reference is {ref_arr.shape}, the output will be {(h, w, out_channels)}")
        ref = _as_tensor(ref_arr, device)
    return FitProblem(net=net, z=z.to(device), operator=op, target=y, crop=crop, reference=ref)


def _callers_operator(operator: nn.Module, output: tuple[int, int, int], y: Tensor) -> nn.Module:
    """The caller's operator on y's device, once it maps an output of shape ``output`` (C, H, W) onto y's shape."""
    if not isinstance(operator, nn.Module):
        raise ConfigError(f"operator= takes a torch.nn.Module computing A(x), not {type(operator).__name__}")
    op = operator.to(y.device)
    c, h, w = output
    try:
        with torch.no_grad():
            shape = tuple(op(torch.zeros(1, c, h, w, device=y.device)).shape)
    except RuntimeError as exc:
        raise ConfigError(f"the operator fails on an output of shape {(1, c, h, w)}: {exc}") from exc
    if shape != tuple(y.shape):
        raise ConfigError(
            f"the operator maps an output of shape {(1, c, h, w)} to {shape}, but the observation is "
            f"{tuple(y.shape)}: A(x) must have the observation's shape"
        )
    return op


def _as_observation(obs: Any, task: str, mask: Any, guide: Any, scale: int | None) -> Observation:
    if isinstance(obs, Observation):
        o = Observation(obs.image, obs.task, obs.mask, obs.scale, obs.guide, dict(obs.meta))
    else:
        o = Observation(to_float_image(obs), task, scale=scale or 1)
    if mask is not None:
        o.mask = binary_mask(mask)
    if guide is not None:
        o.guide = to_float_image(guide)
    return o


def restore(
    observation: Any,
    *,
    task: str,
    scale: int | None = None,
    variant: str | None = None,
    mask: Any = None,
    guide: Any = None,
    preset: str = "paper",
    iterations: int | None = None,
    seed: int = 0,
    reference: Any = None,
    device: str | torch.device | None = None,
    early_stopping: bool | str | None = None,
    callback: Callable[[StepRecord], bool | None] | None = None,
    engine: EngineOptions | None = None,
    features_weights: str | Path | None = None,
    psnr_protocol: PsnrProtocol | Mapping[str, Any] | None = None,
    operator: nn.Module | None = None,
    canvas: str | tuple[int, int] | None = None,
    **overrides: Any,
) -> Restoration:
    """Restore one image with the Deep Image Prior.

    ``observation`` is a ``dipcore.Observation`` (from ``dipcore.degrade``) or a degraded image (array or PIL).
    The task's published preset is used (``preset="fast"`` for a narrow, short run); ``overrides`` change any of
    its settings (``channels=``, ``lr=``, ``reg_noise_std=``, ``input_depth=``, ``net=``, ``ema=``, ``restarts=``,
    ``crop="center"`` for the paper's centre crop, …). ``reference`` (ground truth) only adds PSNR curves, measured
    as ``psnr_protocol`` says (``dipcore.psnr``'s keywords, e.g. ``{"y_channel": True, "shave": 4}`` for SR ×4;
    default: all channels, no shave). ``early_stopping=True`` stops by the running-variance rule; ``"observe"``
    runs every iteration, returns the usual output and records the rule's choice in ``Restoration.stopping``.
    Same seed and same device give the same result.

    ``operator`` replaces the task's observation model with the caller's, as deepinv's physics objects do: any
    ``torch.nn.Module`` whose forward computes ``A(x)`` on ``(1, C, H, W)`` images (a ``dipcore.operators.Operator``
    subclass names it ``A``), e.g. a blur for deblurring. The fit is then ``min_θ ‖A(f_θ(z)) − y‖²`` with ``y`` the
    observation as given; the task still chooses the preset and the output's size (the observation's, or ``scale``
    times it for SR), and A of an output of that size must have the observation's shape, else ConfigError. The
    task's own operator (and its ``mask``) is then unused; the operator is moved to ``device`` in place. Restarts
    stacked along channels (``restarts`` > 1, ``batch_mode="stack"``) need an A that acts on each channel alike.

    ``canvas`` is what the net runs on: ``"own"``, the image's own canvas (its size rounded up as the net needs);
    ``"bucket"``, its canvas bucket (``dipcore.canvas_bucket``: at most 1.57× the pixels, the image centred); or a
    ``(Hc, Wc)`` given. Default: the bucket when the net is compiled (``EngineOptions(compile=True)``: images of
    many sizes then share a few compiled graphs), else its own. A fit on a larger canvas is another fit, of the same
    quality (``Restoration.config["canvas"]`` records it).
    """
    started = time.perf_counter()
    if isinstance(observation, Observation):
        scale = scale or (observation.scale if get_task(task).scaled else None)
    p = preset_for(
        task,
        variant=variant,
        scale=scale,
        preset=preset,
        iterations=iterations,
        early_stopping=early_stopping,
        **overrides,
    )
    obs, ref = _prepare(p, observation, mask=mask, guide=guide, reference=reference)
    protocol = _protocol(psnr_protocol, ref)
    dev = torch.device(device) if device is not None else default_device()
    seeds = [seed + r for r in range(p.restarts)]
    own = own_canvas(p, obs.image.shape)
    compiled = (engine or EngineOptions()).resolved(dev).compile
    [on] = fit_canvases(p, [own], _canvas_choice(canvas, compiled, "own"), stacked=False, max_waste=None)

    def build() -> list[FitProblem]:
        return [
            build_problem(
                p,
                obs,
                device=dev,
                seed=s,
                reference=ref,
                features_weights=features_weights,
                operator=operator,
                canvas=on,
            )
            for s in seeds
        ]

    problems = build()
    engine = (engine or EngineOptions()).resolved(dev, work=_work(problems[0]), bf16_ok=get_task(p.task).bf16_default)
    h, w, c = get_task(p.task).output_shape(obs.image.shape, p.scale)
    fits = _at_once(engine, p.restarts) if engine.batch_restarts else 1
    engine = _plan_memory(engine, p, *(on or (h, w)), c, dev, fits=fits)  # on its canvas, when larger than its own
    settings = _settings(p, engine, protocol)
    runs = _fit_preset(problems, build, p, settings, seeds=seeds, callback=callback, batched=engine.batch_restarts)
    return _collect(runs, p, seed, dev, started, protocol=protocol, engine=engine, canvas=(on, own))


def restore_batch(
    observations: list[Any],
    *,
    task: str,
    references: list[Any] | None = None,
    seeds: list[int] | None = None,
    scale: int | None = None,
    variant: str | None = None,
    preset: str = "paper",
    iterations: int | None = None,
    device: str | torch.device | None = None,
    early_stopping: bool | str | None = None,
    callback: Callable[[StepRecord], bool | None] | None = None,
    engine: EngineOptions | None = None,
    psnr_protocol: PsnrProtocol | Mapping[str, Any] | None = None,
    canvas: str | tuple[int, int] | None = None,
    max_canvas_waste: float | None = MAX_CANVAS_WASTE,
    **overrides: Any,
) -> list[Restoration]:
    """Restore K images of one task as one batch: with one shape, the same results as K ``restore`` calls with
    seeds ``seeds`` (up to float rounding), in less time.

    How the batch runs is ``engine.batch_mode``: on a CPU (``"threads"``, the default there) the fits run side by
    side on threads, each on its share of torch's threads (``dipcore.concurrent``); elsewhere (``"stack"``) they
    are stacked along channels into one net with grouped convolutions (``dipcore.batched``), which fills a GPU
    that one small fit leaves mostly idle. Stacking needs a net that stacks (``batch_refusal``).

    Images of different shapes: side by side, each fit runs on its own canvas, as ``restore`` would. Stacked, one
    net runs on one canvas, chosen by ``canvas``: ``"shared"`` (an eager net's default) — the smallest that holds
    every fit's own canvas; each fit's loss, curves, average and output are taken on its own box in it
    (``dipcore.canvas``);
    ``"own"`` — every fit on its own canvas, so a stacked batch needs one canvas size (ConfigError otherwise; images
    of one shape have one, and small ones may share the net's smallest canvas); ``"bucket"`` — each fit on its
    canvas bucket, stacked ones on the smallest canvas holding their buckets (the default when the net is compiled,
    so that batches of many sizes share a few graphs: ``dipcore.canvas.fit_canvases``); or
    ``(Hc, Wc)``, a canvas given (e.g. ``dipcore.canvas_bucket``'s), for every fit in either mode. A fit on a
    canvas larger than its own is another fit, of the same quality but not bit-identical to ``restore``'s (its
    code and BatchNorm statistics span the larger canvas); fits of one shape share their own canvas, so nothing
    changes for them. A shared canvas with more than ``max_canvas_waste`` × the pixels of a fit's own canvas is
    refused (ConfigError; None: any): batch images of closer sizes (``dipcore.canvas_bucket`` groups them).
    """
    started = time.perf_counter()
    k = len(observations)
    seeds = list(seeds) if seeds is not None else list(range(k))
    references = list(references) if references is not None else [None] * k
    if len(seeds) != k or len(references) != k:
        raise ConfigError(f"{k} observations need {k} seeds and references, got {len(seeds)} and {len(references)}")
    if isinstance(observations[0], Observation):
        scale = scale or (observations[0].scale if get_task(task).scaled else None)
    p = preset_for(
        task,
        variant=variant,
        scale=scale,
        preset=preset,
        iterations=iterations,
        early_stopping=early_stopping,
        **overrides,
    )
    if p.restarts != 1:
        raise ConfigError("restore_batch runs one fit per image: use restarts=1")
    dev = torch.device(device) if device is not None else default_device()
    prepared = [_prepare(p, o, reference=r) for o, r in zip(observations, references, strict=True)]
    protocol = None
    for _, ref in prepared:
        protocol = _protocol(psnr_protocol, ref) if ref is not None else protocol
    device_defaults = (engine or EngineOptions()).resolved(dev)  # the batch mode and compile depend on the device only
    stacked = device_defaults.batch_mode == "stack"
    if stacked and len({obs.image.shape[2] for obs, _ in prepared}) > 1:
        raise ConfigError("stacked fits need observations of one channel count (grey and colour apart)")
    own = [own_canvas(p, obs.image.shape) for obs, _ in prepared]
    how = _canvas_choice(canvas, device_defaults.compile, "shared")
    canvases = fit_canvases(p, own, how, stacked=stacked, max_waste=max_canvas_waste)

    def build() -> list[FitProblem]:
        return [
            build_problem(p, obs, device=dev, seed=s, reference=ref, canvas=c)
            for (obs, ref), s, c in zip(prepared, seeds, canvases, strict=True)
        ]

    problems = build()
    work = max(_work(q) for q in problems)
    engine = (engine or EngineOptions()).resolved(dev, work=work, bf16_ok=get_task(p.task).bf16_default)
    # The memory plan of the images' size, or of the largest canvas (the shared one, when stacked) when they differ.
    outputs = [get_task(p.task).output_shape(obs.image.shape, p.scale) for obs, _ in prepared]
    if len({o[:2] for o in outputs}) == 1 and all(c is None for c in canvases):
        height, width = outputs[0][:2]
    else:
        height, width = shared_canvas([c or o for c, o in zip(canvases, own, strict=True)])
    channels = max(o[2] for o in outputs)
    engine = _plan_memory(engine, p, height, width, channels, dev, fits=_at_once(engine, k))
    runs = _fit_preset(problems, build, p, _settings(p, engine, protocol), seeds=seeds, callback=callback)
    return [
        _collect([run], p, s, dev, started, protocol=protocol, engine=engine, canvas=(c, o))
        for run, s, c, o in zip(runs, seeds, canvases, own, strict=True)
    ]


def _canvas_choice(canvas: str | tuple[int, int] | None, compiled: bool, otherwise: str) -> str | tuple[int, int]:
    """``canvas`` as given, else the default: buckets for a ``compiled`` net (a graph per canvas: few canvases, few
    graphs), ``otherwise`` for an eager one."""
    if canvas is not None:
        return canvas
    return "bucket" if compiled else otherwise


def _prepare(p: TaskPreset, observation: Any, *, mask: Any = None, guide: Any = None, reference: Any = None):
    """The observation and reference as float arrays, centre-cropped when the preset asks for the paper's crop."""
    if p.iterations < 1:
        raise ConfigError(f"iterations must be ≥ 1, got {p.iterations}")
    if p.early_stopping not in (True, False, "observe", "selfval"):
        raise ConfigError(f"early_stopping must be True, False, 'observe' or 'selfval', not {p.early_stopping!r}")
    task = get_task(p.task)
    obs = _as_observation(observation, p.task, mask, guide, p.scale)
    ref = to_float_image(reference) if reference is not None else None
    if p.crop == "center":
        multiple = nets.required_multiple(p.net, **p.net_options)
        lr_multiple = max(1, multiple // p.scale) if task.scaled else multiple
        obs.image, obs.mask, obs.guide = (_center_crop(a, lr_multiple) for a in (obs.image, obs.mask, obs.guide))
        ref = _center_crop(ref, multiple)
    channels = task.output_shape(obs.image.shape)[2]
    if ref is not None and ref.shape[2] != channels:  # grey against colour: the reference takes the output's channels
        ref = np.repeat(ref, channels, axis=2) if ref.shape[2] == 1 else ref.mean(2, keepdims=True)
    return obs, ref


def _work(problem: FitProblem) -> int:
    """How large one fit is, for the engine's precision choice (`dipcore.engine.fit_work`)."""
    return fit_work(problem.net, *problem.crop[2:])


def _plan_memory(
    engine: EngineOptions, p: TaskPreset, height: int, width: int, channels: int, dev: torch.device, *, fits: int
):
    """``engine`` with activation checkpointing decided for ``fits`` fits on an ``height × width`` output or canvas
    (the net's canvas for it is the same); OutOfMemoryError when it cannot fit."""
    return decide_checkpoint(engine, p, height, width, out_channels=channels, fits=fits, device=dev)


def _at_once(engine: EngineOptions, fits: int) -> int:
    """How many of a batch's fits hold their activations at the same time: all when stacked, one per worker when
    side by side on threads."""
    return concurrent_workers(fits) if engine.batch_mode == "threads" else fits


def _protocol(value: PsnrProtocol | Mapping[str, Any] | None, ref: np.ndarray | None) -> PsnrProtocol | None:
    """The PSNR protocol of the curves, checked against the reference's size (None without a reference)."""
    protocol = PsnrProtocol.of(value)
    if ref is None:
        return None
    check_protocol(protocol, *ref.shape)
    return protocol


def _settings(p: TaskPreset, engine: EngineOptions, protocol: PsnrProtocol | None) -> FitSettings:
    """The loop's settings of preset ``p``; the running-variance rule where it asks for it (self-validation's rules
    are per fit: ``self_validated`` sets them)."""
    wmv = p.early_stopping in (True, "observe")
    stopping = (lambda: VarianceStopping(window=p.es_window, patience=p.es_patience)) if wmv else None
    return FitSettings(
        lr=p.lr,
        iterations=p.iterations,
        reg_noise_std=p.reg_noise_std,
        ema=p.ema,
        backtrack=p.backtrack,
        stopping=stopping,
        observe_stopping=p.early_stopping == "observe",
        psnr_protocol=protocol or PsnrProtocol(),
        engine=engine,
    )


def run_fits(
    problems: list[FitProblem],
    settings: FitSettings,
    *,
    seeds: list[int],
    callback: Callable[[StepRecord], bool | None] | None = None,
    batched: bool = True,
) -> list[FitResult]:
    """Fit ``problems`` one by one or, when ``batched`` and there is more than one, as one batch: stacked into one
    net (``dipcore.batched``) or side by side on CPU threads (``dipcore.concurrent``), as ``settings.engine``'s
    ``batch_mode`` says. Fit i draws its jitter from seed ``seeds[i]`` on the problems' device.

    The engine is read as given: pass one resolved for the device (``EngineOptions.resolved``), as ``restore`` and
    ``restore_batch`` do — an unresolved ``batch_mode=None`` stacks.
    """
    device = problems[0].z.device
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    if batched and len(problems) > 1:
        if settings.engine.batch_mode == "threads":
            return fit_concurrently(problems, settings, generators=generators, callback=callback)
        return fit_stacked(stack_problems(problems), settings, generators=generators, callback=callback)
    return [
        fit(prob, settings_for_fit(settings, i), generator=g, callback=callback)
        for i, (prob, g) in enumerate(zip(problems, generators, strict=True))
    ]


def _fit_preset(
    problems: list[FitProblem],
    build: Callable[[], list[FitProblem]],
    p: TaskPreset,
    settings: FitSettings,
    *,
    seeds: list[int],
    callback: Callable[[StepRecord], bool | None] | None,
    batched: bool = True,
) -> list[FitResult]:
    """The fits of preset ``p``: self-validation's two phases where it asks for them, else one run of ``problems``."""
    if p.early_stopping == "selfval":
        return self_validated(problems, build, p, settings, seeds=seeds, callback=callback, batched=batched)
    return run_fits(problems, settings, seeds=seeds, callback=callback, batched=batched)


def self_validated(
    problems: list[FitProblem],
    build: Callable[[], list[FitProblem]],
    p: TaskPreset,
    settings: FitSettings,
    *,
    seeds: list[int],
    callback: Callable[[StepRecord], bool | None] | None = None,
    batched: bool = True,
) -> list[FitResult]:
    """Self-validation's two phases (``dipcore.selfvalidation``): ``problems`` fitted on their kept pixels until
    their held-out rules stop them, then fresh ones from ``build`` (same seeds) fitted on every pixel, fit i's
    image kept at the count its first phase found. A callback's stop in the first phase ends there (its results:
    no image was chosen). Each result's ``es_fired_at`` is where its first phase stopped (None: it ran its whole
    search) and ``iterations_run`` counts both phases."""
    fits = [hold_out(q, s) for q, s in zip(problems, seeds, strict=True)]
    search = search_settings(settings, fits)
    found = run_fits(problems, search, seeds=seeds, callback=_in_phase(callback, "search"), batched=batched)
    if any(r.stop_reason == "callback" for r in found):
        return found
    counts = [r.es_iteration or r.iterations_run for r in found]
    watches = "average" if p.output == "average" and settings.ema else "output"
    refit = refit_settings(settings, counts, watches=watches)
    final = run_fits(build(), refit, seeds=seeds, callback=_in_phase(callback, "refit"), batched=batched)
    return [
        dataclasses.replace(r, es_fired_at=f.es_fired_at, iterations_run=f.iterations_run + r.iterations_run)
        for r, f in zip(final, found, strict=True)
    ]


def _in_phase(
    callback: Callable[[StepRecord], bool | None] | None, phase: str
) -> Callable[[StepRecord], bool | None] | None:
    """``callback`` seeing each record labelled with its phase (a progress bar that starts again says why)."""
    if callback is None:
        return None
    return lambda rec: callback(dataclasses.replace(rec, phase=phase))


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


def _collect(
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
