"""An estimate of a fit's peak memory before it starts, so a scheduler can refuse or pack jobs instead of crashing.

Peak memory of a DIP step = the weights, their gradients and Adam's two moments (4 copies of the parameters) plus the
activations autograd keeps for the backward pass. The second part grows linearly with the pixel count: it is
measured once by running one forward pass of the job's own net on a small canvas with a saved-tensors hook that adds
up what autograd keeps, and scaled to the job's canvas.

With activation checkpointing (``dipcore.checkpointing``) the forward pass keeps only the inputs of its units, and
the backward pass recomputes one unit at a time: the activations at the peak are what is kept plus one unit's
inside and gradients, measured with the same hook on the same probe.

``decide_checkpoint`` turns the estimate into a decision before a job starts: run plain, checkpoint, or refuse the
job with ``OutOfMemoryError`` when even the checkpointed estimate exceeds what the device has free.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch
from torch import nn

from . import nets
from .checkpointing import CheckpointedUnit, checkpointed
from .engine import EngineOptions
from .errors import OutOfMemoryError
from .operators import noise_code
from .preset import TaskPreset

__all__ = ["cuda_budget", "decide_checkpoint", "device_budget", "estimate_peak_bytes"]

# What autograd saves is not all that is alive at the peak: the backward pass adds activation gradients, and the
# step its outputs and buffers. On the H200 the measured peaks were 1.15–1.24× the saved activations plus the four
# parameter copies (604 MiB at 256², 2276 at 512², 5209 for 8 stacked fits at 256²); 1.3 keeps the estimate above.
# The checkpointed estimate takes the same headroom, unmeasured on a GPU yet: on the CPU, at 128², the live tensors of
# a checkpointed step of each net peaked at 0.5–1.0× its modelled activations, those of a plain step at 0.6–1.2×
# (tests/test_memory.py checks the default net).
_BACKWARD_HEADROOM = 1.3


class _Saved:
    """Adds up the storages autograd saves for backward while active: each storage once; the weights (also saved,
    by convolutions) and ``known`` storages left out, since they do not grow with the image or are counted already."""

    def __init__(self, net: nn.Module, known: frozenset[int] = frozenset()) -> None:
        self.skip = known | {q.untyped_storage().data_ptr() for q in net.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.skip:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def _saved_bytes(net: nn.Module, z: torch.Tensor, *, known: frozenset[int] = frozenset()) -> int:
    """Bytes of the activations autograd saves for backward during one forward pass of ``net`` on ``z``."""
    saved = _Saved(net, known)
    with saved.hooks():
        net(z).sum()
    return saved.bytes


def _checkpointed_bytes(net: nn.Module, z: torch.Tensor) -> int:
    """Bytes of activations alive at the peak of a checkpointed backward pass.

    The backward pass visits units in the reverse of their forward order, and by the time it recomputes unit j the
    inputs kept for the units after it are gone. So the peak is, over units j, the largest of: what the forward
    pass kept up to j (units' inputs, which checkpointing saves through the same hook, and what layers outside units
    save), plus what j's recomputation saves, plus two gradients of j's output's size (the incoming one and the one
    being computed).
    """
    saved = _Saved(net)
    inside: dict[CheckpointedUnit, int] = {}
    peak = 0

    def before(unit: CheckpointedUnit, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]  # kept already: not part of the inside
        inside[unit] = _saved_bytes(unit.unit, x, known=frozenset({x.untyped_storage().data_ptr()}))

    def after(unit: CheckpointedUnit, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal peak
        peak = max(peak, saved.bytes + inside[unit] + 2 * out.numel() * out.element_size())

    lean = checkpointed(net)
    units = [m for m in lean.modules() if isinstance(m, CheckpointedUnit)]
    hooks = [h for m in units for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with saved.hooks():
            lean(z).sum()
    finally:
        for h in hooks:
            h.remove()
    return max(peak, saved.bytes)


def _frozen(options: object) -> object:
    """A hashable copy of net options (lists become tuples), to key the cache of probes."""
    if isinstance(options, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in options.items()))
    return tuple(_frozen(v) for v in options) if isinstance(options, (list, tuple)) else options


@functools.lru_cache(maxsize=64)
def _probe(net_name: str, options: tuple, in_channels: int, out_channels: int, checkpoint: bool) -> tuple[float, int]:
    """(activation bytes per canvas pixel, parameter count) of a net, from one forward pass on its smallest canvas.
    Cached: restore() asks for every job, and jobs of a dataset share their net."""
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in options}
    side = nets.min_canvas(net_name, **kwargs)
    net = nets.get_net(net_name, in_channels=in_channels, out_channels=out_channels, **kwargs)
    gen = torch.Generator().manual_seed(0)
    zh, zw = nets.code_size(net_name, side, side, **kwargs) or (side, side)  # the code build_problem draws
    z = noise_code(in_channels, zh, zw, generator=gen)
    activations = _checkpointed_bytes(net, z) if checkpoint else _saved_bytes(net, z)
    return activations / (side * side), sum(q.numel() for q in net.parameters())


def estimate_peak_bytes(
    p: TaskPreset, height: int, width: int, *, out_channels: int = 3, fits: int = 1, checkpoint: bool = False
) -> int:
    """Estimated peak bytes of ``fits`` stacked fits of preset ``p`` on an output of ``height × width`` (fp32),
    with activation checkpointing when ``checkpoint``.

    Not counted: the framework's own workspace (cuDNN, the CUDA context) and allocator rounding.
    """
    per_pixel, params = _probe(p.net, _frozen(dict(p.net_options)), p.input_depth, out_channels, bool(checkpoint))
    hc, wc = nets.canvas_size(p.net, height, width, **p.net_options)
    return int(fits * (4 * 4 * params + _BACKWARD_HEADROOM * per_pixel * hc * wc))  # 4 fp32 copies of the weights


# ---------------------------------------------------------------------------------------------------------------------
# Does a job fit its device?

# Kept free on a GPU beyond the estimate: cuDNN's workspaces (its autotuner tries algorithms that need hundreds of
# MiB at 512²) and the caching allocator's rounding and fragmentation. A guess to be calibrated on a GPU: the H200
# runs measured max_memory_allocated only. The CPU has neither, and its figure (MemAvailable) already leaves out
# what the process holds, so no margin is kept there.
_CUDA_MARGIN_MIN = 1 << 30
_CUDA_MARGIN_FRACTION = 0.05


def _cuda_margin(total: int) -> int:
    return max(_CUDA_MARGIN_MIN, int(_CUDA_MARGIN_FRACTION * total))


def _meminfo_bytes(text: str, key: str) -> int | None:
    """A ``key:  N kB`` line of /proc/meminfo, in bytes."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) * 1024
    return None


