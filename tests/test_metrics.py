"""dipcore.metrics: PSNR (RGB, Y, shave, centre crop) by hand computation, its on-device twin for stacked fits
against it, SSIM against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import color, data
from skimage.metrics import structural_similarity

from dipcore.errors import ConfigError
from dipcore.metrics import PsnrProtocol, check_protocol, psnr, psnr_stacked, rgb_to_y, ssim


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _noisy(rng, x: np.ndarray, sigma: float = 0.05) -> np.ndarray:
    return np.clip(x + rng.normal(0, sigma, x.shape), 0, 1)


# --- PSNR ----------------------------------------------------------------------------------------------------------


def test_psnr_constant_offset(rng):
    a = rng.uniform(0.1, 0.9, (8, 9, 3))
    assert psnr(a, a + 0.01) == pytest.approx(40.0, abs=1e-9)
    assert psnr(a * 255, a * 255 + 2.55, data_range=255) == pytest.approx(40.0, abs=1e-9)
    assert psnr(a[..., 0], a[..., 0] + 0.1) == pytest.approx(20.0, abs=1e-9)


def test_psnr_identical_is_inf(rng):
    a = rng.random((8, 8, 3)).astype(np.float32)
    assert psnr(a, a.copy()) == math.inf
    assert psnr(a, a, y_channel=True, shave=2) == math.inf


def test_rgb_to_y_matches_matlab_formula(rng):
    x = rng.random((5, 6, 3))
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    np.testing.assert_allclose(rgb_to_y(x), 16 + 65.481 * r + 128.553 * g + 24.966 * b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rgb_to_y(x), color.rgb2ycbcr(x)[..., 0], atol=1e-10)  # skimage = MATLAB rgb2ycbcr
    assert rgb_to_y(np.ones((1, 1, 3))).item() == pytest.approx(235.0)


def test_grey_y_equals_grey_repeated_to_rgb(rng):
    g = rng.random((6, 7, 1))
    np.testing.assert_allclose(rgb_to_y(g), 16 + 219 * g[..., 0], atol=1e-12)
    np.testing.assert_allclose(rgb_to_y(g[..., 0]), rgb_to_y(np.repeat(g, 3, axis=2)), atol=1e-12)
    h = _noisy(rng, g)
    assert psnr(g, h, y_channel=True) == pytest.approx(psnr(np.repeat(g, 3, 2), np.repeat(h, 3, 2), y_channel=True))


def test_psnr_y_channel_by_hand(rng):
    a = rng.random((4, 5, 3))
    b = _noisy(rng, a, 0.1)
    ya = 16 + a @ [65.481, 128.553, 24.966]
    yb = 16 + b @ [65.481, 128.553, 24.966]
    expected = 10 * math.log10(255**2 / np.mean((ya - yb) ** 2))
    assert psnr(a, b, y_channel=True) == pytest.approx(expected, abs=1e-9)
    assert psnr(a * 255, b * 255, y_channel=True, data_range=255) == pytest.approx(expected, abs=1e-9)
    assert abs(psnr(a, b) - expected) > 0.5  # the RGB value is a different number


def test_shave_removes_borders(rng):
    a = rng.random((20, 24, 3))
    b = a.copy()
    b[:2] = 0
    b[:, -2:] = 1
    assert psnr(a, b, shave=2) == math.inf
    assert psnr(a, b, shave=1) < 30
    noisy = _noisy(rng, a)
    c = a.copy()
    c[3:-3, 3:-3] = noisy[3:-3, 3:-3]
    assert psnr(a, c, shave=3) == pytest.approx(psnr(a[3:-3, 3:-3], noisy[3:-3, 3:-3]), abs=1e-12)


def test_psnr_crop(rng):
    a = rng.random((70, 37, 3))
    b = a.copy()
    b[:3] = 0  # outside the centre 64×32 crop
    b[:, :2] = 0
    b[:, 34:] = 0
    assert psnr(a, b, crop="center32") == math.inf
    assert psnr(a, b, crop=32) == math.inf
    assert psnr(a, b) < 20
    b[3, 2] = 0.0 if a[3, 2, 0] > 0.5 else 1.0  # the crop's first pixel counts
    assert psnr(a, b, crop="center32") < math.inf


def test_sr_protocol_order(rng):
    a = rng.random((70, 75, 3))
    b = _noisy(rng, a)
    ca, cb = a[3:67, 5:69][4:-4, 4:-4], b[3:67, 5:69][4:-4, 4:-4]  # crop to 64×64, then shave 4
    expected = 10 * math.log10(255**2 / np.mean((rgb_to_y(ca) - rgb_to_y(cb)) ** 2))
    assert psnr(a, b, y_channel=True, crop="center32", shave=4) == pytest.approx(expected, abs=1e-9)


def test_shape_errors():
    with pytest.raises(ConfigError, match=r"\(8, 8, 3\).*\(8, 9, 3\)"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ConfigError):
        ssim(np.zeros((16, 16, 3)), np.zeros((16, 16, 1)))
    with pytest.raises(ConfigError):
        psnr(np.zeros((8, 8)), np.zeros((8, 8)), shave=4)
    with pytest.raises(ConfigError):
        psnr(np.zeros((8, 8)), np.zeros((8, 8)), crop="middle")
    with pytest.raises(ConfigError):
        rgb_to_y(np.zeros((4, 4, 2)))
    assert psnr(np.zeros((8, 8)), np.zeros((8, 8, 1))) == math.inf  # H×W is H×W×1


@pytest.mark.parametrize(
    "protocol",
    [
        {},
        {"y_channel": True, "shave": 4},
        {"y_channel": True, "crop": "center32", "shave": 4},
        {"crop": 16, "shave": 1},
    ],
)
@pytest.mark.parametrize("channels", [3, 1])
def test_psnr_stacked_is_psnr_of_each_stacked_image(rng, protocol, channels):
    """The curves' float32 PSNR on (1, K·C, H, W) blocks agrees with the float64 one on each H×W×C image."""
    refs = [rng.random((70, 45, channels)) for _ in range(3)]
    outs = [_noisy(rng, r, s) for r, s in zip(refs, (0.02, 0.05, 0.1), strict=True)]

    def stack(images):  # H×W×C images -> (1, K·C, H, W)
        return torch.from_numpy(np.concatenate([x.transpose(2, 0, 1) for x in images]))[None].float()

    got = psnr_stacked(stack(outs), stack(refs), 3, PsnrProtocol.of(protocol)).tolist()
    want = [psnr(o.astype(np.float32), r.astype(np.float32), **protocol) for o, r in zip(outs, refs, strict=True)]
    assert got == pytest.approx(want, abs=2e-4)
    assert want[0] > want[1] > want[2]  # each block is its own image, not a mix


