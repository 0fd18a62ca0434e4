"""Batched multi-fit: K fits stacked in one grouped net, or run side by side on CPU threads, give what K separate
fits give."""

import numpy as np
import pytest
import torch
from skimage import data

import dipcore
from dipcore import nets
from dipcore.batched import stack_modules
from dipcore.errors import ConfigError

SMALL = dict(preset="fast", channels=8)


@pytest.fixture(scope="module")
def crops():
    img = data.astronaut().astype(np.float32) / 255
    return [img[0:64, 0:64], img[100:164, 180:244], img[300:364, 300:364]]


@pytest.mark.parametrize(
    "options", [{}, {"downsample": "lanczos2", "upsample": "nearest"}, {"channels_skip": (0, 0, 0, 4, 4)}]
)
def test_a_stacked_net_computes_each_net_on_its_block(options):
    gen = torch.Generator().manual_seed(0)
    singles = [
        nets.reinitialise(nets.skip(in_channels=4, channels_down=(8,) * 5, channels_up=(8,) * 5, **options), gen)
        for _ in range(3)
    ]
    stacked = stack_modules(singles)
    zs = [torch.rand(1, 4, 64, 64, generator=gen) for _ in range(3)]
    out = stacked(torch.cat(zs, dim=1))  # (1, 9, 64, 64)
    for i, (net, z) in enumerate(zip(singles, zs, strict=True)):
        torch.testing.assert_close(out[:, 3 * i : 3 * i + 3], net(z), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "name, options", [("texture_nets", {"ratios": (4, 2, 1), "conv_num": 4}), ("deep_decoder", {"num_layers": 3})]
)
def test_texture_nets_and_the_deep_decoder_stack_too(name, options):
    gen = torch.Generator().manual_seed(0)
    singles = [nets.reinitialise(nets.get_net(name, in_channels=4, **options), gen) for _ in range(2)]
    side = 4 if name == "deep_decoder" else 16  # the deep decoder's code is 4× smaller than its 16² image
    zs = [torch.rand(1, 4, side, side, generator=gen) for _ in range(2)]
    out = stack_modules(singles)(torch.cat(zs, dim=1))  # (1, 6, 16, 16)
    for i, (net, z) in enumerate(zip(singles, zs, strict=True)):
        torch.testing.assert_close(out[:, 3 * i : 3 * i + 3], net(z), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "build",
    [lambda: nets.unet(feature_scale=16), lambda: nets.resnet(channels=4), lambda: nets.texture_nets(fill_noise=True)],
)
def test_unsupported_layers_are_refused(build):
    with pytest.raises(ConfigError, match="do not support"):
        stack_modules([build(), build()])


# DIP fits are chaotic in float rounding: Adam's first steps move every weight by ±lr whatever the size of its
# gradient, so gradients at rounding level (~1e-9) flip signs when the summation order changes (grouped vs plain
# convolutions, or even channels_last vs contiguous). Pixel differences grow from 1e-6 at the first output to
# ~1e-3 after one step and ~0.1 after 15, while the PSNR stays the same (measured). So: tight agreement of the
# first outputs and losses, and equal quality over a longer run. In fp32: a bf16 net (the default on CPUs with bf16
# units) rounds every convolution to 2⁻⁸ relative, so grouped and plain convolutions differ by that already.
@pytest.mark.parametrize("mode", ["stack", "threads"])
@pytest.mark.parametrize("task", ["denoise", "sr", "inpaint"])
def test_k_fits_batched_equal_k_fits_one_by_one(crops, task, mode):
    obs = [dipcore.degrade(c, task=task, seed=i) for i, c in enumerate(crops)]
    kwargs = dict(task=task, iterations=2, engine=dipcore.EngineOptions(autocast="off"), **SMALL)
    engine = dipcore.EngineOptions(batch_mode=mode, autocast="off")
    batched = dipcore.restore_batch(obs, references=crops, seeds=[3, 4, 5], **{**kwargs, "engine": engine})
    assert all(b.engine["batch_mode"] == mode for b in batched)
    for o, c, s, b in zip(obs, crops, [3, 4, 5], batched, strict=True):
        single = dipcore.restore(o, reference=c, seed=s, **kwargs)
        np.testing.assert_allclose(b.image, single.image, atol=3e-3)
        np.testing.assert_allclose(b.history["loss"], single.history["loss"], rtol=1e-3)
        np.testing.assert_allclose(b.history["psnr"], single.history["psnr"], atol=1e-2)
        other_seed = dipcore.restore(o, reference=c, seed=s + 10, **kwargs)
        assert np.abs(other_seed.image - single.image).max() > 0.05  # the tolerance is far below what a mix-up gives
        assert b.config["seed"] == s


