"""The level of additive white Gaussian noise in an image, estimated from the image alone.

Donoho and Johnstone's robust estimate ("Ideal spatial adaptation by wavelet shrinkage", Biometrika 1994): the
finest diagonal detail of an orthonormal Haar transform, HH = (a − b − c + d) / 2 over each 2×2 block, holds little
of a natural image and all of the noise, with the noise's own variance σ² (the four weights ±1/2 have unit norm).
The median of |HH| ignores the few large coefficients edges leave there, and divided by Φ⁻¹(3/4) ≈ 0.6745 it is σ
for Gaussian noise. A rule that needs σ (a discrepancy principle, SURE) gets it here when no one says it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError
from .imageio import to_float_image

__all__ = ["estimate_sigma"]

_MAD_TO_SIGMA = 0.6744897501960817  # Φ⁻¹(3/4): the median of |N(0, 1)|


def estimate_sigma(image: Any) -> float:
    """σ̂ = median |HH| / 0.6745 of an image (anything ``to_float_image`` takes), in the image's units ([0, 1]: ×255
    for the usual 0–255 σ); one estimate over all channels, the noise being taken as alike in each.

    Its relative standard deviation on pure Gaussian noise is about 1.17 / √n for n = H·W·C / 4 coefficients (the
    median's asymptotic variance): 2 % on a 64×64 colour image. Texture finer than two pixels (Baboon's fur) adds
    to the estimate; clipping to [0, 1] takes a little from it.

    >>> rng = np.random.default_rng(0)
    >>> round(estimate_sigma(np.clip(0.5 + rng.normal(0, 25 / 255, (128, 128, 3)), 0, 1)) * 255)
    25
    """
    x = to_float_image(image).astype(np.float64)  # H×W×C
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    if h == 0 or w == 0:
        raise ConfigError(f"the noise level needs at least 2×2 pixels, got {x.shape[1]}×{x.shape[0]}")
    a, b = x[0:h:2, 0:w:2], x[0:h:2, 1:w:2]
    c, d = x[1:h:2, 0:w:2], x[1:h:2, 1:w:2]
    hh = (a - b - c + d) / 2.0  # (H/2, W/2, C)
    return float(np.median(np.abs(hh))) / _MAD_TO_SIGMA
