"""Tests of dipcore.nets: structure against the paper's figures, shapes, per-batch BatchNorm, reproducible init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dipcore import blocks, nets
from dipcore.errors import ConfigError

# Narrow configurations of every net, so that a forward pass at 64×64 takes milliseconds.
SMALL = {
    "skip": dict(in_channels=8, channels_down=8, channels_up=8, channels_skip=2),
    "unet": dict(in_channels=8, feature_scale=16),
    "resnet": dict(in_channels=8, num_blocks=2, channels=8),
    "texture_nets": dict(in_channels=8, conv_num=4),
    "deep_decoder": dict(in_channels=8, channels=8),
}


# Tensors here are small: intra-op threads only add overhead, badly so on a loaded CI machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _code(name: str, options: dict, size: int = 64, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = (
        nets.deep_decoder_input_shape(size, size, options.get("num_layers", 5))
        if name == "deep_decoder"
        else (size, size)
    )
    return torch.rand(batch, options["in_channels"], h, w, generator=g)  # (N, C, h, w)


def _build(name: str, seed: int = 0, **options) -> nn.Module:
    return nets.reinitialise(nets.get_net(name, **options), torch.Generator().manual_seed(seed))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _expected_skip_params(cin, cout, down, up, skip, k_down, k_up, k_skip, need_1x1_up=True) -> int:
    """The parameter count of skip() written out from the paper's description, independently of nets.py."""

    def conv(i, o, k):
        return i * o * k * k + o

    total = 0
    for i in range(len(down)):
        if skip[i]:
            total += conv(cin, skip[i], k_skip[i]) + 2 * skip[i]
        total += conv(cin, down[i], k_down[i]) + conv(down[i], down[i], k_down[i]) + 4 * down[i]
        k = up[i + 1] if i < len(down) - 1 else down[i]
        total += 2 * (skip[i] + k) + conv(skip[i] + k, up[i], k_up[i]) + 2 * up[i]
        if need_1x1_up:
            total += conv(up[i], up[i], 1) + 2 * up[i]
        cin = down[i]
    return total + conv(up[0], cout, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Structure


def test_skip_default_has_the_papers_parameter_count():
    assert _count(nets.skip()) == 2_217_831
    assert _expected_skip_params(32, 3, *[(128,) * 5] * 2, (4,) * 5, *[(3,) * 5] * 2, (1,) * 5) == 2_217_831


@pytest.mark.parametrize(
    "options, expected",
    [
        # blind JPEG (snail): skips only at the two deepest scales
        (
            dict(
                in_channels=3,
                channels_down=(8, 16, 32, 64, 128),
                channels_up=(8, 16, 32, 64, 128),
                channels_skip=(0, 0, 0, 4, 4),
            ),
            _expected_skip_params(
                3, 3, (8, 16, 32, 64, 128), (8, 16, 32, 64, 128), (0, 0, 0, 4, 4), (3,) * 5, (3,) * 5, (1,) * 5
            ),
        ),
        # per-scale filter sizes, 6 scales, no 1×1 up convs
        (
            dict(
                in_channels=4,
                out_channels=1,
                channels_down=(4, 6, 8, 8, 8, 8),
                channels_up=(5, 6, 7, 8, 8, 8),
                channels_skip=(1, 2, 0, 0, 3, 3),
                filter_size_down=(7, 7, 5, 5, 3, 3),
                filter_size_up=5,
                filter_size_skip=3,
                need_1x1_up=False,
            ),
            _expected_skip_params(
                4,
                1,
                (4, 6, 8, 8, 8, 8),
                (5, 6, 7, 8, 8, 8),
                (1, 2, 0, 0, 3, 3),
                (7, 7, 5, 5, 3, 3),
                (5,) * 6,
                (3,) * 6,
                need_1x1_up=False,
            ),
        ),
    ],
)
def test_skip_parameter_count_follows_per_scale_options(options, expected):
    assert _count(nets.skip(**options)) == expected


def test_skip_without_skip_channels_has_no_concat_at_those_scales():
    net = nets.skip(in_channels=3, channels_down=8, channels_up=8, channels_skip=(0, 0, 0, 4, 4))
    assert sum(isinstance(m, blocks.Concat) for m in net.modules()) == 2


def test_deep_decoder_default_parameter_count():
    assert _count(nets.deep_decoder()) == 5 * (64 * 64 + 2 * 64) + 64 * 3 == 21_312


# ---------------------------------------------------------------------------------------------------------------------
# Shapes and ranges


def test_small_configs_cover_every_net():
    assert set(SMALL) == set(nets.NET_SPECS)


@pytest.mark.parametrize("name", list(SMALL))
def test_every_net_maps_a_code_to_an_image_in_0_1(name):
    net = _build(name, **SMALL[name])
    y = net(_code(name, SMALL[name]))
    assert y.shape == (1, 3, 64, 64)
    assert y.min() > 0 and y.max() < 1


@pytest.mark.parametrize("name", list(SMALL))
def test_every_net_without_sigmoid_leaves_the_range(name):
    net = nets.get_net(name, **SMALL[name], sigmoid=False)
    assert not any(isinstance(m, nn.Sigmoid) for m in net.modules())


@pytest.mark.parametrize("mode", ["stride", "avg", "max", "lanczos2", "lanczos3"])
def test_skip_downsample_modes(mode):
    net = _build("skip", **SMALL["skip"], downsample=mode)
    assert net(_code("skip", SMALL["skip"])).shape == (1, 3, 64, 64)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    kinds = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d, "lanczos2": blocks.LanczosDown2, "lanczos3": blocks.LanczosDown2}
    if mode == "stride":
        assert sum(c.stride == (2, 2) for c in convs) == 5
    else:
        assert all(c.stride == (1, 1) for c in convs)
        assert sum(isinstance(m, kinds[mode]) for m in net.modules()) == 5


def test_skip_downsample_per_scale():
    net = nets.skip(**SMALL["skip"], downsample=("stride", "avg", "max", "lanczos2", "lanczos3"))
    assert net(_code("skip", SMALL["skip"])).shape == (1, 3, 64, 64)
    assert [m.kernel.shape[-1] for m in net.modules() if isinstance(m, blocks.LanczosDown2)] == [8, 12]


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_skip_upsample_modes(mode):
    net = _build("skip", **SMALL["skip"], upsample=mode)
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 5 and all(u.mode == mode and u.scale_factor == 2 for u in ups)
    assert all(u.align_corners is (False if mode == "bilinear" else None) for u in ups)
    assert net(_code("skip", SMALL["skip"])).shape == (1, 3, 64, 64)


def test_upsample_mode_changes_the_output():
    x = _code("skip", SMALL["skip"])
    outs = [_build("skip", **SMALL["skip"], upsample=mode)(x) for mode in ("nearest", "bilinear")]
    assert not torch.allclose(*outs)


@pytest.mark.parametrize("act, kind", [("LeakyReLU", nn.LeakyReLU), ("Swish", blocks.Swish), ("ELU", nn.ELU)])
def test_skip_activations(act, kind):
    net = _build("skip", **SMALL["skip"], act=act)
    assert sum(isinstance(m, kind) for m in net.modules()) == 5 * 4 + 5  # 4 per scale with a skip, 5 skip branches
    assert net(_code("skip", SMALL["skip"])).shape == (1, 3, 64, 64)


def test_skip_activation_none_has_no_nonlinearity_but_the_sigmoid():
    net = _build("skip", **SMALL["skip"], act="none")
    assert not any(isinstance(m, (nn.LeakyReLU, nn.ELU, blocks.Swish, nn.ReLU)) for m in net.modules())
    assert net(_code("skip", SMALL["skip"])).shape == (1, 3, 64, 64)


def test_leaky_relu_is_the_papers_and_not_in_place():
    relus = [m for m in nets.skip(**SMALL["skip"]).modules() if isinstance(m, nn.LeakyReLU)]
    assert relus and all(r.negative_slope == 0.2 and not r.inplace for r in relus)


def test_swish_is_x_times_sigmoid():
    x = torch.linspace(-4, 4, 17)
    assert torch.allclose(blocks.Swish()(x), x * torch.sigmoid(x))


def test_six_scale_skip():
    options = dict(
        in_channels=1,
        channels_down=(4, 4, 8, 8, 8, 8),
        channels_up=(4, 4, 8, 8, 8, 8),
        channels_skip=0,
        filter_size_down=(7, 7, 5, 5, 3, 3),
    )
    net = _build("skip", **options)
    assert nets.required_multiple("skip", **options) == 64
    # 128², not 64²: at 64² the sixth scale is 1×1, where per-image BatchNorm has a single value per channel.
    y = net(_code("skip", options, size=128))
    assert y.shape == (1, 3, 128, 128)
    assert sum(isinstance(m, nn.Upsample) for m in net.modules()) == 6


@pytest.mark.parametrize("upsample", ["deconv", "bilinear", "nearest"])
@pytest.mark.parametrize("concat_x, more_layers", [(False, 0), (True, 1)])
def test_unet_variants(upsample, concat_x, more_layers):
    options = dict(in_channels=2, feature_scale=16, upsample=upsample, concat_x=concat_x, more_layers=more_layers)
    net = _build("unet", **options)
    assert net(_code("unet", options)).shape == (1, 3, 64, 64)


def test_texture_nets_runs_with_every_option_and_has_a_branch_per_ratio():
    options = dict(
        in_channels=4, ratios=(8, 4, 2, 1), fill_noise=True, pad="reflection", upsample="bilinear", conv_num=4
    )
    net = nets.texture_nets(**options)
    assert net(_code("texture_nets", options)).shape == (1, 3, 64, 64)
    assert sorted(m.kernel_size for m in net.modules() if isinstance(m, nn.AvgPool2d)) == [1, 2, 4, 8]
    assert net[-2][-1].out_channels == 3 and net[-2][-1].in_channels == 16  # 4 channels per ratio, merged


def test_resnet_works_at_any_size():
    assert _build("resnet", **SMALL["resnet"])(torch.rand(1, 8, 20, 30)).shape == (1, 3, 20, 30)


def test_deep_decoder_input_shape():
    assert nets.deep_decoder_input_shape(512, 384) == (32, 24)
    assert nets.deep_decoder_input_shape(64, 64, num_layers=3) == (16, 16)
    with pytest.raises(ConfigError):
        nets.deep_decoder_input_shape(100, 64)


def test_canvas_size_rounds_up_to_the_multiple_and_the_smallest_canvas():
    assert nets.canvas_size("skip", 100, 300) == (128, 320)  # multiples of 32
    assert nets.canvas_size("skip", 10, 64) == (64, 64)  # BatchNorm at the deepest scale needs 2×2 there
    assert nets.canvas_size("resnet", 37, 41) == (37, 41)


def test_concat_center_crops_to_the_smallest():
    a, b = nn.Identity(), nn.ZeroPad2d(1)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = blocks.Concat(b, a)(x)  # (1, 2, 4, 4)
    assert y.shape == (1, 2, 4, 4)
    assert torch.equal(y[:, 0], x[:, 0]) and torch.equal(y[:, 1], x[:, 0])


# ---------------------------------------------------------------------------------------------------------------------
# Lanczos downsampler


def test_lanczos_taps_match_the_published_formula():
    factor, support = 2, 2
    width = 4 * factor + 1  # the published kernel_width; phase 0.5 drops one tap
    centre = (width + 1) / 2
    ref = []
    for i in range(1, width):
        d = abs(i + 0.5 - centre) / factor
        ref.append(support * math.sin(math.pi * d) * math.sin(math.pi * d / support) / (math.pi**2 * d**2))
    ref = torch.tensor(ref) / sum(ref)
    assert torch.allclose(blocks.lanczos_taps(factor, support), ref.float(), atol=1e-7)


def test_lanczos_down_keeps_constants_and_is_not_a_parameter():
    down = blocks.LanczosDown2(3, support=2)
    y = down(torch.full((1, 3, 16, 16), 0.7))
    assert y.shape == (1, 3, 8, 8) and torch.allclose(y, torch.full_like(y, 0.7))
    assert not list(down.parameters()) and "kernel" not in down.state_dict()


# ---------------------------------------------------------------------------------------------------------------------
# BatchNorm: per-batch statistics, never running ones


@pytest.mark.parametrize("name", list(SMALL))
def test_batchnorm_keeps_no_running_statistics(name):
    bns = [m for m in nets.get_net(name, **SMALL[name]).modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(b.running_mean is None and b.running_var is None and b.affine for b in bns)


@pytest.mark.parametrize("name", ["skip", "texture_nets", "deep_decoder"])
def test_batchnorm_uses_the_statistics_of_the_batch(name):
    # In float64: a batch of two runs other kernels than a batch of one (oneDNN picks them per CPU and shape), so in
    # float32 the two differ by rounding amplified through the BatchNorms (9e-6 seen on an AVX-512 EPYC). In float64
    # each of the ~15 layers adds a relative error of about n·2⁻⁵³ ≈ 1e-13 (n ≤ 10³ terms per sum), far below 1e-9.
    net = _build(name, **SMALL[name]).double()
    x = _code(name, SMALL[name]).double()
    single = net(x)
    torch.testing.assert_close(net(torch.cat([x, x])), torch.cat([single, single]), atol=1e-9, rtol=0)
    # A different second image changes the statistics, hence the first output.
    other = _code(name, SMALL[name], seed=1).double()
    assert (net(torch.cat([x, other]))[:1] - single).abs().max() > 1e-4
    # eval() changes nothing: there are no running statistics to fall back on.
    torch.testing.assert_close(net.eval()(x), single, atol=1e-9, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Reproducible initialisation


def _params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("name", list(SMALL))
def test_reinitialise_is_reproducible_whatever_the_global_rng(name):
    torch.manual_seed(1)
    a = _params(_build(name, seed=7, **SMALL[name]))
    torch.manual_seed(2)
    b = _params(_build(name, seed=7, **SMALL[name]))
    c = _params(_build(name, seed=8, **SMALL[name]))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_reinitialise_follows_torchs_default_bounds_and_resets_norms():
    net = nets.skip(**SMALL["skip"])
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 3.0)
            nn.init.constant_(m.bias, 3.0)
    nets.reinitialise(net, torch.Generator().manual_seed(0))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, nn.Conv2d):
            bound = 1 / math.sqrt(m.weight[0].numel())  # Kaiming uniform, a = √5: 1/√fan_in
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.5 * bound
            assert m.bias.abs().max() <= bound


