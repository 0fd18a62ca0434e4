"""Input codes z and observation operators A(x) of the Deep Image Prior.

Every task fits ``min_θ ‖A(f_θ(z)) − y‖²``: the operator says how the restored image x would have been observed.
Operators are ``nn.Module``s whose constant tensors (masks, kernels) are buffers, so ``.to(device)`` moves them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

__all__ = [
    "ALEXNET_LAYERS",
    "Features",
    "Identity",
    "LanczosDown",
    "Mask",
    "Operator",
    "alexnet",
    "lanczos_kernel",
    "meshgrid_code",
    "noise_code",
]


# ---------------------------------------------------------------------------------------------------------------------
# Input codes


def noise_code(
    depth: int, height: int, width: int, *, generator: torch.Generator, scale: float = 0.1, device=None
) -> Tensor:
    """z ~ U(0, 1)·scale with ``depth`` channels, the paper's default input (scale 0.1 as in the published code)."""
    z = torch.rand(1, depth, height, width, generator=generator, device=generator.device)  # (1, D, H, W)
    return (z * scale).to(device or generator.device)


def meshgrid_code(height: int, width: int, *, device=None) -> Tensor:
    """z = (X, Y) coordinates in [0, 1]: two channels, used for large-hole inpainting (vase)."""
    ys = torch.linspace(0, 1, height, device=device)
    xs = torch.linspace(0, 1, width, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])[None]  # (1, 2, H, W)


# ---------------------------------------------------------------------------------------------------------------------
# Operators


