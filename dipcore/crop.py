"""Centred windows, the one definition of a centre crop in dipflow: of a numpy image (H×W or H×W×C) or a tensor
(…, H, W) — dipcore's two layouts — to a size or to multiples of a number, and the box of an image inside a larger
canvas (where ``dipcore.api`` puts the image in the net's canvas, and where the nets crop their branches).

An odd surplus leaves its extra row at the bottom and its extra column at the right, as the paper's code crops.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

from .errors import ConfigError

__all__ = ["center_box", "center_crop", "center_crop_to_multiple"]

_Image = TypeVar("_Image", np.ndarray, torch.Tensor)


def center_box(height: int, width: int, inner_height: int, inner_width: int) -> tuple[int, int, int, int]:
    """``(top, left, inner_height, inner_width)``: the centred ``inner_height × inner_width`` window of an
    ``height × width`` image.

    >>> center_box(70, 33, 64, 32)
    (3, 0, 64, 32)
    """
    return (height - inner_height) // 2, (width - inner_width) // 2, inner_height, inner_width


def center_crop(x: _Image, height: int, width: int) -> _Image:
    """The centred ``height × width`` window of ``x`` (a view): a numpy image H×W or H×W×C, or a tensor (…, H, W).

    >>> center_crop(np.zeros((70, 33, 3)), 64, 32).shape
    (64, 32, 3)
    >>> center_crop(torch.zeros(1, 3, 70, 33), 64, 32).shape
    torch.Size([1, 3, 64, 32])
    """
    if isinstance(x, torch.Tensor):
        top, left, h, w = center_box(x.shape[-2], x.shape[-1], height, width)
        return x[..., top : top + h, left : left + w]
    top, left, h, w = center_box(x.shape[0], x.shape[1], height, width)
    return x[top : top + h, left : left + w]


def center_crop_to_multiple(image: Any, m: int) -> Any:
    """Centre-crop height and width down to multiples of ``m`` (as the paper's code does before running the net):
    a numpy image (anything ``np.asarray`` takes) H×W or H×W×C, or a tensor (…, H, W).

    >>> center_crop_to_multiple(np.zeros((70, 33, 3)), 32).shape
    (64, 32, 3)
    """
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ConfigError(f"the crop multiple must be a positive integer, not {m!r}")
    x = image if isinstance(image, torch.Tensor) else np.asarray(image)
    h, w = (x.shape[-2], x.shape[-1]) if isinstance(x, torch.Tensor) else x.shape[:2]
    if h < m or w < m:
        raise ConfigError(f"an image of {h}×{w} pixels is smaller than the crop multiple {m}")
    return center_crop(x, h - h % m, w - w % m)
