"""The layers the nets of ``nets.py`` are built from: activations, normalisations, up- and downsampling, the
concatenation of branches, and ``Kit``, how one net makes its convolutions. ``batched.py`` stacks them and
``checkpointing.py`` looks for the one that draws noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .crop import center_crop
from .errors import ConfigError

__all__ = [
    "ACTS",
    "DOWNSAMPLES",
    "NORMS",
    "PADS",
    "UPSAMPLES",
    "Concat",
    "FillNoise",
    "Kit",
    "LanczosDown2",
    "ReflectionPad",
    "Residual",
    "Swish",
    "activation",
    "batch_norm",
    "check_choice",
    "lanczos_taps",
    "normalisation",
    "upsampling",
]

PADS = ("reflection", "zero")
DOWNSAMPLES = ("stride", "avg", "max", "lanczos2", "lanczos3")
UPSAMPLES = ("nearest", "bilinear")
ACTS = ("LeakyReLU", "Swish", "ELU", "ReLU", "none")
NORMS = ("batch", "instance", "none")


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


class Swish(nn.Module):
    """x · sigmoid(x), the reference code's "Swish"."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


class FillNoise(nn.Module):
    """Replaces its input by fresh N(0, 1) noise of ``channels`` channels on every call (the reference's GenNoise).

    Draws from torch's global RNG, so a net using it is not reproducible from ``reinitialise``'s generator alone.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        return torch.randn(n, self.channels, h, w, dtype=x.dtype, device=x.device)  # (N, C, H, W)


class Concat(nn.Module):
    """Runs every branch on the same input and concatenates the results along channels.

    Results are centre-cropped to the smallest H, W first, as in the reference code (sizes normally match).
    """

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        height, width = min(o.shape[2] for o in outs), min(o.shape[3] for o in outs)
        return torch.cat([center_crop(o, height, width) for o in outs], dim=1)  # (N, ΣC, h, w)


class Residual(nn.Sequential):
    """x + layers(x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x + super().forward(x)


def lanczos_taps(factor: int, support: int) -> Tensor:
    """1-D Lanczos-``support`` low-pass for downsampling by ``factor``, phase 0.5: 2·support·factor taps, sum 1.

    The same numbers as the reference code's downsampler kernel (and ``operators.lanczos_kernel``, whose outer
    product this is), kept here so that nets do not depend on operators.
    """
    d = (torch.arange(2 * support * factor, dtype=torch.float64) + 0.5 - support * factor).abs() / factor
    taps = torch.sinc(d) * torch.sinc(d / support)  # d is never 0 with phase 0.5
    return (taps / taps.sum()).float()


class LanczosDown2(nn.Module):
    """Fixed depthwise Lanczos low-pass with replicate padding, then every 2nd pixel: (N,C,H,W) -> (N,C,H/2,W/2)."""

    def __init__(self, channels: int, support: int) -> None:
        super().__init__()
        taps = lanczos_taps(2, support)
        kernel = torch.outer(taps, taps).expand(channels, 1, -1, -1).contiguous()  # (C, 1, k, k)
        self.register_buffer("kernel", kernel, persistent=False)  # a fixed function, not a weight
        self.pad = (kernel.shape[-1] - 2) // 2  # keeps the output at exactly H/2

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (self.pad,) * 4, mode="replicate")
        return F.conv2d(x, self.kernel, stride=2, groups=x.shape[1])  # (N, C, H/2, W/2)


def activation(name: str) -> nn.Module:
    check_choice("act", name, ACTS)
    if name == "LeakyReLU":
        return nn.LeakyReLU(0.2)  # slope 0.2 as the reference code; not in place, so hooks see the input
    if name == "Swish":
        return Swish()
    if name == "ELU":
        return nn.ELU()
    return nn.ReLU() if name == "ReLU" else nn.Identity()


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)  # always the batch's statistics


def normalisation(kind: str, channels: int) -> nn.Module:
    check_choice("norm", kind, NORMS)
    if kind == "batch":
        return batch_norm(channels)
    return nn.InstanceNorm2d(channels) if kind == "instance" else nn.Identity()


def upsampling(mode: str, factor: int = 2) -> nn.Upsample:
    check_choice("upsample", mode, UPSAMPLES)
    return nn.Upsample(scale_factor=factor, mode=mode, align_corners=False if mode == "bilinear" else None)


class ReflectionPad(nn.ReflectionPad2d):
    """Reflection padding in its input's dtype. CPU autocast runs ``reflection_pad2d`` in fp32, so a bf16
    activation would be cast up here and back down by the next convolution; padding only copies values, so bf16 in,
    bf16 out gives the same numbers without the two casts (measured: benchmarks/RESULTS.md)."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)


@dataclass(frozen=True)
class Kit:
    """How the convolutions of one net are made: padding, bias, normalisation, activation."""

    pad: str = "reflection"
    bias: bool = True
    norm: str = "batch"
    act: str = "LeakyReLU"

    def conv(self, cin: int, cout: int, k: int, downsample: str | None = None) -> nn.Sequential:
        """k×k convolution keeping H, W, or halving them with the given ``downsample`` mode."""
        layers: list[nn.Module] = []
        padding = (k - 1) // 2
        if self.pad == "reflection" and padding:
            layers.append(ReflectionPad(padding))
            padding = 0
        stride = 2 if downsample == "stride" else 1
        layers.append(nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=self.bias))
        if downsample in ("avg", "max"):
            layers.append(nn.AvgPool2d(2) if downsample == "avg" else nn.MaxPool2d(2))
        elif downsample in ("lanczos2", "lanczos3"):
            layers.append(LanczosDown2(cout, support=int(downsample[-1])))
        return nn.Sequential(*layers)

    def block(self, cin: int, cout: int, k: int, downsample: str | None = None) -> list[nn.Module]:
        """conv → norm → act."""
        return [self.conv(cin, cout, k, downsample), normalisation(self.norm, cout), activation(self.act)]

    def double(self, cin: int, cout: int) -> list[nn.Module]:
        """(3×3 conv → norm → act) twice, the U-Net's unit."""
        return self.block(cin, cout, 3) + self.block(cout, cout, 3)
