"""An estimate of a fit's peak memory before it starts, so a scheduler can refuse or pack jobs instead of crashing.

Peak memory of a DIP step = the weights, their gradients and Adam's two moments (4 copies of the parameters) plus the
activations autograd keeps for the backward pass. The second part grows linearly with the pixel count: it is
measured once by running one forward pass of the job's own net on a small canvas with a saved-tensors hook that adds
up what autograd keeps, and scaled to the job's canvas.
"""

from __future__ import annotations

import math

import torch

from . import nets
from .operators import noise_code
from .tasks import TaskPreset

__all__ = ["estimate_peak_bytes"]

_PROBE_SIDE_SCALES = 2  # the probe canvas: twice the net's multiple, the smallest it can run on
# What autograd saves is not all that is alive at the peak: the backward pass adds activation gradients, and the
# step its outputs and buffers. On the H200 the measured peaks were 1.15–1.24× the saved activations plus the four
# parameter copies (604 MiB at 256², 2276 at 512², 5209 for 8 stacked fits at 256²); 1.3 keeps the estimate above.
_BACKWARD_HEADROOM = 1.3


def _saved_bytes(net: torch.nn.Module, z: torch.Tensor) -> int:
    """Bytes of the activations autograd saves for backward during one forward pass: shared storages counted once,
    the weights (also saved, by convolutions) left out since they do not grow with the image."""
    weights = {q.untyped_storage().data_ptr() for q in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(z).sum()
    return sum(seen.values())


def estimate_peak_bytes(p: TaskPreset, height: int, width: int, *, out_channels: int = 3, fits: int = 1) -> int:
    """Estimated peak bytes of ``fits`` stacked fits of preset ``p`` on an output of ``height × width`` (fp32).

    Not counted: the framework's own workspace (cuDNN, the CUDA context) and allocator rounding.
    """
    multiple = nets.required_multiple(p.net, **p.net_options)
    side = multiple * _PROBE_SIDE_SCALES
    net = nets.get_net(p.net, in_channels=p.input_depth, out_channels=out_channels, **p.net_options)
    gen = torch.Generator().manual_seed(0)
    if p.net == "deep_decoder":
        zh, zw = nets.deep_decoder_input_shape(side, side, num_layers=p.net_options.get("num_layers", 5))
        z = noise_code(p.input_depth, zh, zw, generator=gen)
    else:
        z = noise_code(p.input_depth, side, side, generator=gen)
    activations_per_pixel = _saved_bytes(net, z) / (side * side)
    canvas = math.ceil(height / multiple) * multiple * math.ceil(width / multiple) * multiple
    params = sum(q.numel() for q in net.parameters()) * 4  # fp32 bytes
    return int(fits * (4 * params + _BACKWARD_HEADROOM * activations_per_pixel * canvas))