@pytest.mark.slow
def test_stacked_fits_reach_the_same_quality_over_a_longer_run(crops):
    obs = [dipcore.degrade(c, task="denoise", seed=i) for i, c in enumerate(crops)]
    kwargs = dict(task="denoise", iterations=150, **SMALL)
    batched = dipcore.restore_batch(obs, seeds=[3, 4, 5], engine=dipcore.EngineOptions(batch_mode="stack"), **kwargs)
    singles = [dipcore.restore(o, seed=s, **kwargs) for o, s in zip(obs, [3, 4, 5], strict=True)]
    # One image's PSNR after 150 iterations moves by up to ~0.5 dB with float rounding alone (fused or looped Adam,
    # grouped or plain convolutions: measured); the mean over the three is steadier. A mix-up costs several dB.

    def mean_psnr(results):
        return np.mean([dipcore.psnr(r.image, c) for r, c in zip(results, crops, strict=True)])

    assert mean_psnr(batched) == pytest.approx(mean_psnr(singles), abs=0.3)


@pytest.mark.parametrize("mode", ["stack", "threads"])
def test_batched_restarts_equal_sequential_restarts(crops, mode):
    obs = dipcore.degrade(crops[1], task="denoise", seed=0)
    kwargs = dict(task="denoise", iterations=2, restarts=3, seed=7, **SMALL)
    batched = dipcore.restore(obs, engine=dipcore.EngineOptions(batch_restarts=True, batch_mode=mode), **kwargs)
    sequential = dipcore.restore(obs, engine=dipcore.EngineOptions(batch_restarts=False), **kwargs)
    np.testing.assert_allclose(batched.image, sequential.image, atol=3e-3)
    assert batched.backtracks == sequential.backtracks


@pytest.mark.parametrize("mode", ["stack", "threads"])
def test_batched_early_stopping_picks_each_fits_own_iteration(crops, mode):
    # When the rule fires on a real fit is chaotic in float rounding (it changed between CPUs), so one fit of the
    # batch is built so that it must fire: an inpainting fit that knows no pixel has a zero loss gradient, Adam's
    # update of a zero gradient is exactly zero, and without jitter its output is the same at every iteration. Its
    # variance never drops below the first full window's, so its rule picks iteration 10 (W) and says stop at 50
    # (W + P). Its neighbour fits a real image and is judged by its own rule only.
    still = dipcore.Observation(crops[0], "inpaint", mask=np.zeros(crops[0].shape[:2], np.float32))
    live = dipcore.degrade(crops[1], task="inpaint", seed=0)
    frozen, moving = dipcore.restore_batch(
        [still, live],
        task="inpaint",
        iterations=120,
        early_stopping=True,
        es_window=10,
        es_patience=40,
        reg_noise_std=0.0,
        ema=None,
        output="final",
        engine=dipcore.EngineOptions(batch_mode=mode),
        **SMALL,
    )
    np.testing.assert_array_equal(frozen.image, frozen.final)  # the premise: that output never moved
    assert frozen.stop_reason == "early_stopping" and frozen.iteration == frozen.stopping.iteration == 10
    # Side by side, each fit stops where its rule says; stacked, the batch runs until every rule agrees (or the end).
    assert frozen.iterations_run == (50 if mode == "threads" else moving.iterations_run)
    assert moving.stop_reason in ("early_stopping", "iterations")
    if moving.stop_reason == "early_stopping":
        assert moving.iteration <= moving.iterations_run - 40 and moving.stopping.iteration == moving.iteration
    else:
        assert moving.iterations_run == moving.iteration == 120 and moving.stopping.fired_at is None
    assert np.abs(moving.image - frozen.image).max() > 0.05  # each fit returned its own image


def test_stacked_batches_of_different_shapes_need_a_shared_canvas(crops):
    # Different shapes stack on a shared canvas by default (tests/test_canvas.py); on their own canvases, not.
    a = dipcore.degrade(crops[0], task="denoise")  # 64²: a canvas of 64²
    b = dipcore.degrade(data.astronaut()[:96, :96], task="denoise")  # a canvas of 96²
    stack = dipcore.EngineOptions(batch_mode="stack")
    with pytest.raises(ConfigError, match="own canvases need one canvas size"):
        dipcore.restore_batch([a, b], task="denoise", iterations=1, canvas="own", engine=stack, **SMALL)
