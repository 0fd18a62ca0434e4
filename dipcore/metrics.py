"""Image quality metrics: PSNR (RGB or BT.601 luminance, border shave, centre crop) and SSIM (Wang et al. 2004).

Inputs are numpy arrays ``H×W×C`` or ``H×W`` with values in ``[0, data_range]``; everything is computed in float64.
The super-resolution protocol of the Deep Image Prior paper's evaluation is
``psnr(out, ref, y_channel=True, crop="center32", shave=4)``: centre crop to a multiple of 32, shave 4 pixels
from every border, then PSNR on the Y channel (range 16–235, peak 255).

`PsnrProtocol` names such a protocol once; `psnr_stacked` measures it on the fit's device (torch, float32) for the
per-iteration curves of ``dipcore.fit``, so that a curve and a final ``psnr`` of the same output agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .crop import center_crop_to_multiple
from .errors import ConfigError

__all__ = ["PsnrProtocol", "check_protocol", "psnr", "psnr_stacked", "rgb_to_y", "ssim"]

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])  # ITU-R BT.601 for R, G, B in [0, 1]; they sum to 219
_WIN, _SIGMA = 11, 1.5  # Wang et al. 2004; skimage's radius int(3.5 * 1.5 + 0.5) = 5 gives the same 11 taps
_GAUSS = np.exp(-0.5 * ((np.arange(_WIN) - _WIN // 2) / _SIGMA) ** 2)
_GAUSS /= _GAUSS.sum()


def rgb_to_y(image: Any) -> np.ndarray:
    """Luminance Y of YCbCr (ITU-R BT.601, "studio" range 16–235), as MATLAB's ``rgb2ycbcr`` on ``[0, 1]`` input.

    .. math::

        Y = 16 + 65.481 R + 128.553 G + 24.966 B \\qquad (R, G, B \\in [0, 1])

    A grey image (C = 1) is first repeated to RGB, so it gives ``16 + 219 g``: the value the usual SR evaluation
    gets for a grey image (Set14's bridge) stored as RGB.

    :param numpy.ndarray image: ``H×W×3``, ``H×W×1`` or ``H×W`` with values in ``[0, 1]``.
    :return: float64 ``H×W`` array in ``[16, 235]`` (units of 1/255).

    >>> rgb_to_y(np.ones((1, 1, 3))).item(), rgb_to_y(np.zeros((1, 1))).item()
    (235.0, 16.0)
    """
    x = _as_hwc(image, "image")
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    if x.shape[2] != 3:
        raise ConfigError(f"rgb_to_y needs 1 or 3 channels, got shape {np.shape(image)}")
    return 16.0 + x @ _Y_WEIGHTS


def psnr(
    a: Any, b: Any, *, y_channel: bool = False, shave: int = 0, crop: int | str | None = None, data_range: float = 1.0
) -> float:
    """Peak signal-to-noise ratio in dB, one MSE over all pixels and channels.

    .. math::

        \\mathrm{PSNR} = 10 \\log_{10} \\frac{P^2}{\\operatorname{mean}((a - b)^2)}

    with ``P = data_range``, or on the Y channel (:func:`rgb_to_y` of ``a / data_range``) with ``P = 255``.
    Order of operations: centre crop, shave, then Y conversion (pointwise, so the order of the last two is free).

    :param numpy.ndarray a: ``H×W×C`` or ``H×W`` image in ``[0, data_range]``.
    :param numpy.ndarray b: an image of the same shape.
    :param bool y_channel: compare BT.601 luminance instead of all channels (grey images: see :func:`rgb_to_y`).
    :param int shave: pixels removed from every border.
    :param crop: ``None``, ``"center32"`` (any ``"center<m>"``) or an int ``m``: centre crop to multiples of ``m``.
    :param float data_range: the value of white in ``a`` and ``b``.
    :return: PSNR in dB; ``inf`` for identical images.

    >>> round(psnr(np.full((4, 4), 0.5), np.full((4, 4), 0.51)), 6)
    40.0
    """
    x, y, peak = _prepare(a, b, y_channel=y_channel, shave=shave, crop=crop, data_range=data_range)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def ssim(
    a: Any, b: Any, *, y_channel: bool = False, shave: int = 0, crop: int | str | None = None, data_range: float = 1.0
) -> float:
    """Structural similarity (Wang et al. 2004), mean over pixels and then over channels.

    .. math::

        \\mathrm{SSIM} = \\frac{(2 \\mu_a \\mu_b + C_1)(2 \\sigma_{ab} + C_2)}
                             {(\\mu_a^2 + \\mu_b^2 + C_1)(\\sigma_a^2 + \\sigma_b^2 + C_2)},
        \\quad C_1 = (0.01 P)^2, \\ C_2 = (0.03 P)^2

    Local statistics use an 11×11 Gaussian window (σ = 1.5) and only positions where the window fits ('valid'),
    matching ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``. ``y_channel``, ``shave``, ``crop`` and ``data_range`` are as in :func:`psnr`.

    >>> ssim(np.full((16, 16), 0.3), np.full((16, 16), 0.3))
    1.0
    """
    x, y, peak = _prepare(a, b, y_channel=y_channel, shave=shave, crop=crop, data_range=data_range)
    if min(x.shape[:2]) < _WIN:
        raise ConfigError(f"SSIM needs at least {_WIN}×{_WIN} pixels after crop and shave, got {x.shape[:2]}")
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    scores = []
    for ch in range(x.shape[2]):
        xc, yc = x[:, :, ch], y[:, :, ch]
        mx, my, mxx, myy, mxy = _gauss_valid(np.stack([xc, yc, xc * xc, yc * yc, xc * yc]))  # (5, H-10, W-10)
        vx, vy, vxy = mxx - mx * mx, myy - my * my, mxy - mx * my
        s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        scores.append(float(s.mean()))
    return float(np.mean(scores))


@dataclass(frozen=True)
class PsnrProtocol:
    """How a PSNR is measured: :func:`psnr`'s keywords (``data_range`` aside: restorations are in ``[0, 1]``).

    >>> PsnrProtocol.of({"y_channel": True, "shave": 4}).kwargs()
    {'y_channel': True, 'shave': 4, 'crop': None}
    """

    y_channel: bool = False
    shave: int = 0
    crop: int | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.y_channel, (bool, np.bool_)):
            raise ConfigError(f"y_channel must be True or False, not {self.y_channel!r}")
        if isinstance(self.shave, bool) or not isinstance(self.shave, (int, np.integer)) or self.shave < 0:
            raise ConfigError(f"shave must be a non-negative integer, not {self.shave!r}")
        _crop_multiple(self.crop)

    @classmethod
    def of(cls, value: PsnrProtocol | Mapping[str, Any] | None) -> PsnrProtocol:
        """A protocol from itself, a dict of :func:`psnr`'s keywords, or None (all channels, no shave, no crop)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping) or set(value) - {"y_channel", "shave", "crop"}:
            raise ConfigError(f"a PSNR protocol takes y_channel, shave and crop, not {value!r}")
        return cls(**value)

    def kwargs(self) -> dict[str, Any]:
        """The keywords of :func:`psnr` and :func:`ssim`."""
        return asdict(self)


def psnr_stacked(x: Tensor, ref: Tensor, k: int = 1, protocol: PsnrProtocol | None = None) -> Tensor:
    """PSNR of each of ``k`` images stacked along channels, on their device: (1, K·C, H, W) twice -> (K,).

    The same crop, shave and Y conversion as :func:`psnr` (default: all channels, no shave, no crop), in float32.
    """
    protocol = protocol or PsnrProtocol()
    _, kc, h, w = x.shape
    a, b = (t.float().reshape(k, kc // k, h, w) for t in (x, ref))  # (K, C, H, W)
    m = _crop_multiple(protocol.crop)
    if m is not None:
        a, b = (center_crop_to_multiple(t, m) for t in (a, b))
    s = protocol.shave
    if s:
        a, b = (t[..., s:-s, s:-s] for t in (a, b))
    diff, peak = a - b, 1.0  # (K, C, h, w)
    if protocol.y_channel:  # Y is affine in RGB, so the Y difference is the weighted RGB difference
        wr, wg, wb = (float(v) for v in _Y_WEIGHTS)  # Python floats: no host-to-device copy per call
        diff = diff * (wr + wg + wb) if diff.shape[1] == 1 else wr * diff[:, 0] + wg * diff[:, 1] + wb * diff[:, 2]
        peak = 255.0
    mse = diff.pow(2).reshape(k, -1).mean(1).clamp_min(1e-12)  # (K,)
    return 10.0 * torch.log10(peak**2 / mse)


def check_protocol(protocol: PsnrProtocol, height: int, width: int, channels: int) -> None:
    """Raise ConfigError when ``protocol`` cannot measure an ``height×width×channels`` image."""
    if protocol.y_channel and channels not in (1, 3):
        raise ConfigError(f"a Y-channel PSNR needs 1 or 3 channels, the output has {channels}")
    m = _crop_multiple(protocol.crop)
    h, w = (height - height % m, width - width % m) if m else (height, width)
    if min(h, w) - 2 * protocol.shave <= 0:
        raise ConfigError(f"the PSNR protocol {protocol.kwargs()} leaves nothing of a {height}×{width} image")


# ---------------------------------------------------------------------------------------------------------------


def _gauss_valid(maps: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of (N, H, W) maps, 'valid' positions only: (N, H - 10, W - 10)."""
    rows = np.lib.stride_tricks.sliding_window_view(maps, _WIN, axis=2) @ _GAUSS  # (N, H, W - 10)
    return np.lib.stride_tricks.sliding_window_view(rows, _WIN, axis=1) @ _GAUSS  # (N, H - 10, W - 10)


def _as_hwc(image: Any, what: str) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ConfigError(f"{what} must be H×W or H×W×C, got shape {np.shape(image)}")
    return x


def _crop_multiple(crop: int | str | None) -> int | None:
    if crop is None:
        return None
    if isinstance(crop, str) and crop.startswith("center") and crop[6:].isdigit():
        return int(crop[6:])
    if isinstance(crop, (int, np.integer)) and not isinstance(crop, bool) and crop >= 1:
        return int(crop)
    raise ConfigError(f"crop must be None, 'center32' (any 'center<m>') or a positive int, not {crop!r}")


def _prepare(
    a: Any, b: Any, *, y_channel: bool, shave: int, crop: int | str | None, data_range: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Check shapes, crop, shave, scale; return float64 (H, W, C) arrays and the peak value."""
    x, y = _as_hwc(a, "a"), _as_hwc(b, "b")
    if x.shape != y.shape:
        raise ConfigError(f"images must have the same shape, got {np.shape(a)} and {np.shape(b)}")
    if not data_range > 0:
        raise ConfigError(f"data_range must be positive, not {data_range!r}")
    m = _crop_multiple(crop)
    if m is not None:
        x, y = center_crop_to_multiple(x, m), center_crop_to_multiple(y, m)
    if isinstance(shave, bool) or not isinstance(shave, (int, np.integer)) or shave < 0:
        raise ConfigError(f"shave must be a non-negative integer, not {shave!r}")
    h, w = x.shape[:2]
    if 2 * shave >= min(h, w):
        raise ConfigError(f"shave={shave} leaves nothing of a {h}×{w} image")
    if shave:
        x, y = x[shave:-shave, shave:-shave], y[shave:-shave, shave:-shave]
    if y_channel:
        return rgb_to_y(x / data_range)[:, :, None], rgb_to_y(y / data_range)[:, :, None], 255.0
    return x, y, float(data_range)
