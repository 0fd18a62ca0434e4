"""What was observed (``Observation``) and the primitives that degrade a clean image into one: LANCZOS resizing,
masks, JPEG. Which of them a task uses, and with which keywords, is that task's definition (``Task.synthesise`` in
``task_defs.py``); ``degrade.py`` runs it."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .errors import ConfigError
from .imageio import to_float_image

__all__ = [
    "Observation",
    "bernoulli_mask",
    "binary_mask",
    "compress_jpeg",
    "downscale",
    "region_mask",
    "text_mask",
    "upscale_bicubic",
]


@dataclass
class Observation:
    """What was observed: ``image`` (H×W×C float32 in [0, 1]; the low-resolution image for SR), with the task's
    side inputs — ``mask`` (H×W float32, 1 = known pixel) for inpainting, ``guide`` (the flash image) for
    flash/no-flash — and how it was made in ``meta``."""

    image: np.ndarray
    task: str
    mask: np.ndarray | None = None
    scale: int = 1
    guide: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _to_pil(image: np.ndarray) -> Image.Image:
    arr = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def _from_pil(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """LR = Pillow LANCZOS resize by ``factor`` (the paper's protocol; 8-bit like the published code)."""
    h, w = image.shape[:2]
    if h // factor < 1 or w // factor < 1:
        raise ConfigError(f"a {w}×{h} image is too small to downscale ×{factor}")
    return _from_pil(_to_pil(image).resize((w // factor, h // factor), Image.Resampling.LANCZOS))


def upscale_bicubic(image: np.ndarray, factor: int) -> np.ndarray:
    """The bicubic baseline: Pillow BICUBIC upsampling by ``factor``."""
    h, w = image.shape[:2]
    return _from_pil(_to_pil(image).resize((w * factor, h * factor), Image.Resampling.BICUBIC))


def compress_jpeg(image: np.ndarray, *, quality: int) -> np.ndarray:
    """The image after a round trip through 8-bit JPEG at ``quality`` (Pillow), as blind JPEG restoration sees it."""
    buf = io.BytesIO()
    _to_pil(image).save(buf, format="JPEG", quality=quality)
    return _from_pil(Image.open(buf))


MASK_CHANNEL_TOLERANCE = 1 / 16
"""How far an RGB mask's channels may differ at a pixel (a fraction of the range: JPEG's colour noise on a grey mask
stays well within it) and still be one grey."""


def binary_mask(mask: Any) -> np.ndarray:
    """H×W float32 of 0/1 from a mask image or array: white (above one half of the range) = known pixel, black =
    missing.

    What a mask may be: grey at any depth (a 1-bit, 8-bit or 16-bit image; an ``H×W`` or ``H×W×1`` array), or RGB
    whose channels agree (a grey mask saved as colour: within `MASK_CHANNEL_TOLERANCE` at every pixel); an alpha
    channel is ignored. Refused with `ConfigError`: RGB whose channels differ (a coloured drawing: which colour
    would mark the known pixels?), and a mask without any known pixel (all black: nothing to restore from).
    """
    m = to_float_image(mask)
    if m.shape[2] == 3 and float(np.ptp(m, axis=2).max(initial=0.0)) > MASK_CHANNEL_TOLERANCE:
        raise ConfigError(
            "the mask is in colour (its red, green and blue differ): a mask is grey — white marks a known pixel, "
            "black a missing one"
        )
    known = m.mean(axis=2) > 0.5
    if not known.any():
        raise ConfigError(
            "the mask is all black: no pixel is known, so there is nothing to restore from (white marks a known "
            "pixel, black a missing one)"
        )
    return known.astype(np.float32)


def bernoulli_mask(height: int, width: int, *, drop: float, seed: int) -> np.ndarray:
    """1 where a pixel is kept: each pixel is dropped independently with probability ``drop`` (Table 1: 0.5)."""
    if not 0.0 <= drop < 1.0:
        raise ConfigError(f"drop must be in [0, 1), got {drop}")
    rng = np.random.default_rng(seed)
    return (rng.random((height, width)) >= drop).astype(np.float32)


def region_mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """1 everywhere except the rectangle ``box = (top, left, height, width)`` (a large hole)."""
    top, left, bh, bw = box
    mask = np.ones((height, width), np.float32)
    mask[max(top, 0) : top + bh, max(left, 0) : left + bw] = 0.0
    return mask


def text_mask(
    height: int, width: int, *, text: str | None = None, seed: int = 0, size: int | None = None
) -> np.ndarray:
    """1 except under text drawn over the image in rows (the text-inpainting experiment)."""
    from PIL import ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    size = size or max(10, height // 12)
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=size)
    words = (text or "deep image prior restores what the net can draw easily").split()
    y = int(rng.integers(0, size))
    while y < height:
        line = " ".join(rng.permutation(words))
        draw.text((int(rng.integers(-size, size)), y), line, fill=0, font=font)
        y += int(size * 1.6)
    return (np.asarray(canvas) > 127).astype(np.float32)