def test_reinitialise_reaches_nested_modules_and_refuses_unknown_ones():
    net = nets.get_net("unet", **SMALL["unet"])
    before = net[0].ups[0].up.weight.detach().clone()  # a transposed conv deep inside
    nets.reinitialise(net, torch.Generator().manual_seed(0))
    assert not torch.equal(before, net[0].ups[0].up.weight)
    with pytest.raises(TypeError):
        nets.reinitialise(nn.Sequential(nn.PReLU()), torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------------------------
# By name: errors and multiples


def test_get_net_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        nets.get_net("hourglass")
    assert all(name in str(err.value) for name in nets.NET_SPECS)


def test_get_net_unknown_keyword_is_a_config_error():
    with pytest.raises(ConfigError, match="channels_down"):
        nets.get_net("unet", channels_down=(8,) * 5)
    with pytest.raises(ConfigError):
        nets.required_multiple("skip", chanels_down=(8,) * 5)


@pytest.mark.parametrize(
    "name, options",
    [
        ("skip", dict(pad="circular")),
        ("skip", dict(downsample="bicubic")),
        ("skip", dict(upsample="deconv")),
        ("skip", dict(act="GELU")),
        ("skip", dict(channels_down=(8,) * 4)),  # lengths differ from channels_up, channels_skip
        ("skip", dict(filter_size_down=4)),
        ("unet", dict(norm="group")),
        ("unet", dict(concat_x=True)),  # 16 channels at the first level cannot hold the 32-channel input
        ("texture_nets", dict(ratios=(32, 12, 1))),
        ("texture_nets", dict(ratios=(4, 2))),
        ("deep_decoder", dict(num_layers=0)),
    ],
)
def test_bad_options_are_config_errors(name, options):
    with pytest.raises(ConfigError):
        nets.get_net(name, **options)


@pytest.mark.parametrize(
    "name, options, multiple",
    [
        ("skip", {}, 32),
        ("skip", dict(channels_down=(8,) * 6, channels_up=(8,) * 6, channels_skip=0), 64),
        ("skip", dict(channels_down=8, channels_up=8, channels_skip=(4,) * 3), 8),
        ("unet", {}, 16),
        ("unet", dict(more_layers=1), 32),
        ("resnet", {}, 1),
        ("texture_nets", {}, 32),
        ("texture_nets", dict(ratios=(8, 4, 2, 1)), 8),
        ("deep_decoder", {}, 16),
        ("deep_decoder", dict(num_layers=3), 4),
    ],
)
def test_required_multiple(name, options, multiple):
    assert nets.required_multiple(name, **options) == multiple


# ---------------------------------------------------------------------------------------------------------------------
# Padding


def test_reflection_and_zero_padding_differ():
    x = _code("skip", SMALL["skip"])
    reflect = _build("skip", **SMALL["skip"], pad="reflection")
    zero = _build("skip", **SMALL["skip"], pad="zero")
    assert any(isinstance(m, nn.ReflectionPad2d) for m in reflect.modules())
    assert not any(isinstance(m, nn.ReflectionPad2d) for m in zero.modules())
    assert [p.shape for p in reflect.parameters()] == [p.shape for p in zero.parameters()]
    assert not torch.allclose(reflect(x), zero(x), atol=1e-4)


def test_a_registered_net_is_run_by_name_as_the_built_in_ones_are():
    """``register_net`` is the only place a net is named: restore, its canvas and its memory estimate read the
    metadata (here a code 2× smaller than the image, which must be a multiple of 4)."""
    import dipcore

    @nets.register_net(multiple=lambda a: 4, code_size=lambda h, w, a: (h // 2, w // 2))
    def half_code(*, in_channels: int = 8, out_channels: int = 3, features: int = 4) -> nn.Sequential:
        return nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(in_channels, out_channels, 3, padding=1))

    try:
        assert nets.required_multiple("half_code") == 4 and nets.canvas_size("half_code", 10, 13) == (12, 16)
        assert nets.code_size("half_code", 12, 16) == (6, 8) and nets.code_size("skip", 12, 16) is None
        image = torch.rand(10, 13, 3).numpy()
        res = dipcore.restore(image, task="denoise", preset="fast", iterations=2, net="half_code", features=2)
        assert res.image.shape == (10, 13, 3) and res.config["net_options"] == {"features": 2}
        with pytest.raises(ConfigError, match="has no option"):
            dipcore.restore(image, task="denoise", preset="fast", iterations=2, net="half_code", channels=4)
    finally:
        del nets.NET_SPECS["half_code"]
