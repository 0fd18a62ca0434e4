"""Observation operators and input codes: shapes, adjoints, the Lanczos kernel of the published downsampler."""

import numpy as np
import pytest
import torch

from dipcore import operators as ops
from dipcore.errors import ConfigError


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_lanczos_kernel_is_normalised_symmetric_and_4f_wide(factor):
    k = ops.lanczos_kernel(factor)
    assert k.shape == (4 * factor, 4 * factor)
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-7)
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    # Lanczos-2 has negative lobes: a plain box or Gaussian kernel would not.
    assert k.min() < 0


def test_lanczos_kernel_matches_the_published_formula_at_factor_1():
    # 4 taps at half-pixel offsets ±0.5, ±1.5 of sinc(d)·sinc(d/2), normalised.
    def lanczos(d):
        return np.sinc(d) * np.sinc(d / 2)

    taps = np.array([lanczos(1.5), lanczos(0.5), lanczos(0.5), lanczos(1.5)])
    expected = np.outer(taps, taps) / np.outer(taps, taps).sum()
    np.testing.assert_allclose(ops.lanczos_kernel(1), expected, rtol=1e-5)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_lanczos_down_keeps_a_constant_image_constant_and_has_the_right_size(factor):
    op = ops.LanczosDown(factor)
    x = torch.full((1, 3, 64, 96), 0.37)
    y = op(x)
    assert y.shape == (1, 3, 64 // factor, 96 // factor)
    assert op.output_size(64, 96) == (64 // factor, 96 // factor)
    torch.testing.assert_close(y, torch.full_like(y, 0.37), atol=1e-6, rtol=0)


def test_lanczos_down_of_a_smooth_ramp_samples_pixel_centres():
    # A linear ramp is reproduced exactly by a symmetric normalised kernel: the LR pixel centres of a ×4 grid
    # sit at 4i + 1.5 in HR coordinates (away from the replicated border).
    x = torch.arange(64, dtype=torch.float32).repeat(1, 1, 64, 1) / 64  # (1, 1, 64, 64), value = column / 64
    y = ops.LanczosDown(4)(x)[0, 0, 5]
    expected = (4 * torch.arange(16) + 1.5) / 64
    torch.testing.assert_close(y[2:-2], expected[2:-2], atol=1e-5, rtol=0)


def _linear_operators():
    mask = (torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    return [ops.Identity(), ops.LanczosDown(2), ops.LanczosDown(4), ops.Mask(mask)]


@pytest.mark.parametrize("op", _linear_operators(), ids=lambda o: type(o).__name__)
def test_adjoint_satisfies_the_inner_product_identity(op, gen):
    x = torch.randn(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    y_shape = op(x).shape
    y = torch.randn(y_shape, generator=gen, dtype=torch.float64)
    lhs = (op(x) * y).sum()
    rhs = (x * op.A_adjoint(y, x.shape)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_mask_zeroes_missing_pixels_and_moves_with_the_module():
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    op = ops.Mask(mask)
    y = op(torch.ones(1, 3, 2, 2))
    assert y[0, :, 0, 1].sum() == 0 and y[0, :, 0, 0].sum() == 3
    assert "mask" in dict(op.named_buffers())


def test_noise_code_is_scaled_uniform_and_seeded():
    z1 = ops.noise_code(32, 16, 24, generator=torch.Generator().manual_seed(3))
    z2 = ops.noise_code(32, 16, 24, generator=torch.Generator().manual_seed(3))
    assert z1.shape == (1, 32, 16, 24)
    assert z1.min() >= 0 and z1.max() <= 0.1 and z1.mean() == pytest.approx(0.05, abs=0.005)
    torch.testing.assert_close(z1, z2)


def test_meshgrid_code_spans_the_unit_square():
    z = ops.meshgrid_code(8, 16)
    assert z.shape == (1, 2, 8, 16)
    assert z[0, 0, 0, 0] == 0 and z[0, 0, 0, -1] == 1  # x along the width
    assert z[0, 1, -1, 0] == 1 and torch.all(z[0, 1, :, 0].diff() > 0)  # y along the height


def test_features_of_a_random_alexnet_have_the_fc6_size():
    net = ops.alexnet(generator=torch.Generator().manual_seed(0))
    phi = ops.Features(net, "fc6")
    assert phi(torch.rand(1, 3, 64, 64)).shape == (1, 4096)
    assert ops.Features(net, "conv2")(torch.rand(1, 1, 224, 224)).shape == (1, 192, 27, 27)


def test_features_reject_unknown_layers_and_missing_weight_files(tmp_path):
    net = ops.alexnet(generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="unknown layer"):
        ops.Features(net, "fc9")
    with pytest.raises(ConfigError, match="not found"):
        ops.alexnet(tmp_path / "missing.pth")


def test_alexnet_loads_a_torchvision_shaped_state_dict_from_a_local_file(tmp_path):
    source = ops.alexnet(generator=torch.Generator().manual_seed(5))
    path = tmp_path / "alexnet.pth"
    torch.save(source.state_dict(), path)
    loaded = ops.alexnet(path)
    x = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(ops.Features(loaded, "fc7")(x), ops.Features(source, "fc7")(x))
    assert "features.0.weight" in source.state_dict() and "classifier.1.weight" in source.state_dict()