class Operator(nn.Module):
    """A linear or non-linear observation model ``y = A(x)``; ``forward`` is ``A``."""

    def A(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> observation
        raise NotImplementedError

    def A_adjoint(self, y: Tensor, x_shape: torch.Size) -> Tensor:
        """Aᵀy for a linear A, exact for any padding: the gradient of ⟨A(x), y⟩ with respect to x."""
        x = torch.zeros(x_shape, dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad((self.A(x) * y).sum(), x)
        return grad

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of A(x) for an x of ``height × width``."""
        return height, width

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)


class Identity(Operator):
    """y = x: denoising, blind JPEG restoration, flash/no-flash, the reconstruction experiment."""

    def A(self, x: Tensor) -> Tensor:
        return x


def lanczos_kernel(factor: int, *, support: int = 2, phase: float = 0.5) -> np.ndarray:
    """The 2-D separable Lanczos-``support`` low-pass kernel of the published downsampler, normalised to sum 1.

    With phase 0.5 it has ``2·support·factor`` taps a side (4f × 4f for Lanczos-2), centred between pixels, so
    that keeping every f-th sample of the filtered image lands on the centres of the low-resolution pixels.
    """
    if factor < 1 or support < 1 or phase not in (0, 0.5):
        raise ConfigError(
            f"lanczos_kernel needs factor ≥ 1, support ≥ 1, phase 0 or 0.5; got {factor=} {support=} {phase=}"
        )
    taps = 2 * support * factor if phase == 0.5 else 2 * support * factor + 1
    centre = (taps + 1) / 2  # 1-based; between the two middle taps when taps is even (phase 0.5)
    offsets = np.arange(1, taps + 1, dtype=np.float64) - centre
    d = np.abs(offsets) / factor
    with np.errstate(divide="ignore", invalid="ignore"):
        k = support * np.sin(np.pi * d) * np.sin(np.pi * d / support) / (np.pi**2 * d**2)
    k[d == 0] = 1.0
    k[d >= support] = 0.0
    kernel = np.outer(k, k)
    return (kernel / kernel.sum()).astype(np.float32)


class LanczosDown(Operator):
    """y = S(k * x): Lanczos-2 low-pass k (replicate padding), then keep every f-th pixel (SR ×2/×4/×8)."""

    def __init__(self, factor: int, *, support: int = 2, phase: float = 0.5):
        super().__init__()
        self.factor = factor
        kernel = torch.from_numpy(lanczos_kernel(factor, support=support, phase=phase))
        self.register_buffer("kernel", kernel[None, None], persistent=False)  # (1, 1, kH, kW)
        total = kernel.shape[0] - factor  # padding that keeps H/f outputs for an H input
        self._pad = (total // 2, total - total // 2) * 2  # (left, right, top, bottom)

    def A(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C, H/f, W/f)
        c = x.shape[1]
        x = F.pad(x, self._pad, mode="replicate")
        weight = self.kernel.to(x.dtype).expand(c, 1, -1, -1)
        return F.conv2d(x, weight, stride=self.factor, groups=c)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.factor, width // self.factor


class Mask(Operator):
    """y = m ⊙ x: inpainting; m is 1 on known pixels and 0 on missing ones."""

    def __init__(self, mask: Tensor):
        super().__init__()
        if mask.dim() == 2:
            mask = mask[None, None]
        elif mask.dim() == 3:
            mask = mask[None]
        self.register_buffer("mask", mask.float(), persistent=False)  # (1, 1|C, H, W)

    def A(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Features of a classifier (natural pre-image)

# Layer names in the order AlexNet computes them; the module indices follow torchvision's AlexNet, so its
# published state dict (``features.N.*`` / ``classifier.N.*``) loads unchanged from a local file.
ALEXNET_LAYERS = (
    "conv1",
    "relu1",
    "pool1",
    "conv2",
    "relu2",
    "pool2",
    "conv3",
    "relu3",
    "conv4",
    "relu4",
    "conv5",
    "relu5",
    "pool5",
    "fc6",
    "relu6",
    "fc7",
    "relu7",
    "fc8",
)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _AlexNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        # Dropout layers sit at indices 0 and 3 in torchvision; identity here since DIP never samples them.
        self.classifier = nn.Sequential(
            nn.Identity(),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(),
            nn.Identity(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, 1000),
        )

    def layers(self) -> list[nn.Module]:
        """The modules in ALEXNET_LAYERS order (flatten happens before fc6)."""
        f, c = self.features, self.classifier
        return [*f, c[1], c[2], c[4], c[5], c[6]]


def alexnet(weights: str | Path | None = None, *, generator: torch.Generator | None = None) -> nn.Module:
    """An AlexNet-shaped classifier (Krizhevsky et al. 2012, torchvision's layout).

    ``weights`` is a local ``state_dict`` file (torchvision's ``alexnet-owt-*.pth`` works); nothing is ever
    downloaded. Without weights the network is randomly initialised from ``generator`` (tests use this).
    """
    net = _AlexNet()
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"AlexNet weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, _unexpected = net.load_state_dict(state, strict=False)
        if missing:
            raise ConfigError(f"{path} is not an AlexNet state dict: missing {sorted(missing)[:4]}…")
    elif generator is not None:
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                with torch.no_grad():
                    m.weight.uniform_(-bound, bound, generator=generator)
                    m.bias.uniform_(-bound, bound, generator=generator)
    return net.eval().requires_grad_(False)


class Features(Operator):
    """y = Φ_L(x): the activations of a classifier up to layer L (natural pre-image; fc6 in the paper's Figure 9)."""

    def __init__(self, classifier: nn.Module, layer: str = "fc6", *, input_size: int = 224):
        super().__init__()
        if layer not in ALEXNET_LAYERS:
            raise ConfigError(f"unknown layer {layer!r}; choose one of {', '.join(ALEXNET_LAYERS)}")
        self.classifier = classifier
        self.layer = layer
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def A(self, x: Tensor) -> Tensor:  # (N, 3, H, W) -> features of layer L
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        h = (x - self.mean) / self.std
        stop = ALEXNET_LAYERS.index(self.layer)
        # Only up to the layer asked for: the net's layers go on past it.
        for name, module in zip(ALEXNET_LAYERS[: stop + 1], self.classifier.layers(), strict=False):
            if name == "fc6":
                h = torch.flatten(self.classifier.avgpool(h), 1)  # (N, 9216)
            h = module(h)
        return h
