"""Each task of the paper defined once: its observation model, its output's size, how its observation is synthesised
for evaluation, how it is scored, and whether its fits batch.

The task strings of ``restore(…, task="sr")`` are a facade over these objects, as deepinv's task names are over its
physics classes: code that depends on the task reads its ``Task`` (``get_task(name)``) instead of comparing names. A
caller may also pass an operator of their own (``restore(…, operator=A)``). The hyper-parameters of each task are
not here: they are the presets of ``tasks.py``.

>>> t = get_task("sr")
>>> t.output_shape((64, 48, 3), scale=4), t.psnr_protocol(scale=4)
((256, 192, 3), PsnrProtocol(y_channel=True, shave=4, crop=None))
>>> get_task("preimage").output_shape((224, 224, 1)), get_task("preimage").batch_refusal is not None
((224, 224, 3), True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .errors import ConfigError
from .metrics import PsnrProtocol
from .observation import (
    Observation,
    bernoulli_mask,
    binary_mask,
    compress_jpeg,
    downscale,
    region_mask,
    text_mask,
    upscale_bicubic,
)
from .operators import Features, Identity, LanczosDown, Mask, Operator, alexnet

if TYPE_CHECKING:
    from .preset import TaskPreset

__all__ = ["TASK_DEFS", "Task", "get_task"]

# (preset, observation, *, features_weights) -> the operator A on the CPU (build_problem moves it to the device).
OperatorBuilder = Callable[..., Operator]
# (task name, clean image, meta, *, seed, **the degrade() keywords of `degrade_args`) -> the synthesised observation.
Synthesiser = Callable[..., Observation]


@dataclass(frozen=True)
class Task:
    """What one task is, beyond its hyper-parameters: everything ``restore``, ``degrade`` and the evaluation decide by
    task. Each fit solves ``min_θ ‖A(f_θ(z)) − target‖²`` with ``A = operator(preset, observation)``."""

    name: str  # the public string: restore(task=name)
    operator: OperatorBuilder  # builds A from the preset and the observation (its mask, the preset's scale or layer)
    synthesise: Synthesiser  # degrade()'s protocol: the observation made from a clean image (or a ConfigError)
    degrade_args: tuple[str, ...] = ()  # the degrade() keywords the synthesis reads: what an evaluation may vary
    scaled: bool = False  # the observation is the output downscaled by the preset's `scale` (SR)
    output_channels: int | None = None  # fixed channels of the output (the pre-image is RGB); None: the observation's
    # What A(f_θ(z)) is matched to: the observation y itself, or A(y) when y is an image in the output's space whose
    # A is what is known (the masked image: its holes are zeroed; the pre-image: the features of the image).
    target: Literal["y", "A(y)"] = "y"
    side_inputs: tuple[str, ...] = ()  # Observation fields a restoration needs beside the image ("mask", "guide")
    psnr_on_y: bool = False  # SR's protocol (the literature's): PSNR on Y (BT.601), `scale` border pixels shaved
    baseline: Literal["input", "bicubic"] = "input"  # the naive estimate scored beside DIP
    batch_refusal: str | None = None  # why restore_batch cannot stack its fits (None: they stack)
    # Whether bf16 may be this task's default where the CPU has native bf16 units: only where its measured mean cost
    # in PSNR is ≤ 0.1 dB on whole study sets (benchmarks/RESULTS.md, "Its price in PSNR": denoising and SR within it;
    # inpainting over it stays fp32; the other tasks are unmeasured, so fp32).
    bf16_default: bool = False

    def output_shape(self, observed: tuple[int, ...], scale: int = 1) -> tuple[int, int, int]:
        """(H, W, C) of the restored image for an observation of shape ``observed`` (H×W×C)."""
        h, w, c = observed
        f = scale if self.scaled else 1
        return h * f, w * f, self.output_channels or c

    def observed_size(self, height: int, width: int, scale: int = 1) -> tuple[int, int]:
        """(h, w) of the observation ``degrade`` makes from a clean ``height × width`` image (LANCZOS keeps
        ⌊n / scale⌋)."""
        f = scale if self.scaled else 1
        return height // f, width // f

    def psnr_protocol(self, scale: int = 1) -> PsnrProtocol:
        """How the task is scored by default: SR on Y with ``scale`` pixels shaved, everything else on all channels."""
        return PsnrProtocol(y_channel=True, shave=scale) if self.psnr_on_y else PsnrProtocol()

    def naive(self, observed: np.ndarray, scale: int = 1) -> tuple[str, np.ndarray]:
        """(name, image) of the naive estimate set beside DIP: the LR image upsampled bicubically, or the input."""
        if self.baseline == "bicubic":
            return "bicubic", upscale_bicubic(observed, scale)
        return "input", observed


# ---------------------------------------------------------------------------------------------------- operators


def _identity(p: TaskPreset, obs: Observation, *, features_weights: str | Path | None = None) -> Operator:
    return Identity()


def _lanczos(p: TaskPreset, obs: Observation, *, features_weights: str | Path | None = None) -> Operator:
    return LanczosDown(p.scale)


def _mask(p: TaskPreset, obs: Observation, *, features_weights: str | Path | None = None) -> Operator:
    if obs.mask is None:
        raise ConfigError("inpainting needs a mask (1 = known pixel): pass mask= or degrade(..., task='inpaint')")
    h, w = obs.image.shape[:2]
    if obs.mask.shape != (h, w):
        raise ConfigError(f"mask is {obs.mask.shape[1]}×{obs.mask.shape[0]}, the image is {w}×{h}")
    return Mask(torch.from_numpy(np.ascontiguousarray(obs.mask, dtype=np.float32)))


def _features(p: TaskPreset, obs: Observation, *, features_weights: str | Path | None = None) -> Operator:
    # Without weights, a classifier drawn from its own seed: the same on every call, whatever the fit's seed.
    classifier = alexnet(features_weights, generator=torch.Generator().manual_seed(0))
    return Features(classifier, p.layer or "fc6")


# ------------------------------------------------------------------------------------------------- synthesis


def _add_noise(task: str, x: np.ndarray, meta: dict[str, Any], *, seed: int, sigma: float) -> Observation:
    """x0 = clip(x + N(0, σ/255)), σ in 0–255 units (25 in the paper's table)."""
    rng = np.random.default_rng(seed)
    noisy = np.clip(x + rng.normal(0.0, sigma / 255.0, x.shape).astype(np.float32), 0.0, 1.0)
    return Observation(noisy, task, meta={**meta, "sigma": sigma})


def _compress(task: str, x: np.ndarray, meta: dict[str, Any], *, seed: int, quality: int) -> Observation:
    return Observation(compress_jpeg(x, quality=quality), task, meta={**meta, "quality": quality})


def _downscale(task: str, x: np.ndarray, meta: dict[str, Any], *, seed: int, scale: int) -> Observation:
    """LR = Pillow LANCZOS by ``scale``, after trimming the clean image to a multiple of it."""
    h, w = x.shape[:2]
    if h % scale or w % scale:
        x = x[: h - h % scale, : w - w % scale]
        meta["clean_shape"] = [*x.shape]
    return Observation(downscale(x, scale), task, scale=scale, meta={**meta, "scale": scale})


def _drop_pixels(
    task: str,
    x: np.ndarray,
    meta: dict[str, Any],
    *,
    seed: int,
    drop: float,
    mask: np.ndarray | None,
    variant: str | None,
) -> Observation:
    """A Bernoulli mask (Table 1), text over the image, a central hole, or the given mask."""
    h, w = x.shape[:2]
    variant = variant or "random"
    if mask is not None:
        m = binary_mask(mask)
    elif variant == "random":
        m = bernoulli_mask(h, w, drop=drop, seed=seed)
    elif variant == "text":
        m = text_mask(h, w, seed=seed)
    elif variant in ("large", "region"):
        m = region_mask(h, w, (h // 4, w // 4, h // 2, w // 2))
    else:
        raise ConfigError(f"unknown inpainting variant {variant!r}")
    if m.shape != (h, w):
        raise ConfigError(f"mask is {m.shape[1]}×{m.shape[0]} but the image is {w}×{h}")
    return Observation(x * m[..., None], task, mask=m, meta={**meta, "variant": variant, "drop": drop})


def _as_is(task: str, x: np.ndarray, meta: dict[str, Any], *, seed: int) -> Observation:
    return Observation(x, task, meta=meta)


def _none(reason: str) -> Synthesiser:
    """The synthesis of a task that has none: a ConfigError saying what to do instead."""

    def refuse(task: str, x: np.ndarray, meta: dict[str, Any], *, seed: int) -> Observation:
        raise ConfigError(reason)

    return refuse


# -------------------------------------------------------------------------------------------------- registry

TASK_DEFS: Mapping[str, Task] = {
    t.name: t
    for t in (
        Task("denoise", _identity, _add_noise, degrade_args=("sigma",), bf16_default=True),
        Task("jpeg", _identity, _compress, degrade_args=("quality",)),  # blind: the quality is not given to the fit
        Task(
            "sr",
            _lanczos,
            _downscale,
            degrade_args=("scale",),
            scaled=True,
            psnr_on_y=True,
            baseline="bicubic",
            bf16_default=True,
        ),
        Task(
            "inpaint",
            _mask,
            _drop_pixels,
            degrade_args=("drop", "mask", "variant"),
            target="A(y)",
            side_inputs=("mask",),
        ),
        # The flash image is the fit's input code (the preset's input="guide"), the no-flash image its target.
        Task(
            "flash_noflash",
            _identity,
            _none("flash/no-flash has no synthetic degradation: give the flash image as guide= to restore"),
            side_inputs=("guide",),
        ),
        Task(
            "preimage",
            _features,
            _as_is,
            output_channels=3,  # the classifier sees RGB, whatever the image given
            target="A(y)",
            batch_refusal="the pre-image task cannot be batched (its classifier is not per-fit)",
        ),
        Task("reconstruct", _identity, _as_is),  # Figure 2: a plain fit of f_θ(z) to an image
    )
}
"""The task strings of the public API, in the paper's order, and their definitions."""


def get_task(name: str) -> Task:
    """The definition of task ``name``; ConfigError for a name that is not one of ``TASK_DEFS``."""
    try:
        return TASK_DEFS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASK_DEFS)}") from None
