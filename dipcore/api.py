"""The public entry point: ``restore`` one observation with the Deep Image Prior."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import nets
from .batched import stack_problems
from .degrade import Observation, binary_mask
from .errors import ConfigError
from .fit import EngineOptions, FitProblem, FitResult, FitSettings, StepRecord, default_device, fit, fit_stacked
from .imageio import to_float_image
from .memory import decide_checkpoint
from .metrics import center_crop_to_multiple
from .operators import Features, Identity, LanczosDown, Mask, Operator, alexnet, meshgrid_code, noise_code
from .stopping import VarianceStopping
from .tasks import TaskPreset, apply_overrides, get_preset

__all__ = ["Restoration", "restore", "restore_batch", "build_problem", "preset_for"]


@dataclass
class Restoration:
    """The result of ``restore``: images are H×W×C float32 arrays in [0, 1] at the task's output size."""

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

    @property
    def best_psnr(self) -> float | None:
        curve = self.history.get("psnr")
        return max(curve) if curve else None

    @property
    def best_iteration(self) -> int | None:
        curve = self.history.get("psnr")
        return int(np.argmax(curve)) + 1 if curve else None


def preset_for(
    task: str, *, variant: str | None = None, scale: int | None = None, preset: str = "paper",
    sigma: float | None = None, **overrides: Any,
) -> TaskPreset:  # fmt: skip
    """The preset of a task with a user's overrides applied (what ``restore`` runs)."""
    return apply_overrides(get_preset(task, variant=variant, scale=scale, preset=preset, sigma=sigma), **overrides)


def _as_tensor(image: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)  # (1, C, H, W)


def _center_crop(arr: np.ndarray | None, multiple: int) -> np.ndarray | None:
    return arr if arr is None or multiple <= 1 else center_crop_to_multiple(arr, multiple)


def _pad_to(x: Tensor, height: int, width: int) -> Tensor:
    """Reflection-pad (1, C, h, w) to (1, C, height, width), centred; replicate where reflection cannot reach."""
    dh, dw = height - x.shape[-2], width - x.shape[-1]
    pad = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
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
) -> FitProblem:
    """Net, code, operator and target of one fit, all drawn from ``seed`` on the CPU (identical on every device)."""
    gen = torch.Generator().manual_seed(seed)
    h, w, c = obs.image.shape
    if p.task == "sr":
        h, w = h * p.scale, w * p.scale
    multiple = nets.required_multiple(p.net, **p.net_options)
    side = nets.min_canvas(p.net, **p.net_options)
    hc, wc = (max(side, math.ceil(n / multiple) * multiple) for n in (h, w))
    crop = ((hc - h) // 2, (wc - w) // 2, h, w)

    out_channels = 3 if p.task == "preimage" else c
    net = nets.get_net(p.net, in_channels=p.input_depth, out_channels=out_channels, **p.net_options)
    nets.reinitialise(net, gen)
    net = net.to(device)

    if p.net == "deep_decoder":
        zh, zw = nets.deep_decoder_input_shape(hc, wc, num_layers=p.net_options.get("num_layers", 5))
        z = noise_code(p.input_depth, zh, zw, generator=gen, scale=p.input_scale)
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

    y = _as_tensor(obs.image, device)
    op: Operator
    if p.task == "sr":
        op = LanczosDown(p.scale)
    elif p.task == "inpaint":
        if obs.mask is None:
            raise ConfigError("inpainting needs a mask (1 = known pixel): pass mask= or degrade(..., task='inpaint')")
        if obs.mask.shape != obs.image.shape[:2]:
            raise ConfigError(f"mask is {obs.mask.shape[1]}×{obs.mask.shape[0]}, the image is {w}×{h}")
        op = Mask(torch.from_numpy(np.ascontiguousarray(obs.mask, dtype=np.float32)))
        y = y * op.mask.to(device)
    elif p.task == "preimage":
        classifier = alexnet(features_weights, generator=torch.Generator().manual_seed(0))
        op = Features(classifier, p.layer or "fc6")
        if c == 1:
            y = y.expand(-1, 3, -1, -1)
        op = op.to(device)
        with torch.no_grad():
            y = op(y)
    else:
        op = Identity()
    ref = None
    if reference is not None:
        ref_arr = to_float_image(reference)
        if ref_arr.shape != (h, w, out_channels):
            raise ConfigError(f"reference is {ref_arr.shape}, the output will be {(h, w, out_channels)}")
        ref = _as_tensor(ref_arr, device)
    return FitProblem(net=net, z=z.to(device), operator=op.to(device), target=y, crop=crop, reference=ref)


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
    early_stopping: bool | None = None,
    callback: Callable[[StepRecord], bool | None] | None = None,
    engine: EngineOptions | None = None,
    features_weights: str | Path | None = None,
    **overrides: Any,
) -> "Restoration":
    """Restore one image with the Deep Image Prior.

    ``observation`` is a ``dipcore.Observation`` (from ``dipcore.degrade``) or a degraded image (array or PIL).
    The task's published preset is used (``preset="fast"`` for a narrow, short run); ``overrides`` change any of
    its settings (``channels=``, ``lr=``, ``reg_noise_std=``, ``input_depth=``, ``net=``, ``ema=``, ``restarts=``,
    ``crop="center"`` for the paper's centre crop, …). ``reference`` (ground truth) only adds PSNR curves.
    Same seed and same device give the same result.
    """
    started = time.perf_counter()
    if isinstance(observation, Observation):
        scale = scale or (observation.scale if task == "sr" else None)
    p = preset_for(task, variant=variant, scale=scale, preset=preset, iterations=iterations,
                   early_stopping=early_stopping, **overrides)  # fmt: skip
    obs, ref = _prepare(p, observation, mask=mask, guide=guide, reference=reference)
    dev = torch.device(device) if device is not None else default_device()
    engine = (engine or EngineOptions()).resolved(dev)
    engine = _plan_memory(engine, p, obs, dev, fits=p.restarts if engine.batch_restarts else 1)
    seeds = [seed + r for r in range(p.restarts)]
    problems = [build_problem(p, obs, device=dev, seed=s, reference=ref, features_weights=features_weights)
                for s in seeds]  # fmt: skip
    runs = _run(problems, seeds, _settings(p, engine), dev, callback, batched=engine.batch_restarts)
    return _collect(runs, p, seed, dev, started)


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
    early_stopping: bool | None = None,
    callback: Callable[[StepRecord], bool | None] | None = None,
    engine: EngineOptions | None = None,
    **overrides: Any,
) -> list[Restoration]:
    """Restore K images of one shape and task as one batched fit (see ``dipcore.batched``): the same results as K
    ``restore`` calls with seeds ``seeds`` (up to float rounding), in much less GPU time for small images."""
    started = time.perf_counter()
    k = len(observations)
    seeds = list(seeds) if seeds is not None else list(range(k))
    references = list(references) if references is not None else [None] * k
    if len(seeds) != k or len(references) != k:
        raise ConfigError(f"{k} observations need {k} seeds and references, got {len(seeds)} and {len(references)}")
    if isinstance(observations[0], Observation):
        scale = scale or (observations[0].scale if task == "sr" else None)
    p = preset_for(task, variant=variant, scale=scale, preset=preset, iterations=iterations,
                   early_stopping=early_stopping, **overrides)  # fmt: skip
    if p.restarts != 1:
        raise ConfigError("restore_batch runs one fit per image: use restarts=1")
    dev = torch.device(device) if device is not None else default_device()
    problems = []
    for observation, reference, s in zip(observations, references, seeds):
        obs, ref = _prepare(p, observation, reference=reference)
        problems.append(build_problem(p, obs, device=dev, seed=s, reference=ref))
    engine = _plan_memory((engine or EngineOptions()).resolved(dev), p, obs, dev, fits=k)
    runs = _run(problems, seeds, _settings(p, engine), dev, callback, batched=True)
    return [_collect([run], p, s, dev, started) for run, s in zip(runs, seeds)]


