"""``TaskPreset``: every setting of one DIP run, a frozen dataclass. The published values of each task are the
presets of ``tasks.py``; what a task is, beside its settings, is its definition in ``task_defs.py``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["HOURGLASS", "TaskPreset"]

# The paper's default hourglass: 128 channels at each of 5 scales, 4 skip channels (paper, Section 4; code).
HOURGLASS = {
    "channels_down": (128,) * 5,
    "channels_up": (128,) * 5,
    "channels_skip": (4,) * 5,
    "upsample": "bilinear",
    "pad": "reflection",
}


@dataclass(frozen=True)
class TaskPreset:
    """Every setting of one DIP run; ``restore`` builds net, input, operator and loop from it alone."""

    task: str
    variant: str | None = None
    net: str = "skip"
    net_options: Mapping[str, Any] = field(default_factory=lambda: dict(HOURGLASS))
    input: Literal["noise", "meshgrid", "guide"] = "noise"
    input_depth: int = 32  # paper: "z … with 32 feature maps"
    input_scale: float = 0.1  # code: z = U(0,1) · 0.1
    lr: float = 0.01  # code: Adam, LR 0.01 in most notebooks
    iterations: int = 2000
    reg_noise_std: float = 0.0  # std of the per-iteration jitter added to z
    ema: float | None = None  # weight of the exponential moving average of outputs (0.99 in denoising)
    output: Literal["final", "average"] = "final"  # which output `restore` returns
    restarts: int = 1  # independent fits averaged (paper: "averaged over two optimization runs")
    backtrack: bool = False  # undo steps whose loss jumps (denoising code)
    scale: int = 1  # SR factor
    sigma: float | None = None  # noise level of the degradation, in 0–255 units (evaluation only)
    drop: float | None = None  # fraction of pixels dropped by the Bernoulli mask (evaluation only)
    layer: str | None = None  # pre-image: the classifier layer whose features are inverted
    crop: Literal["pad", "center"] = "pad"  # pad to the net's multiple and crop back, or the paper's centre crop
    # False: the fixed count (the paper's loop); True: stop by the running-variance rule; "observe": run the fixed
    # count and record where that rule would have stopped and what it would have returned (an early-stopping study);
    # "selfval": self-validation (`dipcore.selfvalidation`: find the count on held-out pixels, refit to it).
    early_stopping: bool | Literal["observe", "selfval"] = False
    es_window: int = 100  # Wang et al.: window W of the running variance
    es_patience: int = 1000  # Wang et al.: P iterations without a new minimum

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["net_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.net_options.items()}
        return d