def test_psnr_protocol_is_psnrs_keywords_and_checked():
    p = PsnrProtocol.of({"y_channel": True, "shave": 4})
    assert p == PsnrProtocol(True, 4) and PsnrProtocol.of(p) is p and PsnrProtocol.of(None) == PsnrProtocol()
    a = np.random.default_rng(1).random((20, 20, 3))
    assert psnr(a, a * 0.9, **p.kwargs()) == psnr(a, a * 0.9, y_channel=True, shave=4)
    for bad in ({"shave": -1}, {"y": True}, {"crop": "middle"}, {"y_channel": "yes"}, [("shave", 1)]):
        with pytest.raises(ConfigError):
            PsnrProtocol.of(bad)
    check_protocol(p, 9, 9, 3)
    with pytest.raises(ConfigError, match="leaves nothing"):
        check_protocol(p, 8, 30, 3)
    with pytest.raises(ConfigError, match="leaves nothing"):
        check_protocol(PsnrProtocol(crop=32), 31, 64, 1)
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        check_protocol(p, 64, 64, 2)


# --- SSIM ----------------------------------------------------------------------------------------------------------


def _skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    return structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
        channel_axis=2 if a.ndim == 3 else None,
    )


@pytest.mark.parametrize("shape", [(40, 50, 3), (33, 21, 1), (24, 31)])
def test_ssim_matches_skimage_on_random_images(rng, shape):
    a = rng.random(shape)
    b = _noisy(rng, 0.7 * a + 0.15, 0.1)
    assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-4)


def test_ssim_matches_skimage_on_photos(rng):
    camera = data.camera()[200:296, 150:278] / 255.0  # (96, 128)
    noisy = _noisy(rng, camera, 0.1)
    assert ssim(camera, noisy) == pytest.approx(_skimage_ssim(camera, noisy), abs=1e-4)
    astronaut = data.astronaut()[100:180, 150:250] / 255.0  # (80, 100, 3)
    blurred = (astronaut + np.roll(astronaut, 1, 0) + np.roll(astronaut, 1, 1)) / 3
    expected = _skimage_ssim(astronaut, blurred)
    assert 0.2 < expected < 0.99 and ssim(astronaut, blurred) == pytest.approx(expected, abs=1e-4)
    # Y channel and data_range: SSIM of the Y planes (peak 255), and 8-bit inputs with data_range=255.
    ya, yb = rgb_to_y(astronaut), rgb_to_y(blurred)
    assert ssim(astronaut, blurred, y_channel=True) == pytest.approx(_skimage_ssim(ya, yb, 255), abs=1e-4)
    assert ssim(astronaut * 255, blurred * 255, data_range=255) == pytest.approx(expected, abs=1e-4)


def test_ssim_identical_shave_and_size(rng):
    a = rng.random((40, 40, 3))
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    b = a.copy()
    b[:8] = 1 - b[:8]
    assert ssim(a, b) < 0.9 and ssim(a, b, shave=8) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ConfigError, match="11"):
        ssim(a[:10], a[:10])