def _prepare(p: TaskPreset, observation: Any, *, mask: Any = None, guide: Any = None, reference: Any = None):
    """The observation and reference as float arrays, centre-cropped when the preset asks for the paper's crop."""
    if p.iterations < 1:
        raise ConfigError(f"iterations must be ≥ 1, got {p.iterations}")
    obs = _as_observation(observation, p.task, mask, guide, p.scale)
    ref = to_float_image(reference) if reference is not None else None
    if p.crop == "center":
        multiple = nets.required_multiple(p.net, **p.net_options)
        lr_multiple = max(1, multiple // p.scale) if p.task == "sr" else multiple
        obs.image, obs.mask, obs.guide = (_center_crop(a, lr_multiple) for a in (obs.image, obs.mask, obs.guide))
        ref = _center_crop(ref, multiple)
    if ref is not None and ref.shape[2] != obs.image.shape[2] and p.task != "preimage":
        ref = np.repeat(ref, obs.image.shape[2], axis=2) if ref.shape[2] == 1 else ref.mean(2, keepdims=True)
    return obs, ref


def _plan_memory(engine: EngineOptions, p: TaskPreset, obs: Observation, dev: torch.device, *, fits: int):
    """``engine`` with activation checkpointing decided for this job; OutOfMemoryError when it cannot fit."""
    h, w, c = obs.image.shape
    scale = p.scale if p.task == "sr" else 1
    out_channels = 3 if p.task == "preimage" else c
    return decide_checkpoint(engine, p, h * scale, w * scale, out_channels=out_channels, fits=fits, device=dev)


def _settings(p: TaskPreset, engine: EngineOptions) -> FitSettings:
    stopping = (lambda: VarianceStopping(window=p.es_window, patience=p.es_patience)) if p.early_stopping else None
    return FitSettings(
        lr=p.lr, iterations=p.iterations, reg_noise_std=p.reg_noise_std, ema=p.ema, backtrack=p.backtrack,
        stopping=stopping, engine=engine,
    )  # fmt: skip


def _run(problems, seeds, settings, dev, callback, *, batched: bool) -> list[FitResult]:
    """Fit the problems one by one, or as one stacked fit when ``batched`` and there is more than one."""
    generators = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
    if batched and len(problems) > 1:
        return fit_stacked(stack_problems(problems), settings, generators=generators, callback=callback)
    return [fit(prob, settings, generator=g, callback=callback) for prob, g in zip(problems, generators)]


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


def _collect(runs: list[FitResult], p: TaskPreset, seed: int, dev: torch.device, started: float) -> Restoration:
    """One Restoration from the restarts: the returned images are averaged across them (paper: 2 runs)."""
    mean = lambda xs: torch.stack(xs).mean(0)  # noqa: E731
    first = runs[0]
    image = mean([_returned(r, p) for r in runs])
    final = mean([r.final for r in runs])
    average = mean([r.average for r in runs]) if first.average is not None else None
    config = {**p.to_dict(), "seed": seed}
    return Restoration(
        image=_numpy(image), final=_numpy(final), average=_numpy(average),
        iteration=first.iteration, iterations_run=first.iterations_run, stop_reason=first.stop_reason,
        history=first.history, config=config, seconds=time.perf_counter() - started,
        device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        backtracks=sum(r.backtracks for r in runs),
        restarts=[{"seed": seed + i, "iteration": r.iteration, "stop_reason": r.stop_reason} for i, r in enumerate(runs)]
        if len(runs) > 1 else [],
    )  # fmt: skip
