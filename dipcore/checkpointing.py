"""Exact activation checkpointing: a net that keeps, for the backward pass, only the input of each convolution unit
and recomputes the unit's inside from it.

A DIP step keeps every intermediate activation of its net for the backward pass, and these grow with the image:
about 1.9 GiB of the 2.2 GiB peak of the default net at 512². A unit (pad → conv → BatchNorm → activation, say)
keeps three or four tensors of its output's size; checkpointed, it keeps its input alone and runs its forward a
second time during the backward pass: less memory for about one more forward pass per step.

The recomputation is exact: dipcore's BatchNorm always normalises with the statistics of the batch at hand (there
are no running statistics to update twice), and units that draw random numbers (``texture_nets`` with
``fill_noise``) are left plain, so no RNG state is saved or replayed — which also keeps a checkpointed step
capturable in a CUDA graph, where reading or setting the generator's state is not allowed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from . import blocks

__all__ = ["CheckpointedUnit", "checkpointed"]


class CheckpointedUnit(nn.Module):
    """``unit(x)``, keeping only ``x`` for the backward pass (non-reentrant ``torch.utils.checkpoint``)."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, x: Tensor) -> Tensor:
        return checkpoint(self.unit, x, use_reentrant=False, preserve_rng_state=False)


def _convs(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def _draws_noise(module: nn.Module) -> bool:
    return any(isinstance(m, blocks.FillNoise) for m in module.modules())


def _unit(layers: list[nn.Module]) -> list[nn.Module]:
    """``layers`` as one checkpointed unit when they hold a convolution and draw no noise, else as they are."""
    if not any(_convs(m) for m in layers) or any(_draws_noise(m) for m in layers):
        return layers
    return [CheckpointedUnit(layers[0] if len(layers) == 1 else nn.Sequential(*layers))]


def _sequence(layers: Iterable[nn.Module]) -> list[nn.Module]:
    """A chain of layers cut into units of at most one convolution each, together with the pointwise layers that
    follow it (and, after a nested block, those before it); nested blocks of several convolutions are cut in turn."""
    out: list[nn.Module] = []
    unit: list[nn.Module] = []
    for layer in layers:
        n = _convs(layer)
        if n > 1 or (n == 1 and any(_convs(m) for m in unit)):
            out += _unit(unit)
            unit = []
        if n > 1:
            out.append(checkpointed(layer))
        else:
            unit.append(layer)
    return out + _unit(unit)


def _with_children(module: nn.Module, children: dict[str, nn.Module]) -> nn.Module:
    """A shallow copy of ``module`` (its own parameters and settings shared) with other child modules."""
    out = copy.copy(module)
    out._modules = {}  # a fresh dict: the copy must not rewire the original
    for name, child in children.items():
        out.add_module(name, child)
    return out


def checkpointed(net: nn.Module) -> nn.Module:
    """The same function as ``net``, with the same parameter tensors (shared, not copied), whose units of one
    convolution keep only their input for the backward pass. ``net`` itself is left as it was.

    Chains (``nn.Sequential``, including residual ones) are cut into units; the children of other modules (the
    branches of a concatenation, the parts of the U-Net) are cut one by one, since their data flow is the module's
    own. Covers every net of ``dipcore.nets`` and their stacked forms (``dipcore.batched``).
    """
    if isinstance(net, nn.Sequential):
        return _with_children(net, {str(i): m for i, m in enumerate(_sequence(net))})
    children = {}
    for name, child in net.named_children():
        if isinstance(child, nn.Sequential) and _convs(child) == 1:
            child = _unit([child])[0] if len(child) > 1 else child  # one unit already
        elif _convs(child) and next(child.children(), None) is not None:
            child = checkpointed(child)  # a block of units, or a container (ModuleList) of them
        children[name] = child
    return _with_children(net, children)
