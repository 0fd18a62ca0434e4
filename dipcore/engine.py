"""How a fit runs on its device: ``EngineOptions`` (TF32, channels_last, fused Adam, CUDA graphs, bf16, activation
checkpointing, host reads every k iterations, how a batch of fits runs), the device a fit runs on by default, and
the backend flags a fit sets for its duration.

None of these change the maths beyond float rounding (bf16 aside), so a report's identity leaves them out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import ConfigError

__all__ = ["EngineOptions", "backend_flags", "default_device"]


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _given_or(value, default):
    return default if value is None else value


@dataclass(frozen=True)
class EngineOptions:
    """How the loop runs on its device; none of these change the maths beyond float rounding (bf16 aside)."""

    sync_every: int | None = None  # host reads every k iterations; default 1 on the CPU, 25 on CUDA
    channels_last: bool | None = None  # default: on for CUDA
    tf32: bool | None = None  # TF32 convolutions and matmuls; default: on for CUDA, off gives strict fp32
    autocast: Literal["bf16"] | None = None  # bf16 autocast of the forward pass (opt-in; costs some PSNR)
    cudnn_benchmark: bool | None = None  # default: on for CUDA (shapes are static during a fit)
    batch_restarts: bool | None = None  # restarts of one image as one batch (see batch_mode); default: on
    # How a batch of fits runs: "stack" = one stacked net (dipcore.batched; the default on CUDA); "threads" = side by
    # side on CPU threads (dipcore.concurrent; the CPU's default, where grouped convolutions are slow).
    batch_mode: Literal["stack", "threads"] | None = None
    fused_adam: bool | None = (
        None  # one fused Adam kernel; default: on for CUDA and the CPU (there 3× faster than a loop)
    )
    # Replay the whole step from a CUDA graph (not with backtracking); default on for CUDA: 2.7× at 256² on an H200
    # with the same Set5 PSNR (benchmarks/RESULTS.md).
    cuda_graph: bool | None = None
    # Activation checkpointing (dipcore.checkpointing): True, False, or "auto" (the default): restore() and
    # restore_batch() turn it on when the job's estimated peak exceeds the device's free memory, and raise
    # OutOfMemoryError when even the checkpointed estimate does; fit() itself runs "auto" as off.
    checkpoint: bool | Literal["auto"] | None = None
    memory_budget: int | None = None  # bytes a fit may use; default: measured when it starts (dipcore.memory)

    def resolved(self, device: torch.device) -> EngineOptions:
        """Every ``None`` replaced by ``device``'s default; ConfigError on a value that is not allowed there."""
        cuda = device.type == "cuda"
        if self.checkpoint not in (None, True, False, "auto"):
            raise ConfigError(f"checkpoint={self.checkpoint!r} is not one of True, False, 'auto'")
        if self.batch_mode not in (None, "stack", "threads"):
            raise ConfigError(f"batch_mode={self.batch_mode!r} is not one of 'stack', 'threads'")
        if self.batch_mode == "threads" and device.type != "cpu":
            raise ConfigError(f"batch_mode='threads' is for CPUs: on {device.type}, batches run stacked")
        return EngineOptions(
            sync_every=_given_or(self.sync_every, 25 if cuda else 1),
            channels_last=_given_or(self.channels_last, cuda),
            tf32=_given_or(self.tf32, cuda),
            autocast=self.autocast,
            cudnn_benchmark=_given_or(self.cudnn_benchmark, cuda),
            batch_restarts=_given_or(self.batch_restarts, True),
            batch_mode=_given_or(self.batch_mode, "threads" if device.type == "cpu" else "stack"),
            fused_adam=_given_or(self.fused_adam, device.type in ("cuda", "cpu")),
            cuda_graph=_given_or(self.cuda_graph, cuda),
            checkpoint=_given_or(self.checkpoint, "auto"),
            memory_budget=self.memory_budget,
        )


@contextlib.contextmanager
def backend_flags(engine: EngineOptions, device: torch.device) -> Iterator[None]:
    """Apply ``engine``'s TF32/cuDNN flags for the duration of a fit and restore the caller's values after it.

    The flags are process-wide and matter on CUDA only: on other devices nothing is set."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(engine.tf32)
    torch.backends.cudnn.benchmark = bool(engine.cudnn_benchmark)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved
