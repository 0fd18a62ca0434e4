"""Generators of the Deep Image Prior: map a fixed input code z to an image, x = f_θ(z).

Sources: the paper (Ulyanov, Vedaldi, Lempitsky, "Deep Image Prior", CVPR 2018, https://arxiv.org/abs/1711.10925)
and the code its authors published (DmitryUlyanov/deep-image-prior, "the reference code" below); ``shared/REFERENCE.md``
gathers the figures. Every builder is keyword-only and each default names where it comes from.

All nets take a code (N, C_in, H, W) and return (N, C_out, H, W) in (0, 1), except ``deep_decoder``, whose code is
2**(num_layers-1) times smaller (see ``deep_decoder_input_shape``). H and W must be multiples of
``required_multiple(name, **options)``.

BatchNorm keeps no running statistics: DIP fits one image and never needs an eval mode, so every forward pass
normalises with the statistics of the batch at hand, also after ``.eval()``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import (
    ACTS,
    DOWNSAMPLES,
    NORMS,
    PADS,
    UPSAMPLES,
    Concat,
    FillNoise,
    Kit,
    Residual,
    activation,
    batch_norm,
    check_choice,
    normalisation,
    upsampling,
)
from .crop import center_crop
from .errors import ConfigError

__all__ = [
    "NET_SPECS",
    "NetSpec",
    "canvas_size",
    "code_size",
    "deep_decoder",
    "deep_decoder_input_shape",
    "get_net",
    "min_canvas",
    "option_names",
    "register_net",
    "reinitialise",
    "required_multiple",
    "resnet",
    "skip",
    "texture_nets",
    "unet",
    "width_options",
]

Options = dict[str, Any]  # a builder's keywords, every one bound (``_bind``)


def _channels(options: Options, channels: int) -> Options:
    return {"channels": channels}


@dataclass(frozen=True)
class NetSpec:
    """A registered net: its builder and what the code around it reads of it instead of comparing names."""

    name: str
    build: Callable[..., nn.Module]
    multiple: Callable[[Options], int]  # H and W must be multiples of it
    # The (h, w) of the code for an H×W image, for a net whose code has a size of its own (then it is noise); None:
    # the code is the image's size (noise, a meshgrid or a guide).
    code_size: Callable[[int, int, Options], tuple[int, int]] | None = None
    width: Callable[[Options, int], Options] = _channels  # the options that make it `channels` wide (`channels=`)


NET_SPECS: dict[str, NetSpec] = {}
"""The registered nets by name, in the order of this file (``register_net``)."""


def register_net(
    *,
    multiple: Callable[[Options], int] = lambda options: 1,
    code_size: Callable[[int, int, Options], tuple[int, int]] | None = None,
    width: Callable[[Options, int], Options] = _channels,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Registers the decorated builder under its own name in ``NET_SPECS``, with its metadata (as torchvision's
    ``register_model``)."""

    def register(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        NET_SPECS[build.__name__] = NetSpec(build.__name__, build, multiple, code_size, width)
        return build

    return register


# ---------------------------------------------------------------------------------------------------------------------
# skip: the paper's encoder-decoder


@dataclass(frozen=True)
class _Scale:
    """The options of one scale of ``skip``, named as its keywords."""

    channels_down: int
    channels_up: int
    channels_skip: int
    filter_size_down: int
    filter_size_up: int
    filter_size_skip: int
    downsample: str
    upsample: str


def _skip_scales(**per_scale: int | str | Sequence[int | str]) -> list[_Scale]:
    """Broadcasts scalars to every scale; the number of scales is the length of the sequences given (5 if none)."""
    lengths = {name: len(v) for name, v in per_scale.items() if not isinstance(v, (int, str))}
    n = next(iter(lengths.values()), 5)
    if n < 1 or any(length != n for length in lengths.values()):
        raise ConfigError(f"per-scale options of skip need one common, non-zero length; got {lengths}")
    cols = {name: [v] * n if isinstance(v, (int, str)) else list(v) for name, v in per_scale.items()}
    scales = [_Scale(**{f.name: cols[f.name][i] for f in fields(_Scale)}) for i in range(n)]
    for s in scales:
        if min(s.channels_down, s.channels_up) < 1 or s.channels_skip < 0:
            raise ConfigError(f"skip needs channels_down, channels_up ≥ 1 and channels_skip ≥ 0, got {s}")
        if any(k < 1 or k % 2 == 0 for k in (s.filter_size_down, s.filter_size_up, s.filter_size_skip)):
            raise ConfigError(f"skip's filter sizes must be odd and positive, got {s}")
        check_choice("downsample", s.downsample, DOWNSAMPLES)
        check_choice("upsample", s.upsample, UPSAMPLES)
    return scales


def _skip_level(scales: list[_Scale], i: int, cin: int, kit: Kit, need_1x1_up: bool) -> list[nn.Module]:
    """The layers of scale i and, nested inside its deeper branch, of every coarser scale: (N,cin,H,W) -> (N,up,H,W)."""
    s, last = scales[i], i == len(scales) - 1
    deeper = [
        *kit.block(cin, s.channels_down, s.filter_size_down, s.downsample),  # (N, down, H/2, W/2)
        *kit.block(s.channels_down, s.channels_down, s.filter_size_down),
    ]
    if not last:
        deeper.append(nn.Sequential(*_skip_level(scales, i + 1, s.channels_down, kit, need_1x1_up)))
    deeper.append(upsampling(s.upsample))  # (N, k, H, W)
    k = s.channels_down if last else scales[i + 1].channels_up
    if s.channels_skip:
        skip_branch = nn.Sequential(*kit.block(cin, s.channels_skip, s.filter_size_skip))
        layers: list[nn.Module] = [Concat(skip_branch, nn.Sequential(*deeper))]  # (N, skip + k, H, W)
    else:
        layers = [nn.Sequential(*deeper)]
    layers += [batch_norm(s.channels_skip + k), *kit.block(s.channels_skip + k, s.channels_up, s.filter_size_up)]
    if need_1x1_up:
        layers += kit.block(s.channels_up, s.channels_up, 1)
    return layers


def _skip_width(options: Options, channels: int) -> Options:
    """Every scale `channels` wide, down and up, as many scales as it has."""
    n = len(options.get("channels_down", (0,) * 5))
    return {"channels_down": (channels,) * n, "channels_up": (channels,) * n}


@register_net(
    multiple=lambda a: 2 ** len(_skip_scales(**{f.name: a[f.name] for f in fields(_Scale)})), width=_skip_width
)
def skip(
    *,
    in_channels: int = 32,
    out_channels: int = 3,
    channels_down: int | Sequence[int] = (128,) * 5,
    channels_up: int | Sequence[int] = (128,) * 5,
    channels_skip: int | Sequence[int] = (4,) * 5,
    filter_size_down: int | Sequence[int] = 3,
    filter_size_up: int | Sequence[int] = 3,
    filter_size_skip: int | Sequence[int] = 1,
    pad: str = "reflection",
    downsample: str | Sequence[str] = "stride",
    upsample: str | Sequence[str] = "bilinear",
    act: str = "LeakyReLU",
    need_1x1_up: bool = True,
    sigmoid: bool = True,
    bias: bool = True,
) -> nn.Sequential:
    """The paper's encoder-decoder with skip connections ("hourglass"), 2,217,831 parameters with the defaults.

    Per scale, outermost first: a skip branch (conv ``filter_size_skip`` → BN → act, ``channels_skip`` channels,
    none when 0) beside a deeper branch (conv stride 2 → BN → act, conv → BN → act, the next scale, ×2 upsampling),
    concatenated, then BN, conv ``filter_size_up`` → BN → act and, with ``need_1x1_up``, a 1×1 conv → BN → act.
    Head: a 1×1 conv to ``out_channels`` and a sigmoid. H and W must be multiples of 2**scales.

    Defaults are the paper's (Section 4 and supplementary): a 32-channel code, 5 scales of 128 channels down and up,
    4 skip channels, 3×3 filters, reflection padding, stride-2 downsampling, LeakyReLU(0.2); bilinear upsampling,
    the 1×1 convs after each up block, the 1×1 skip filters and the bias are the reference code's. Per-scale options
    take a scalar (every scale) or one value per scale; their length sets the number of scales.

    ``downsample``: "stride", "avg", "max", "lanczos2", "lanczos3"; ``upsample``: "nearest", "bilinear";
    ``pad``: "reflection", "zero"; ``act``: "LeakyReLU", "Swish", "ELU", "ReLU", "none".
    """
    check_choice("pad", pad, PADS)
    check_choice("act", act, ACTS)
    scales = _skip_scales(
        channels_down=channels_down,
        channels_up=channels_up,
        channels_skip=channels_skip,
        filter_size_down=filter_size_down,
        filter_size_up=filter_size_up,
        filter_size_skip=filter_size_skip,
        downsample=downsample,
        upsample=upsample,
    )
    kit = Kit(pad=pad, bias=bias, act=act)
    head = [kit.conv(scales[0].channels_up, out_channels, 1)] + ([nn.Sigmoid()] if sigmoid else [])
    return nn.Sequential(*_skip_level(scales, 0, in_channels, kit, need_1x1_up), *head)


# ---------------------------------------------------------------------------------------------------------------------
# unet


class _UNetUp(nn.Module):
    """×2 upsampling of the deeper features, concatenation with the skip features, two conv → ReLU."""

    def __init__(self, cin: int, cout: int, mode: str, kit: Kit) -> None:
        super().__init__()
        if mode == "deconv":
            self.up: nn.Module = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=kit.bias)
        else:
            self.up = nn.Sequential(upsampling(mode), kit.conv(cin, cout, 3))
        self.conv = nn.Sequential(*kit.double(2 * cout, cout))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)  # (N, cout, 2h, 2w)
        skip = center_crop(skip, x.shape[2], x.shape[3])  # (N, cout, 2h, 2w)
        return self.conv(torch.cat([x, skip], dim=1))


class _UNet(nn.Module):
    """U-Net as the reference code's: max-pool downs, up blocks without normalisation, optional input pyramid."""

    def __init__(self, in_channels: int, widths: list[int], upsample: str, concat_x: bool, kit: Kit) -> None:
        super().__init__()
        self.concat_x = concat_x
        x_channels = in_channels if concat_x else 0  # the (pooled) input fills the last channels of each level
        self.start = nn.Sequential(*kit.double(in_channels, widths[0] - x_channels))
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), *kit.double(cin, cout - x_channels)) for cin, cout in pairwise(widths)
        )
        up_kit = replace(kit, norm="none")  # the reference code's up blocks have no normalisation
        self.ups = nn.ModuleList(_UNetUp(cin, cout, upsample, up_kit) for cout, cin in pairwise(widths))

    def forward(self, x: Tensor) -> Tensor:
        feats = [self._with_x(self.start(x), x)]  # (N, w0, H, W)
        pooled = x
        for down in self.downs:
            pooled = F.avg_pool2d(pooled, 2) if self.concat_x else pooled
            feats.append(self._with_x(down(feats[-1]), pooled))  # (N, w_i, H/2^i, W/2^i)
        y = feats.pop()
        for up in reversed(self.ups):
            y = up(y, feats.pop())
        return y  # (N, w0, H, W)

    def _with_x(self, features: Tensor, x: Tensor) -> Tensor:
        return torch.cat([features, x], dim=1) if self.concat_x else features


