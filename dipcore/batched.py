"""Batched multi-fit: K independent DIP fits run as one net with K× the channels and grouped convolutions.

A single small fit leaves a GPU mostly idle (the 2.2M-parameter net at 256² is a few hundred short kernels per
step). Stacking K fits along the channel axis keeps the kernel count and makes each kernel K times larger:
every convolution becomes a grouped one (group k = fit k), BatchNorm over K·C channels keeps per-fit statistics
(batch size 1, so each channel's statistics are its own fit's), and Adam is element-wise, so its state is
per-fit too. Fits are restarts of one image or different images of one task: of one shape, or of different shapes
on one shared canvas (``dipcore.canvas``), where each fit's loss and curves are taken on its own box.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from . import blocks, nets
from .crop import center_crop
from .errors import ConfigError
from .fit import FitPart, FitProblem
from .operators import Features, Identity, LanczosDown, Mask
from .selfvalidation import HeldOut
from .task_defs import get_task

if TYPE_CHECKING:
    from .preset import TaskPreset

__all__ = ["batch_refusal", "stack_blocks", "stack_modules", "stack_problems"]

# Modules without parameters that act on each channel separately: shared as they are.
_CHANNELWISE = (
    nn.LeakyReLU,
    nn.ReLU,
    nn.ELU,
    nn.Sigmoid,
    nn.Identity,
    nn.Upsample,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
    nn.ZeroPad2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    blocks.Swish,
)


class _StackedConcat(nn.Module):
    """Concatenation of branches, per fit: [a_1 b_1 | a_2 b_2 | …] rather than [a_1 a_2 … | b_1 b_2 …]."""

    def __init__(self, k: int, branches: list[nn.Module]):
        super().__init__()
        self.k = k
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        height, width = min(o.shape[2] for o in outs), min(o.shape[3] for o in outs)
        outs = [center_crop(o, height, width) for o in outs]
        n = x.shape[0]
        blocks = [o.reshape(n, self.k, o.shape[1] // self.k, height, width) for o in outs]  # (N, K, C_i, h, w)
        return torch.cat(blocks, dim=2).reshape(n, -1, height, width)  # (N, K·ΣC_i, h, w)


def _stack_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    c, k = convs[0], len(convs)
    out = nn.Conv2d(
        c.in_channels * k,
        c.out_channels * k,
        c.kernel_size,
        c.stride,
        c.padding,
        c.dilation,
        groups=c.groups * k,
        bias=c.bias is not None,
        padding_mode=c.padding_mode,
    )
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in convs]))  # (K·Cout, Cin/groups, kh, kw)
        if c.bias is not None:
            out.bias.copy_(torch.cat([m.bias for m in convs]))
    return out.to(c.weight.device)


def _stack_bn(bns: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b, k = bns[0], len(bns)
    if b.track_running_stats:
        raise ConfigError("stacked fits need BatchNorm without running statistics (as every dipcore net has)")
    out = nn.BatchNorm2d(b.num_features * k, eps=b.eps, affine=b.affine, track_running_stats=False)
    if b.affine:
        with torch.no_grad():
            out.weight.copy_(torch.cat([m.weight for m in bns]))
            out.bias.copy_(torch.cat([m.bias for m in bns]))
    return out.to(b.weight.device if b.affine else "cpu")


def stack_modules(modules: list[nn.Module]) -> nn.Module:
    """One module computing all of ``modules`` (same architecture, own weights) on channel-stacked inputs.

    Input (N, K·C_in, H, W) with block k for module k gives (N, K·C_out, H', W') with block k = module k's output.
    Supports what the ``skip``, ``texture_nets`` and ``deep_decoder`` nets are made of; anything else raises
    ConfigError: the ``unet`` and ``resnet`` nets (their U-Net and residual blocks) and ``texture_nets`` with
    ``fill_noise`` (fresh noise drawn inside the net).
    """
    first, k = modules[0], len(modules)
    kind = type(first)
    if any(type(m) is not kind for m in modules):
        raise ConfigError("stacked fits need nets of one architecture")
    if kind is nn.Conv2d:
        return _stack_conv(modules)
    if kind is nn.BatchNorm2d:
        return _stack_bn(modules)
    if kind is nn.Sequential:
        return nn.Sequential(*(stack_modules([m[i] for m in modules]) for i in range(len(first))))
    if kind is blocks.Concat:
        branches = [stack_modules([m.branches[i] for m in modules]) for i in range(len(first.branches))]
        return _StackedConcat(k, branches)
    if kind is blocks.LanczosDown2:
        down = copy.deepcopy(first)
        down.kernel = first.kernel.repeat(k, 1, 1, 1)  # depthwise: one kernel per stacked channel
        return down
    if isinstance(first, _CHANNELWISE):
        return copy.deepcopy(first)
    raise ConfigError(
        f"batched fits do not support {kind.__name__} layers (the skip, texture_nets and deep_decoder nets stack)"
    )


def stack_blocks(tensors: list[Tensor]) -> Tensor:
    """(1, C, H, W) × K -> (1, K·C, H, W): block k is tensor k."""
    return torch.cat(tensors, dim=1)


def stack_problems(problems: list[FitProblem]) -> FitProblem:
    """One FitProblem for K problems of the same task (built with their own seeds) on one canvas.

    Problems of one shape stack whole: one crop, the operators' masks and the targets stacked along channels.
    Problems of different shapes on one shared canvas (``build_problem(canvas=…)``) keep their own parts: each
    fit's box in the canvas, its own operator (its mask, its SR downsampling of its box), target and reference.
    """
    first = problems[0]
    if any(p.z.shape != first.z.shape for p in problems):
        shapes = sorted({tuple(p.z.shape[-2:]) for p in problems})
        raise ConfigError(
            f"stacked fits need observations of one shape, or one shared canvas for all (build_problem(canvas=…)); "
            f"their canvases are {shapes}"
        )
    if any(isinstance(p.operator, Features) for p in problems):
        raise ConfigError("the pre-image task cannot be batched (its classifier is not per-fit)")
    # Fits of other sizes, or each with its own held-out pixels behind an operator (self-validation), keep parts.
    if any(p.crop != first.crop or p.target.shape != first.target.shape for p in problems) or any(
        isinstance(p.operator, HeldOut) for p in problems
    ):
        return _stack_parts(problems)
    op = first.operator
    if isinstance(op, Mask):
        c = first.target.shape[1]
        op = Mask(torch.cat([p.operator.mask.expand(-1, c, -1, -1) for p in problems], dim=1)).to(first.z.device)
    refs = [p.reference for p in problems]
    stacked = FitProblem(
        net=stack_modules([p.net for p in problems]),
        z=stack_blocks([p.z for p in problems]),
        operator=op,
        target=stack_blocks([p.target for p in problems]),
        crop=first.crop,
        reference=stack_blocks(refs) if all(r is not None for r in refs) else None,
    )
    if not isinstance(op, (Identity, LanczosDown, Mask)):
        _check_channelwise(stacked)
    return stacked


def _stack_parts(problems: list[FitProblem]) -> FitProblem:
    """Fits of different sizes on one canvas: one net and code, each fit's box, operator, target and reference
    its own; the step cuts out the box that holds every fit's."""
    boxes = [p.crop for p in problems]
    top, left = min(b[0] for b in boxes), min(b[1] for b in boxes)
    bottom, right = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return FitProblem(
        net=stack_modules([p.net for p in problems]),
        z=stack_blocks([p.z for p in problems]),
        operator=None,
        target=None,
        crop=(top, left, bottom - top, right - left),
        parts=[FitPart(p.crop, p.operator, p.target, p.reference) for p in problems],
    )


