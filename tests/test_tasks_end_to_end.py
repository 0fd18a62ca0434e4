"""Every task of the paper runs end to end through restore() (a few iterations of a narrow net), and bad input
gives typed errors."""

import numpy as np
import pytest
import torch
from skimage import data

import dipcore
from dipcore.errors import ConfigError
from dipcore.fit import _backtrack
from dipcore.stopping import VarianceStopping

FAST = dict(preset="fast", iterations=3, channels=8)


@pytest.fixture(scope="module")
def photo():
    return data.coffee()[100:164, 200:264].astype(np.float32) / 255  # (64, 64, 3)


@pytest.mark.parametrize(
    "task, kwargs, shape",
    [
        ("denoise", {}, (64, 64, 3)),
        ("denoise", {"sigma": 50}, (64, 64, 3)),
        ("jpeg", {}, (64, 64, 3)),
        ("sr", {"scale": 2}, (64, 64, 3)),
        ("sr", {"scale": 4}, (64, 64, 3)),
        ("sr", {"scale": 8}, (64, 64, 3)),
        ("inpaint", {"variant": "random"}, (64, 64, 3)),
        ("inpaint", {"variant": "text"}, (64, 64, 3)),
        ("inpaint", {"variant": "large"}, (64, 64, 3)),
        ("inpaint", {"variant": "region"}, (64, 64, 3)),
        ("reconstruct", {}, (64, 64, 3)),
        ("preimage", {}, (64, 64, 3)),
    ],
)
def test_every_task_runs_on_a_synthesised_observation(photo, task, kwargs, shape):
    degrade_kwargs = {k: v for k, v in kwargs.items() if k in ("scale", "sigma", "variant")}
    obs = dipcore.degrade(photo, task=task, seed=0, **degrade_kwargs)
    restore_kwargs = {k: v for k, v in kwargs.items() if k != "sigma"}
    res = dipcore.restore(obs, task=task, **restore_kwargs, **FAST)
    assert res.image.shape == shape
    assert np.isfinite(res.image).all() and res.image.min() >= 0 and res.image.max() <= 1
    assert res.iterations_run == 3 and len(res.history["loss"]) == 3


def test_flash_no_flash_takes_the_flash_image_as_its_input(photo):
    flash = np.clip(photo * 1.4, 0, 1)
    res = dipcore.restore(photo * 0.6, task="flash_noflash", guide=flash, **FAST)
    assert res.image.shape == photo.shape and res.config["input"] == "guide"
    with pytest.raises(ConfigError, match="guide"):
        dipcore.restore(photo, task="flash_noflash", **FAST)


@pytest.mark.parametrize("net", ["unet", "resnet", "texture_nets", "deep_decoder"])
def test_other_generators_restore_too(photo, net):
    res = dipcore.restore(photo, task="denoise", preset="fast", iterations=2, net=net)
    assert res.image.shape == photo.shape and res.config["net"] == net


def test_a_real_degraded_image_needs_no_ground_truth(photo):
    lr = dipcore.degrade(photo, task="sr", scale=4).image  # just an array from here on
    res = dipcore.restore(lr, task="sr", scale=4, **FAST)
    assert res.image.shape == (64, 64, 3) and "psnr" not in res.history


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: dipcore.restore(x, task="inpaint", **FAST), "needs a mask"),
        (lambda x: dipcore.restore(x, task="inpaint", mask=np.ones((10, 10)), **FAST), "mask is"),
        (lambda x: dipcore.restore(x, task="denoise", reference=x[:32], **FAST), "reference is"),
        (lambda x: dipcore.restore(x, task="denoise", learning_rate=1, **FAST), "unknown setting"),
        (lambda x: dipcore.restore(x * 2, task="denoise", **FAST), "must lie in"),
        (lambda x: dipcore.restore(x, task="sharpen", **FAST), "unknown task"),
        (lambda x: dipcore.restore(x, task="denoise", preset="fast", iterations=0), "iterations"),
        (lambda x: dipcore.degrade(x, task="inpaint", drop=1.5), "drop"),
    ],
)
def test_bad_input_raises_a_config_error(photo, call, message):
    with pytest.raises(ConfigError, match=message):
        call(photo)


def test_backtracking_undoes_a_jump_and_keeps_ordinary_steps():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    p.grad = torch.ones(2)
    snapshot = [p.detach().clone()]
    accepted, count = torch.tensor(1.0), torch.zeros((), dtype=torch.int64)
    _backtrack([p], snapshot, torch.tensor(1.5), accepted, count)  # +1.8 dB: accepted
    assert accepted == 1.5 and count == 0 and p.grad.sum() == 2
    with torch.no_grad():
        p.copy_(torch.tensor([9.0, 9.0]))  # a step that went wrong
    _backtrack([p], snapshot, torch.tensor(15.0), accepted, count)  # +10 dB: undone
    assert p.tolist() == [1.0, 2.0] and count == 1 and accepted == 1.5 and p.grad.sum() == 0


@pytest.mark.parametrize("ema_alpha", [None, 0.1])
def test_variance_stopping_finds_where_outputs_settle(ema_alpha):
    # Outputs whose steps shrink until iteration 300 and grow after it: the variance minimum is near 300.
    rule = VarianceStopping(window=20, patience=100, ema_alpha=ema_alpha)
    gen = torch.Generator().manual_seed(0)
    stopped_at = None
    for it in range(1, 1000):
        step = 0.001 + 0.05 * abs(it - 300) / 300
        rule.update(torch.randn(1, 1, 8, 8, generator=gen) * step, it)
        if rule.should_stop(it):
            stopped_at = it
            break
    assert stopped_at is not None
    assert 280 <= int(rule.best_iteration) <= 340 and stopped_at == int(rule.best_iteration) + 100


def test_variance_stopping_keeps_the_window_variance_exact_over_a_long_run():
    """The running sums (float64) give the window's variance as recomputing it would, after thousands of updates
    of outputs near 0.5 whose variance is 10⁻⁶: float32 outputs square exactly in float64 and each update adds and
    removes the same values, so the drift stays ~10⁻¹³, far inside float32's rounding of the result (6·10⁻⁸)."""
    rule = VarianceStopping(window=50, patience=10_000)
    gen = torch.Generator().manual_seed(0)
    for it in range(1, 3001):
        rule.update(0.5 + 1e-3 * torch.randn(1, 3, 8, 8, generator=gen), it)
    window = rule._window.ring.double()
    expected = (window - window.mean(0, keepdim=True)).pow(2).mean()
    assert float(expected) == pytest.approx(1e-6, rel=0.1)  # the data are what the test means them to be
    assert float(rule.variance) == pytest.approx(float(expected), rel=1e-6)