@register_net(multiple=lambda a: 2 ** (4 + int(a["more_layers"])))
def unet(
    *,
    in_channels: int = 32,
    out_channels: int = 3,
    feature_scale: int = 4,
    more_layers: int = 0,
    concat_x: bool = False,
    upsample: str = "deconv",
    pad: str = "zero",
    norm: str = "batch",
    sigmoid: bool = True,
    bias: bool = True,
) -> nn.Sequential:
    """U-Net (Ronneberger et al. 2015) as in the reference code: widths [64, 128, 256, 512, 1024] // feature_scale.

    Four max-pool downs (plus ``more_layers`` more at the deepest width), each two 3×3 conv → norm → ReLU; up blocks
    upsample ("deconv": a 4×4 transposed conv; "bilinear"/"nearest": ×2 then a 3×3 conv), concatenate the skip and
    apply two 3×3 conv → ReLU. ``concat_x`` appends the average-pooled input to every level. Head: 1×1 conv, sigmoid.
    H and W must be multiples of 2**(4 + more_layers).

    Defaults are the reference code's UNet (feature scale 4, deconv, zero padding, bias) with the BatchNorm its
    ``get_net`` passes; the input pyramid and extra layers are off there too.
    """
    check_choice("upsample", upsample, ("deconv", *UPSAMPLES))
    check_choice("pad", pad, PADS)
    check_choice("norm", norm, NORMS)
    widths = [w // feature_scale for w in (64, 128, 256, 512, 1024)]
    widths += [widths[-1]] * more_layers
    if feature_scale < 1 or more_layers < 0 or min(widths) - (in_channels if concat_x else 0) < 1:
        raise ConfigError(f"unet widths {widths} are too narrow ({feature_scale=}, {concat_x=}, {in_channels=})")
    kit = Kit(pad=pad, bias=bias, norm=norm, act="ReLU")
    head = [kit.conv(widths[0], out_channels, 1)] + ([nn.Sigmoid()] if sigmoid else [])
    return nn.Sequential(_UNet(in_channels, widths, upsample, concat_x, kit), *head)


# ---------------------------------------------------------------------------------------------------------------------
# resnet


@register_net()
def resnet(
    *,
    in_channels: int = 32,
    out_channels: int = 3,
    num_blocks: int = 8,
    channels: int = 32,
    act: str = "LeakyReLU",
    norm: str = "batch",
    sigmoid: bool = True,
    pad: str = "reflection",
) -> nn.Sequential:
    """A residual net at full resolution, as the reference code's ResNet meant to be (its builder mixed up arguments).

    conv → act; a residual path of ``num_blocks`` blocks (conv → norm → act → conv → norm, plus identity) and
    conv → norm, added to the first features; a 3×3 conv to ``out_channels``; sigmoid. Any H, W.

    Defaults: 8 blocks of 32 channels are dipflow's choice (the reference code's call passed its arguments in the
    wrong order); LeakyReLU, BatchNorm and reflection padding are the reference code's. Convs before a norm have
    no bias, as there.
    """
    check_choice("pad", pad, PADS)
    check_choice("norm", norm, NORMS)
    check_choice("act", act, ACTS)
    if num_blocks < 0 or channels < 1:
        raise ConfigError(f"resnet needs num_blocks ≥ 0 and channels ≥ 1, got {num_blocks=} {channels=}")
    kit = Kit(pad=pad, bias=norm == "none", norm=norm, act=act)  # a norm cancels a bias
    plain = Kit(pad=pad, act=act)
    blocks = [
        Residual(*kit.block(channels, channels, 3), kit.conv(channels, channels, 3), normalisation(norm, channels))
        for _ in range(num_blocks)
    ]
    body = Residual(*blocks, kit.conv(channels, channels, 3), normalisation(norm, channels))  # + the first features
    head = [plain.conv(channels, out_channels, 3)] + ([nn.Sigmoid()] if sigmoid else [])
    return nn.Sequential(plain.conv(in_channels, channels, 3), activation(act), body, *head)


# ---------------------------------------------------------------------------------------------------------------------
# texture_nets


def _texture_branch(in_channels: int, conv_num: int, ratio: int, kit: Kit, fill_noise: bool) -> list[nn.Module]:
    """Average-pool the code by ``ratio``, then 3×3, 3×3, 1×1 conv → BN → LeakyReLU: (N,C,H,W) -> (N,n,H/r,W/r)."""
    layers: list[nn.Module] = [nn.AvgPool2d(ratio)] + ([FillNoise(in_channels)] if fill_noise else [])
    layers += kit.block(in_channels, conv_num, 3) + kit.block(conv_num, conv_num, 3)
    return layers + kit.block(conv_num, conv_num, 1)


@register_net(multiple=lambda a: max(a["ratios"]))
def texture_nets(
    *,
    in_channels: int = 32,
    out_channels: int = 3,
    ratios: Sequence[int] = (32, 16, 8, 4, 2, 1),
    fill_noise: bool = False,
    pad: str = "zero",
    sigmoid: bool = True,
    conv_num: int = 8,
    upsample: str = "nearest",
) -> nn.Sequential:
    """The multi-scale texture network (Ulyanov et al., "Texture Networks", ICML 2016) as in the reference code.

    One branch per ratio (the code average-pooled by it, then 3×3, 3×3, 1×1 conv → BN → LeakyReLU with ``conv_num``
    channels); from the coarsest, the merged features are upsampled to the next ratio, BN'd, concatenated with that
    branch (also BN'd) and passed through 3×3, 3×3, 1×1 conv → BN → LeakyReLU; a final 1×1 conv to ``out_channels``
    and a sigmoid. ``fill_noise`` replaces the code by fresh noise on every call (global RNG). H and W must be
    multiples of max(ratios); each ratio must divide the previous one and the last must be 1.

    Defaults are the reference code's (ratios 32…1, 8 channels, zero padding, nearest upsampling); the sigmoid is on
    here, as DIP images lie in (0, 1). Padding is integral (the reference code's float padding fails on current torch).
    """
    check_choice("pad", pad, PADS)
    check_choice("upsample", upsample, UPSAMPLES)
    ratios = list(ratios)
    if not ratios or ratios[-1] != 1 or any(a <= b or a % b for a, b in pairwise(ratios)) or conv_num < 1:
        raise ConfigError(
            f"texture_nets needs decreasing ratios, each a multiple of the next, ending in 1, and "
            f"conv_num ≥ 1; got {ratios} ({conv_num=})"
        )
    kit = Kit(pad=pad)
    net = nn.Sequential(*_texture_branch(in_channels, conv_num, ratios[0], kit, fill_noise))
    c = conv_num  # channels of ``net``'s output
    for coarse, fine in pairwise(ratios):
        coarser = nn.Sequential(*net, upsampling(upsample, coarse // fine), batch_norm(c))  # (N, c, H/fine, W/fine)
        branch = nn.Sequential(*_texture_branch(in_channels, conv_num, fine, kit, fill_noise), batch_norm(conv_num))
        c += conv_num
        net = nn.Sequential(Concat(coarser, branch), *kit.block(c, c, 3), *kit.block(c, c, 3), *kit.block(c, c, 1))
    return nn.Sequential(*net, kit.conv(c, out_channels, 1), *([nn.Sigmoid()] if sigmoid else []))


# ---------------------------------------------------------------------------------------------------------------------
# deep_decoder


def deep_decoder_input_shape(height: int, width: int, num_layers: int = 5) -> tuple[int, int]:
    """The spatial size (h, w) of the code from which ``deep_decoder(num_layers=…)`` makes an H×W image."""
    factor = 2 ** (num_layers - 1)
    if num_layers < 1 or height % factor or width % factor:
        raise ConfigError(f"deep_decoder, {num_layers} layers: H, W must be multiples of {factor}: {height}×{width}")
    return height // factor, width // factor


@register_net(
    multiple=lambda a: 2 ** (int(a["num_layers"]) - 1),
    code_size=lambda h, w, a: deep_decoder_input_shape(h, w, num_layers=a["num_layers"]),
)
def deep_decoder(
    *,
    in_channels: int = 64,
    out_channels: int = 3,
    channels: int = 64,
    num_layers: int = 5,
    upsample: str = "bilinear",
    sigmoid: bool = True,
) -> nn.Sequential:
    """Deep Decoder (Heckel & Hand, ICLR 2019, https://arxiv.org/abs/1810.03982): 21,312 parameters by default.

    Per layer: 1×1 conv without bias → ×2 upsampling (not in the last layer) → ReLU → BN; then a 1×1 conv to
    ``out_channels`` and a sigmoid. The code is 2**(num_layers-1) times smaller than the image, (N, in_channels,
    H/16, W/16) by default: size it with ``deep_decoder_input_shape``.

    Defaults: 64 channels (the paper's k = 64), 5 layers, bilinear upsampling as in the paper's code.
    """
    check_choice("upsample", upsample, UPSAMPLES)
    if num_layers < 1 or channels < 1:
        raise ConfigError(f"deep_decoder needs num_layers ≥ 1 and channels ≥ 1, got {num_layers=} {channels=}")
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(nn.Conv2d(in_channels if i == 0 else channels, channels, 1, bias=False))
        layers += [upsampling(upsample)] if i < num_layers - 1 else []  # (N, channels, 2h, 2w)
        layers += [nn.ReLU(), batch_norm(channels)]
    layers.append(nn.Conv2d(channels, out_channels, 1, bias=False))
    return nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []))


# ---------------------------------------------------------------------------------------------------------------------
# By name


def _bind(name: str, kwargs: dict[str, object]) -> dict[str, object]:
    """All of the builder's keywords, the caller's over the defaults; ConfigError on an unknown name or keyword."""
    if name not in NET_SPECS:
        raise ConfigError(f"unknown net {name!r}; choose one of {', '.join(NET_SPECS)}")
    params = inspect.signature(NET_SPECS[name].build).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(f"net {name!r} has no option {', '.join(unknown)}; its options are {', '.join(params)}")
    return {k: kwargs.get(k, p.default) for k, p in params.items()}


def get_net(name: str, **kwargs: object) -> nn.Module:
    """Builds the net ``name`` (a key of ``NET_SPECS``) with the given options."""
    _bind(name, kwargs)
    return NET_SPECS[name].build(**kwargs)


def required_multiple(net_name: str, **kwargs: object) -> int:
    """The number H and W of the image must be multiples of, for ``get_net(net_name, **kwargs)``."""
    options = _bind(net_name, kwargs)  # ConfigError on an unknown name first
    return NET_SPECS[net_name].multiple(options)


def code_size(net_name: str, height: int, width: int, **kwargs: object) -> tuple[int, int] | None:
    """The (h, w) of the noise code from which the net makes an ``height × width`` image, where its code has a size
    of its own (``deep_decoder``'s, ``deep_decoder_input_shape``); None where the code is the image's size."""
    size = NET_SPECS[net_name].code_size if net_name in NET_SPECS else None
    return size(height, width, _bind(net_name, kwargs)) if size is not None else None


def width_options(net_name: str, options: Options, channels: int) -> Options:
    """The options that make net ``net_name`` ``channels`` wide, ``options`` being its current ones: every scale of
    ``skip``, ``channels`` elsewhere (an unknown name, or a net without that option, is refused when it is built)."""
    spec = NET_SPECS.get(net_name)
    return spec.width(options, channels) if spec is not None else _channels(options, channels)


def option_names() -> set[str]:
    """Every net option a preset may set: the keywords of the builders but the channels of the code and image."""
    names = {k for spec in NET_SPECS.values() for k in inspect.signature(spec.build).parameters}
    return names - {"in_channels", "out_channels"}


def min_canvas(net_name: str, **kwargs: object) -> int:
    """The smallest H and W the net runs on: BatchNorm needs more than one value per channel at the deepest scale,
    and reflection padding there a map wider than the pad (5×5 filters: 3 pixels)."""
    sizes = _bind(net_name, kwargs).get("filter_size_down", 3)
    pad = (max(sizes) if isinstance(sizes, (tuple, list)) else sizes) // 2  # type: ignore[call-overload, operator]
    return required_multiple(net_name, **kwargs) * max(2, pad + 1)


def canvas_size(net_name: str, height: int, width: int, **kwargs: object) -> tuple[int, int]:
    """``(Hc, Wc)``: the canvas the net runs on for an ``height × width`` image — each side rounded up to
    ``required_multiple`` and at least ``min_canvas``. The image sits centred in it (``dipcore.crop.center_box``).

    >>> canvas_size("skip", 100, 300)
    (128, 320)
    """
    multiple = required_multiple(net_name, **kwargs)
    side = min_canvas(net_name, **kwargs)
    hc, wc = (max(side, math.ceil(n / multiple) * multiple) for n in (height, width))
    return hc, wc


# ---------------------------------------------------------------------------------------------------------------------
# Reproducible initialisation


def _uniform_(t: Tensor, bound: float, generator: torch.Generator) -> None:
    # Drawn on the generator's device, then copied: the same seed gives the same weights on CPU and GPU.
    draw = torch.empty(t.shape, dtype=t.dtype, device=generator.device).uniform_(-bound, bound, generator=generator)
    t.copy_(draw)


@torch.no_grad()
def reinitialise(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draws every weight of ``module`` from ``generator``, whatever the global RNG state; returns ``module``.

    Convolutions (and linear layers) as torch's default: Kaiming-uniform weights with a = √5 and biases uniform in
    ±1/√fan_in; normalisation layers to weight 1, bias 0. Walks ``module.modules()``, so nested layers are reached;
    a layer with parameters of any other kind raises TypeError rather than keep weights from the global RNG.
    """
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    for m in module.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
            _uniform_(m.weight, gain * math.sqrt(3.0 / fan_in), generator)
            if m.bias is not None:
                _uniform_(m.bias, 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0, generator)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            if m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            if m.track_running_stats:
                m.reset_running_stats()
        elif next(m.parameters(recurse=False), None) is not None:
            raise TypeError(f"reinitialise does not know how to initialise {type(m).__name__}")
    return module
