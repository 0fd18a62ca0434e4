"""The public entry points: ``restore`` one observation with the Deep Image Prior, ``restore_batch`` several as one
batch (of one shape, or of different shapes on a shared canvas); below them, for benchmarks, the parts of a fit:
``build_problem`` and ``run_fits``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from .restoration import Restoration, RunOutput, StoppingChoice, collect
from .selfvalidation import hold_out, refit_settings, search_settings
from .stopping import VarianceStopping
from .task_defs import get_task
from .tasks import preset_for

__all__ = ["Restoration", "RunOutput", "StoppingChoice", "build_problem", "restore", "restore_batch", "run_fits"]


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

    z = _input_code(p, obs, (h, w), (hc, wc), gen)

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


def _input_code(
    p: TaskPreset, obs: Observation, size: tuple[int, int], canvas: tuple[int, int], gen: torch.Generator
) -> Tensor:
    """The code z of one fit on the CPU (1, input_depth, ·, ·), drawn from ``gen``: noise, a meshgrid or the guide
    image on the canvas, or noise of the net's own code size (the deep decoder's)."""
    (h, w), (hc, wc) = size, canvas
    code = nets.code_size(p.net, hc, wc, **p.net_options)  # a code of its own size (the deep decoder's) is noise
    if code is not None:
        return noise_code(p.input_depth, *code, generator=gen, scale=p.input_scale)
    if p.input == "noise":
        return noise_code(p.input_depth, hc, wc, generator=gen, scale=p.input_scale)
    if p.input == "meshgrid":
        if p.input_depth != 2:
            raise ConfigError(f"a meshgrid input has 2 channels, not input_depth={p.input_depth}")
        return meshgrid_code(hc, wc)
    if p.input != "guide":
        raise ConfigError(f"unknown input {p.input!r}")
    if obs.guide is None:
        raise ConfigError(f"task {p.task!r} takes its input from a guide image (the flash image): pass guide=")
    if obs.guide.shape[:2] != (h, w):
        raise ConfigError(f"guide is {obs.guide.shape[1]}×{obs.guide.shape[0]}, the image is {w}×{h}")
    z = _pad_to(_as_tensor(obs.guide, torch.device("cpu")), hc, wc)
    if z.shape[1] != p.input_depth:
        raise ConfigError(f"the guide has {z.shape[1]} channels but input_depth={p.input_depth}")
    return z


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
    preset: str | TaskPreset = "paper",
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
    The task's published preset is used (``preset="fast"`` for a narrow, short run, or a ``TaskPreset`` resolved
    already, e.g. by ``preset_for``, run as it is); ``overrides`` change any of
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
    p = _preset(task, observation, scale, variant, preset, iterations, early_stopping, overrides)
    obs, ref = _prepare(p, observation, mask=mask, guide=guide, reference=reference)
    fits = [(obs, ref, seed + r) for r in range(p.restarts)]  # the restarts, averaged into one Restoration
    how = _How(device, engine, psnr_protocol, canvas, callback, features_weights=features_weights, operator=operator)
    return _restore(p, fits, how, started=started, batch=False)[0]


def restore_batch(
    observations: list[Any],
    *,
    task: str,
    references: list[Any] | None = None,
    seeds: list[int] | None = None,
    scale: int | None = None,
    variant: str | None = None,
    preset: str | TaskPreset = "paper",
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
    p = _preset(task, observations[0], scale, variant, preset, iterations, early_stopping, overrides)
    if p.restarts != 1:
        raise ConfigError("restore_batch runs one fit per image: use restarts=1")
    prepared = [_prepare(p, o, reference=r) for o, r in zip(observations, references, strict=True)]
    fits = [(obs, ref, s) for (obs, ref), s in zip(prepared, seeds, strict=True)]
    how = _How(device, engine, psnr_protocol, canvas, callback, max_canvas_waste=max_canvas_waste)
    return _restore(p, fits, how, started=started, batch=True)


@dataclass(frozen=True)
class _How:
    """How ``restore`` or ``restore_batch`` was asked to run its fits, as the caller gave it."""

    device: str | torch.device | None
    engine: EngineOptions | None
    psnr_protocol: PsnrProtocol | Mapping[str, Any] | None
    canvas: str | tuple[int, int] | None
    callback: Callable[[StepRecord], bool | None] | None
    max_canvas_waste: float | None = None
    features_weights: str | Path | None = None
    operator: nn.Module | None = None


def _preset(task: str, first: Any, scale: int | None, variant, preset, iterations, early_stopping, overrides):
    """The preset a call runs; an Observation of a scaled task (SR) brings its scale where the call gives none.
    A ``TaskPreset`` given (a planner's, resolved once) runs as it is: the settings it holds cannot be given again."""
    if isinstance(preset, TaskPreset):
        given = {"variant": variant, "scale": scale, "iterations": iterations, "early_stopping": early_stopping}
        given = [k for k, v in given.items() if v is not None] + sorted(overrides)
        if preset.task != task or given:
            raise ConfigError(
                f"a resolved preset (of task {preset.task!r}) runs as it is: give task={preset.task!r} and none of "
                f"{', '.join(given) or 'its settings'} (dipcore.apply_overrides changes a preset)"
            )
        return preset
    if isinstance(first, Observation):
        scale = scale or (first.scale if get_task(task).scaled else None)
    return preset_for(
        task,
        variant=variant,
        scale=scale,
        preset=preset,
        iterations=iterations,
        early_stopping=early_stopping,
        **overrides,
    )


def _restore(
    p: TaskPreset, fits: list[tuple[Observation, np.ndarray | None, int]], how: _How, *, started: float, batch: bool
) -> list[Restoration]:
    """The one path of ``restore`` and ``restore_batch``: canvases, problems, engine, memory plan, the fits, and their
    Restorations. ``fits``: (observation, reference, seed) each. ``batch``: ``restore_batch``'s fits, one
    Restoration each, stacked where the engine stacks; else ``restore``'s restarts of one observation, averaged
    into one, batched as ``engine.batch_restarts`` says."""
    dev = torch.device(how.device) if how.device is not None else default_device()
    protocol = None
    for _, ref, _ in fits:
        protocol = _protocol(how.psnr_protocol, ref) or protocol
    device_defaults = (how.engine or EngineOptions()).resolved(dev)  # batch mode and compile depend on the device
    stacked = batch and device_defaults.batch_mode == "stack"
    if stacked and len({obs.image.shape[2] for obs, _, _ in fits}) > 1:
        raise ConfigError("stacked fits need observations of one channel count (grey and colour apart)")
    own = [own_canvas(p, obs.image.shape) for obs, _, _ in fits]
    choice = _canvas_choice(how.canvas, device_defaults.compile, "shared" if batch else "own")
    canvases = fit_canvases(p, own, choice, stacked=stacked, max_waste=how.max_canvas_waste)

    def build() -> list[FitProblem]:
        return [
            build_problem(
                p,
                obs,
                device=dev,
                seed=s,
                reference=ref,
                features_weights=how.features_weights,
                operator=how.operator,
                canvas=c,
            )
            for (obs, ref, s), c in zip(fits, canvases, strict=True)
        ]

    problems = build()
    work = max(_work(q) for q in problems)
    engine = (how.engine or EngineOptions()).resolved(dev, work=work, bf16_ok=get_task(p.task).bf16_default)
    batched = batch or engine.batch_restarts
    at_once = _at_once(engine, len(fits)) if batched else 1
    engine = _plan_memory(engine, p, [obs for obs, _, _ in fits], canvases, own, dev, fits=at_once)
    seeds = [s for _, _, s in fits]
    settings = _settings(p, engine, protocol)
    runs = _fit_preset(problems, build, p, settings, seeds=seeds, callback=how.callback, batched=batched)
    groups = [[i] for i in range(len(fits))] if batch else [list(range(len(fits)))]
    return [
        collect(
            [runs[i] for i in g],
            p,
            seeds[g[0]],
            dev,
            started,
            protocol=protocol,
            engine=engine,
            canvas=(canvases[g[0]], own[g[0]]),
        )
        for g in groups
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
    engine: EngineOptions,
    p: TaskPreset,
    observations: list[Observation],
    canvases: list[tuple[int, int] | None],
    own: list[tuple[int, int]],
    dev: torch.device,
    *,
    fits: int,
) -> EngineOptions:
    """``engine`` with activation checkpointing decided for ``fits`` fits at once, on the images' output size, or
    on the largest canvas (the shared one, when stacked) when they differ or run on a larger canvas than their own;
    OutOfMemoryError when they cannot fit."""
    outputs = [get_task(p.task).output_shape(obs.image.shape, p.scale) for obs in observations]
    if len({o[:2] for o in outputs}) == 1 and all(c is None for c in canvases):
        height, width = outputs[0][:2]
    else:
        height, width = shared_canvas([c or o for c, o in zip(canvases, own, strict=True)])
    channels = max(o[2] for o in outputs)
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
