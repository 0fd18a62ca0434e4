"""Classical, non-learned baselines scored beside the Deep Image Prior in evaluation runs (CPU, numpy).

- Denoising: CBM3D from the ``bm3d`` package (BM3D on grey images) when it is installed — the paper's strongest
  baseline (31.42 dB on the 9 colour images). It is an optional extra (``pip install 'dipflow[bm3d]'``) because its
  licence allows non-commercial use only. Without it: non-local means from scikit-image, with the parameters its
  documentation suggests for a known σ (5×5 patches, search distance 6, ``h = 0.8 σ`` in fast mode) — the paper's
  NLM figure is 30.26 dB.
- Inpainting: biharmonic fill of the missing pixels (``skimage.restoration.inpaint_biharmonic``).
- Super-resolution needs none here: bicubic upsampling is the report's ``baseline_name``/``psnr_baseline`` already.

A baseline that fails costs its two columns, never the image: `score_classical` logs a warning and returns nulls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["denoise", "inpaint", "restore_classical", "score_classical"]

_log = logging.getLogger("dipflow.baselines")


def _bm3d() -> Any:
    try:
        import bm3d
    except ImportError:  # the optional extra is not installed (or its binary does not load here)
        return None
    return bm3d


def denoise(noisy: np.ndarray, sigma: float) -> tuple[str, np.ndarray]:
    """(name, estimate) of an H×W×C image in [0, 1] with Gaussian noise of std ``sigma`` (0–255 units)."""
    s = sigma / 255.0
    bm3d = _bm3d()
    if bm3d is not None:
        if noisy.shape[2] == 3:
            return "cbm3d", bm3d.bm3d_rgb(noisy, s)  # (H, W, 3)
        return "bm3d", np.atleast_3d(bm3d.bm3d(noisy[..., 0], s))  # (H, W, 1)
    from skimage.restoration import denoise_nl_means

    out = denoise_nl_means(noisy, h=0.8 * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6, channel_axis=-1)
    return "nlm", out.reshape(noisy.shape)


def inpaint(observed: np.ndarray, mask: np.ndarray) -> tuple[str, np.ndarray]:
    """(name, estimate) of an H×W×C image whose pixels are known where ``mask`` (H×W) is 1."""
    from skimage.restoration import inpaint_biharmonic

    missing = np.asarray(mask) < 0.5
    return "biharmonic", inpaint_biharmonic(observed, missing, channel_axis=-1)


def _denoise_observation(image: np.ndarray, observation: Any, sigma: float | None) -> tuple[str, np.ndarray]:
    if sigma is None:
        raise ValueError("the denoising baseline needs the noise level sigma")
    return denoise(image, sigma)


def _inpaint_observation(image: np.ndarray, observation: Any, sigma: float | None) -> tuple[str, np.ndarray]:
    if observation.mask is None:
        raise ValueError("the inpainting baseline needs the observation's mask")
    return inpaint(image, observation.mask)


# The classical method of each task that has one here (the methods need scikit-image or bm3d, so this table is the
# pipelines' own, beside dipcore's task definitions); planning names its tasks in `pipelines.jobs.CLASSICAL_TASKS`.
_CLASSICAL: dict[str, Callable[[np.ndarray, Any, float | None], tuple[str, np.ndarray]]] = {
    "denoise": _denoise_observation,
    "inpaint": _inpaint_observation,
}


def restore_classical(task: str, observation: Any, *, sigma: float | None = None) -> tuple[str, np.ndarray] | None:
    """(name, float32 H×W×C estimate in [0, 1]) of a ``dipcore.Observation``; None for a task without a baseline."""
    method = _CLASSICAL.get(task)
    if method is None:
        return None
    name, out = method(np.asarray(observation.image, dtype=np.float64), observation, sigma)
    return name, np.clip(out, 0.0, 1.0).astype(np.float32)


def score_classical(
    task: str, observation: Any, truth: np.ndarray, *, sigma: float | None, protocol: Mapping[str, Any]
) -> dict[str, Any]:
    """The report's ``classical_name`` and ``psnr_classical`` (PSNR under ``protocol``, ``dipcore.psnr``'s
    keywords); both null, with a warning, when the baseline fails."""
    import dipcore

    try:
        result = restore_classical(task, observation, sigma=sigma)
        if result is None:
            return {}
        name, estimate = result
        return {"classical_name": name, "psnr_classical": dipcore.psnr(estimate, truth, **protocol)}
    except Exception as exc:  # noqa: BLE001 - a baseline never fails the image it is scored beside
        _log.warning("classical %s baseline failed: %s: %s", task, type(exc).__name__, exc)
        return {"classical_name": None, "psnr_classical": None}
