"""Synthetic observations for evaluation: ``degrade`` makes the observation of a paper's benchmark from a clean image,
running the task's synthesis (``Task.synthesise`` in ``task_defs.py``) on the primitives of ``observation.py``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .crop import center_crop_to_multiple
from .imageio import to_float_image
from .observation import Observation
from .task_defs import get_task

__all__ = ["degrade"]


def degrade(
    clean: Any,
    *,
    task: str,
    scale: int = 4,
    sigma: float = 25.0,
    drop: float = 0.5,
    mask: np.ndarray | None = None,
    variant: str | None = None,
    quality: int = 10,
    crop_multiple: int | None = None,
    seed: int = 0,
) -> Observation:
    """Synthesise the observation of ``task`` from a clean image, with the paper's protocol.

    - ``denoise``: x0 = clip(x + N(0, σ/255)) (σ in 0–255 units, 25 in the paper's table);
    - ``sr``: LR = Pillow LANCZOS downscale by ``scale``;
    - ``inpaint``: a Bernoulli mask dropping ``drop`` of the pixels (``variant="random"``, Table 1), text drawn over
      the image (``"text"``), a central hole (``"large"``/``"region"``), or the given ``mask``;
    - ``jpeg``: JPEG at ``quality``; ``reconstruct``, ``preimage``: the image itself.
    ``crop_multiple`` centre-crops the clean image first (the authors' evaluation crops to a multiple of 32).
    The noise and masks come from ``seed``, so an evaluation is reproducible. A task reads only its own keywords
    (``get_task(task).degrade_args``); flash/no-flash has no synthetic observation (ConfigError).
    """

    t = get_task(task)
    x = to_float_image(clean)
    if crop_multiple:
        x = center_crop_to_multiple(x, crop_multiple)
    h, w = x.shape[:2]
    meta: dict[str, Any] = {"seed": seed, "clean_shape": [h, w, x.shape[2]]}
    knobs = {"scale": scale, "sigma": sigma, "drop": drop, "mask": mask, "variant": variant, "quality": quality}
    return t.synthesise(t.name, x, meta, seed=seed, **{k: knobs[k] for k in t.degrade_args})