def _check_channelwise(p: FitProblem) -> None:
    """A caller's operator (``restore(operator=…)``) on stacked fits sees K·C channels: unless it acts on each
    channel alike, it fails or mixes the fits (a channel mean would even broadcast against the K targets)."""
    top, left, h, w = p.crop
    expected = tuple(p.target.shape)
    try:
        with torch.no_grad():  # one forward of the stacked net: no parameter or statistic changes
            got: object = tuple(p.operator(p.net(p.z)[..., top : top + h, left : left + w]).shape)
    except RuntimeError as exc:
        got = f"an error ({exc})"
    if got != expected:
        raise ConfigError(
            f"stacked fits need an operator that acts on each channel alike; on the stacked outputs it gives {got}, "
            f"not the stacked observations' {expected}: run the fits one by one (EngineOptions(batch_restarts=False))"
            " or side by side (batch_mode='threads', on a CPU)"
        )


def batch_refusal(p: TaskPreset) -> str | None:
    """Why ``restore_batch`` would refuse fits of preset ``p`` (None: they can be stacked), decided without a fit:
    restarts, a task whose definition refuses (the pre-image's classifier), and a net that fails to stack one of
    its own."""
    if p.restarts != 1:
        return f"restarts={p.restarts}: restore_batch runs one fit per image"
    if (refusal := get_task(p.task).batch_refusal) is not None:
        return refusal
    net = nets.get_net(p.net, in_channels=p.input_depth, out_channels=3, **p.net_options)
    try:
        stack_modules([net, net])
    except ConfigError as exc:
        return str(exc)
    return None
