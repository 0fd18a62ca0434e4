"""How a fit runs on its device: ``EngineOptions`` (TF32, channels_last, fused Adam, CUDA graphs, torch.compile,
bf16, activation checkpointing, host reads every k iterations, how a batch of fits runs), the device a fit runs on
by default, and the backend flags a fit sets for its duration.

None of these change the maths beyond float rounding (bf16 aside), so a report's identity leaves them out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .errors import ConfigError

__all__ = [
    "BF16_MIN_WORK",
    "EngineOptions",
    "backend_flags",
    "cpu_has_native_bf16",
    "default_autocast",
    "default_device",
    "fit_work",
]


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in its own units (AVX512-BF16 or AMX), so oneDNN's bf16 convolutions run
    faster than fp32 ones; elsewhere oneDNN emulates bf16 and gains nothing. Read from torch's CPU probes."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's (private) cpuinfo queries
    try:
        return torch.backends.mkldnn.is_available() and any(getattr(torch.cpu, p, lambda: False)() for p in probes)
    except RuntimeError:  # a probe that cannot read the CPU: assume nothing
        return False


# bf16 pays on a CPU once a fit's convolutions are large enough to amortise the casts around them. Measured per
# iteration against fp32 on a 2-core AVX512-BF16 EPYC (benchmarks/RESULTS.md), with `fit_work` = widest² × pixels:
# 0.73× at 1.0 M (64², 16 channels), 0.81× at 4.2 M (64², 32), 1.16× at 16.8 M (128², 32), 1.6× at 67 M (128², 64;
# 256², 32), 1.75× at 268 M (128², 128), 1.94× at 1.07 G (256², 128). Below the threshold a fit stays fp32.
BF16_MIN_WORK = 128 * 128 * 32**2


def fit_work(net: nn.Module, height: int, width: int, *, fits: int = 1) -> int:
    """The size the precision choice goes by: (the widest convolution's output channels per fit)² × the output's
    pixels — it orders the measured bf16 speed-ups, as a convolution's work grows with channels² × pixels."""
    widest = max((m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)), default=0) // fits
    return widest**2 * height * width


def default_autocast(device: torch.device, work: int | None = None, *, bf16_ok: bool = True) -> Literal["bf16", "off"]:
    """bf16 autocast of the net where the CPU has native bf16 units, the fit is large enough to gain from it
    (``work`` from `fit_work`; None: assume it is) and its task's measured PSNR price allows it (``bf16_ok``:
    `dipcore.task_defs.Task.bf16_default`; a bare fit knows no task); fp32 elsewhere, on CUDA too (opt-in there)."""
    large = work is None or work >= BF16_MIN_WORK
    return "bf16" if device.type == "cpu" and large and bf16_ok and cpu_has_native_bf16() else "off"


def _given_or(value, default):
    return default if value is None else value


@dataclass(frozen=True)
class EngineOptions:
    """How the loop runs on its device; none of these change the maths beyond float rounding (bf16 aside)."""

    sync_every: int | None = None  # host reads every k iterations; default 1 on the CPU, 25 on CUDA
    channels_last: bool | None = None  # default: on for CUDA
    tf32: bool | None = None  # TF32 convolutions and matmuls; default: on for CUDA, off gives strict fp32
    # bf16 autocast of the net's forward pass ("bf16"), or strict fp32 ("off"); the loss, the average, the PSNRs,
    # early stopping and Adam stay fp32 either way. Default: bf16 on CPUs with native bf16 units for fits large
    # enough to gain, of tasks whose measured PSNR price allows it (`default_autocast`), else off.
    autocast: Literal["bf16", "off"] | None = None
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
    # The net's forward pass through torch.compile (dipcore.compiled): static shapes, one graph per architecture and
    # canvas for the whole process, reused by every fresh net. Default: off everywhere for now; it becomes CUDA's
    # default once the GPU suite has measured its speed and compile time there (benchmarks/RESULTS.md).
    compile: bool | None = None
    # Activation checkpointing (dipcore.checkpointing): True, False, or "auto" (the default): restore() and
    # restore_batch() turn it on when the job's estimated peak exceeds the device's free memory, and raise
    # OutOfMemoryError when even the checkpointed estimate does; fit() itself runs "auto" as off.
    checkpoint: bool | Literal["auto"] | None = None
    memory_budget: int | None = None  # bytes a fit may use; default: measured when it starts (dipcore.memory)

    def resolved(self, device: torch.device, *, work: int | None = None, bf16_ok: bool = True) -> EngineOptions:
        """Every ``None`` replaced by ``device``'s default (the precision's also by the fit's ``work`` and whether
        its task allows bf16: `default_autocast`); ConfigError on a value that is not allowed there."""
        cuda = device.type == "cuda"
        if self.checkpoint not in (None, True, False, "auto"):
            raise ConfigError(f"checkpoint={self.checkpoint!r} is not one of True, False, 'auto'")
        if self.autocast not in (None, "bf16", "off"):
            raise ConfigError(f"autocast={self.autocast!r} is not one of 'bf16', 'off'")
        if self.compile not in (None, True, False):
            raise ConfigError(f"compile={self.compile!r} is not one of True, False")
        if self.batch_mode not in (None, "stack", "threads"):
            raise ConfigError(f"batch_mode={self.batch_mode!r} is not one of 'stack', 'threads'")
        if self.batch_mode == "threads" and device.type != "cpu":
            raise ConfigError(f"batch_mode='threads' is for CPUs: on {device.type}, batches run stacked")
        return EngineOptions(
            sync_every=_given_or(self.sync_every, 25 if cuda else 1),
            channels_last=_given_or(self.channels_last, cuda),
            tf32=_given_or(self.tf32, cuda),
            autocast=_given_or(self.autocast, default_autocast(device, work, bf16_ok=bf16_ok)),
            cudnn_benchmark=_given_or(self.cudnn_benchmark, cuda),
            batch_restarts=_given_or(self.batch_restarts, True),
            batch_mode=_given_or(self.batch_mode, "threads" if device.type == "cpu" else "stack"),
            fused_adam=_given_or(self.fused_adam, device.type in ("cuda", "cpu")),
            cuda_graph=_given_or(self.cuda_graph, cuda),
            compile=_given_or(self.compile, False),
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