def cuda_budget(free: int, total: int, cached: int = 0) -> int:
    """Bytes fits may use on a CUDA device with ``free`` of its ``total`` bytes free and ``cached`` bytes held unused
    by this process's allocator: all of them but a margin for cuDNN. The one GPU budget: the engine checks each fit
    against it (``device_budget``) and the packer sizes its batches by it (``pipelines.execution.packing``)."""
    return free + cached - _cuda_margin(total)


def device_budget(device: torch.device) -> int | None:
    """Bytes a fit may use on ``device`` now; None where unknown.

    CUDA: the device's free memory plus what this process's allocator holds unused (a previous job's cache), minus a
    margin for cuDNN. CPU: MemAvailable of /proc/meminfo (Linux), since a process that runs out of RAM is killed by
    the kernel rather than given an error. Elsewhere (macOS, Windows, MPS) no check is made.
    """
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return cuda_budget(free, total, torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                return _meminfo_bytes(f.read(), "MemAvailable")
        except OSError:
            return None
    return None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def decide_checkpoint(
    engine: EngineOptions, p: TaskPreset, height: int, width: int, *, out_channels: int, fits: int, device: torch.device
) -> EngineOptions:
    """``engine`` (resolved) with ``checkpoint`` settled to True or False for ``fits`` stacked fits of ``p`` on an
    ``height × width`` output: "auto" checkpoints only when the plain estimate exceeds the device's budget.

    Raises OutOfMemoryError, before anything runs, when checkpointing is on or "auto" and even the checkpointed
    estimate exceeds the budget. ``checkpoint=False`` runs as asked, unchecked.
    """
    if engine.checkpoint is False:
        return engine
    budget = engine.memory_budget if engine.memory_budget is not None else device_budget(device)
    if budget is None:
        return replace(engine, checkpoint=engine.checkpoint is True)
    estimate = functools.partial(estimate_peak_bytes, p, height, width, out_channels=out_channels, fits=fits)
    plain = estimate()
    if engine.checkpoint == "auto" and plain <= budget:
        return replace(engine, checkpoint=False)
    lean = estimate(checkpoint=True)
    if lean > budget:
        where = "RAM" if device.type == "cpu" else f"memory on {device}"
        raise OutOfMemoryError(
            f"this job ({fits} fit{'s' if fits > 1 else ''} of {width}×{height}, net {p.net!r}) needs about "
            f"{_size(plain)} ({_size(lean)} with activation checkpointing), but only {_size(max(budget, 0))} of "
            f"{where} is free for it: restore a smaller image (crop or downscale it), run fewer fits at once "
            f"(restarts=1, smaller batches) or a narrower net (channels=), or use a device with more memory"
        )
    return replace(engine, checkpoint=True)
