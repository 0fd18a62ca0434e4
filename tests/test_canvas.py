"""Images of different sizes on one shared canvas (``dipcore.canvas``): the buckets a packer groups by, each stacked
fit's loss on its own box only, what equal shapes keep, and the waste limit. Tiny images, 8-channel nets, a few
iterations, on the CPU (the stacked path is the GPU's; here it runs with ``batch_mode="stack"``)."""

import numpy as np
import pytest
import torch
from skimage import data

import dipcore
from dipcore import canvas_bucket, preset_for
from dipcore.api import build_problem
from dipcore.batched import stack_problems
from dipcore.canvas import canvas_waste, own_canvas
from dipcore.errors import ConfigError
from dipcore.memory import estimate_peak_bytes

SMALL = dict(preset="fast", channels=8)
STACK = dipcore.EngineOptions(batch_mode="stack", autocast="off")


@pytest.fixture(scope="module")
def pair():
    """Two clean images whose own canvases differ (96×64 and 64×64 with the fast net: multiple 32, at least 64)."""
    img = data.astronaut().astype(np.float32) / 255
    return img[0:80, 100:164], img[200:248, 200:248]


# ------------------------------------------------------------------------------------------------------ buckets


def test_buckets_hold_their_canvases_with_bounded_waste_and_are_canvases_themselves():
    p = preset_for("sr", scale=4)
    seen = set()
    for h in range(8, 300, 3):
        for w in (h, 2 * h + 1, max(8, h // 2)):
            own, bucket = own_canvas(p, (h, w, 3)), canvas_bucket(p, (h, w, 3))
            assert bucket[0] >= own[0] and bucket[1] >= own[1]
            assert canvas_waste(bucket, own) < 1.5625  # < 1.25 per side: within MAX_CANVAS_WASTE
            assert dipcore.nets.canvas_size(p.net, *bucket, **p.net_options) == bucket  # the net runs on it as is
            seen.add(bucket)
    assert len(seen) < 150  # far fewer buckets than shapes


def test_set14_sizes_share_buckets():
    # Set14's ×4 observations (clean images cropped to multiples of 32, then ÷4): all differ, a few buckets.
    p = preset_for("sr", scale=4)
    clean = [(480, 480), (576, 704), (512, 512), (288, 352), (352, 224), (256, 256), (352, 480), (288, 352),
             (512, 512), (512, 512), (512, 768), (512, 512), (640, 512), (384, 576)]  # fmt: skip
    buckets = {canvas_bucket(p, (h // 4, w // 4, 3)) for h, w in clean}
    assert len(buckets) < len(set(clean))
    assert canvas_bucket(p, (72, 88, 3)) == canvas_bucket(p, (80, 96, 3)) == (320, 384)  # 288×352 and 320×384


# -------------------------------------------------------------------------------- equal shapes: nothing changes


def test_equal_shapes_stack_whole_as_before(pair):
    a = pair[0]
    b = data.astronaut().astype(np.float32)[300:380, 300:364] / 255  # a's shape
    obs = [dipcore.degrade(c, task="denoise", seed=i) for i, c in enumerate((a, b))]
    p = preset_for("denoise", **SMALL)
    problems = [build_problem(p, o, device=torch.device("cpu"), seed=i) for i, o in enumerate(obs)]
    assert stack_problems(problems).parts is None  # the stacked path of one shape, unchanged
    kw = dict(task="denoise", iterations=3, references=[a, b], engine=STACK, **SMALL)
    shared = dipcore.restore_batch(obs, **kw)
    own = dipcore.restore_batch(obs, canvas="own", **kw)
    given = dipcore.restore_batch(obs, canvas=own_canvas(p, a.shape), **kw)  # their own canvas, named
    for s, o, g in zip(shared, own, given, strict=True):
        np.testing.assert_array_equal(s.image, o.image)
        np.testing.assert_array_equal(s.image, g.image)
        assert s.history == o.history == g.history and "canvas" not in s.config


# ---------------------------------------------------------------------------- different shapes, one canvas


def _problems(task, pair, canvas=(96, 64)):
    obs = [dipcore.degrade(c, task=task, seed=i) for i, c in enumerate(pair)]
    p = preset_for(task, **SMALL)
    return [
        build_problem(p, o, device=torch.device("cpu"), seed=i, reference=c, canvas=canvas)
        for i, (o, c) in enumerate(zip(obs, pair, strict=True))
    ]


@pytest.mark.parametrize("task", ["denoise", "sr", "inpaint"])
def test_each_fits_loss_is_taken_on_its_own_box_only(pair, task):
    problems = _problems(task, pair)
    stacked = stack_problems(problems)
    assert stacked.parts is not None and stacked.z.shape[-2:] == (96, 64)
    top, left, h, w = stacked.crop
    out = stacked.net(stacked.z)[..., top : top + h, left : left + w].detach().requires_grad_()
    losses = stacked.per_fit_loss(2)(out)
    # Fit 1 (the small image) alone: its MSE on its own box with its own operator (SR: the Lanczos of its box).
    t, lf, hb, wb = problems[1].crop
    block = out[:, 3:6, t - top : t - top + hb, lf - left : lf - left + wb]
    expected = (problems[1].operator(block) - problems[1].target).pow(2).mean()
    torch.testing.assert_close(losses[1], expected)
    losses[1].backward()
    grad = out.grad[0].abs().sum(0)  # (H, W) over fit 1's and fit 0's channels
    inside = torch.zeros_like(grad, dtype=torch.bool)
    inside[t - top : t - top + hb, lf - left : lf - left + wb] = True
    assert out.grad[0, :3].abs().sum() == 0  # nothing of fit 0
    assert grad[~inside].sum() == 0 and grad[inside].abs().sum() > 0  # nothing outside its box
    assert [tuple(b.shape[-2:]) for b in stacked.blocks(out, 2)] == [(80, 64), (48, 48)]


def test_another_fits_observation_does_not_touch_a_fit(pair):
    a, b = pair
    oa, ob = (dipcore.degrade(c, task="denoise", seed=i) for i, c in enumerate(pair))
    other = dipcore.Observation(oa.image.copy(), "denoise")
    other.image[:20] = 1.0 - other.image[:20]  # fit 0's observation changes
    kw = dict(task="denoise", iterations=3, references=[a, b], seeds=[0, 1], engine=STACK, **SMALL)
    first = dipcore.restore_batch([oa, ob], **kw)
    second = dipcore.restore_batch([other, ob], **kw)
    assert first[0].history["loss"] != second[0].history["loss"]
    assert first[1].history == second[1].history  # fit 1, on its own box, never saw fit 0's pixels
    np.testing.assert_array_equal(first[1].image, second[1].image)


def test_different_shapes_stack_on_a_shared_canvas(pair):
    a, b = pair
    obs = [dipcore.degrade(c, task="sr", seed=i) for i, c in enumerate(pair)]  # 20×16 and 12×12 observed
    kw = dict(task="sr", scale=4, iterations=2, references=[a, b], seeds=[3, 4], **SMALL)
    big, small = dipcore.restore_batch(obs, engine=STACK, **kw)
    assert big.image.shape == a.shape and small.image.shape == b.shape
    assert small.config["canvas"] == [96, 64] and "canvas" not in big.config  # the small image ran on a larger one
    assert len(small.history["psnr"]) == 2 and all(np.isfinite(small.history["psnr"]))
    # The large image's canvas is the shared one: it fits as it would alone (up to float rounding, see
    # tests/test_batched.py), whatever stands beside it.
    alone = dipcore.restore(obs[0], reference=a, seed=3, task="sr", scale=4, iterations=2, engine=STACK, **SMALL)
    np.testing.assert_allclose(big.history["loss"], alone.history["loss"], rtol=1e-3)
    np.testing.assert_allclose(big.image, alone.image, atol=3e-3)


def test_side_by_side_fits_of_different_shapes_run_on_their_own_canvases(pair):
    a, b = pair
    obs = [dipcore.degrade(c, task="denoise", seed=i) for i, c in enumerate(pair)]
    threads = dipcore.EngineOptions(batch_mode="threads", autocast="off")
    kw = dict(task="denoise", iterations=2, **SMALL)
    batch = dipcore.restore_batch(obs, references=[a, b], seeds=[3, 4], engine=threads, **kw)
    for o, c, s, r in zip(obs, pair, [3, 4], batch, strict=True):
        single = dipcore.restore(o, reference=c, seed=s, engine=dipcore.EngineOptions(autocast="off"), **kw)
        assert r.image.shape == c.shape and "canvas" not in r.config
        np.testing.assert_allclose(r.history["loss"], single.history["loss"], rtol=1e-3)


@pytest.mark.slow
def test_a_fit_on_a_shared_canvas_restores_as_well_as_alone(pair):
    # DIP fits are chaotic: two runs of one image differ by up to ~2 dB at 60 iterations (measured: the small image
    # gave 28.7 dB on the shared canvas and 26.9 alone). What holds on every run: a clear gain over the noisy input,
    # and no loss of quality beyond that spread.
    obs = [dipcore.degrade(c, task="denoise", seed=i) for i, c in enumerate(pair)]
    kw = dict(task="denoise", iterations=60, output="final", **SMALL)
    batch = dipcore.restore_batch(obs, seeds=[0, 1], engine=STACK, **kw)
    assert batch[1].config["canvas"] == [96, 64]
    for o, c, s, r in zip(obs, pair, [0, 1], batch, strict=True):
        alone = dipcore.restore(o, seed=s, **kw)
        noisy, shared, single = (dipcore.psnr(x, c) for x in (o.image, r.image, alone.image))
        assert shared > noisy + 2.0
        assert shared > single - 2.5


# ------------------------------------------------------------------------------------------- buckets as canvases


@pytest.fixture(scope="module")
def tall():
    """Two clean images of one bucket (320×64 with the fast net) whose own canvases differ: 288×64 and 320×64."""
    img = data.astronaut().astype(np.float32) / 255
    return img[0:280, 0:64], img[100:400, 200:264]


def test_restore_runs_on_its_bucket_when_asked_and_on_its_own_canvas_by_default(tall):
    a, b = tall
    p = preset_for("denoise", **SMALL)
    assert own_canvas(p, a.shape) == (288, 64) and own_canvas(p, b.shape) == canvas_bucket(p, a.shape) == (320, 64)
    obs = dipcore.degrade(a, task="denoise", seed=0)
    kw = dict(task="denoise", iterations=2, reference=a, engine=dipcore.EngineOptions(autocast="off"), **SMALL)
    eager = dipcore.restore(obs, **kw)
    assert "canvas" not in eager.config  # an eager net keeps the image's own canvas
    bucketed = dipcore.restore(obs, canvas="bucket", **kw)
    assert bucketed.config["canvas"] == [320, 64] and bucketed.image.shape == a.shape
    assert bucketed.history["loss"][0] != eager.history["loss"][0]  # another fit: its code spans the larger canvas
    given = dipcore.restore(obs, canvas=(320, 64), **kw)
    assert given.history["loss"] == bucketed.history["loss"]  # the bucket is that canvas
    assert "canvas" not in dipcore.restore(obs, canvas="own", iterations=1, task="denoise", **SMALL).config
    with pytest.raises(ConfigError, match="canvas must be one of 'own', 'shared', 'bucket'"):
        dipcore.restore(obs, canvas="large", **kw)


def test_the_memory_plan_counts_the_bucket_a_fit_runs_on(tall):
    a = tall[0]
    p = preset_for("denoise", **SMALL)
    budget = (estimate_peak_bytes(p, 288, 64) + estimate_peak_bytes(p, 320, 64)) // 2  # own fits, the bucket not
    kw = dict(task="denoise", iterations=1, engine=dipcore.EngineOptions(memory_budget=budget), **SMALL)
    assert dipcore.restore(a, canvas="own", **kw).engine["checkpoint"] is False
    assert dipcore.restore(a, canvas="bucket", **kw).engine["checkpoint"] is True


def test_a_batch_on_buckets_puts_each_fit_on_its_bucket_side_by_side_and_on_one_stacked(tall):
    a = tall[0]
    small = data.astronaut().astype(np.float32)[0:48, 0:48] / 255  # bucket 64×64: its own canvas
    obs = [dipcore.degrade(c, task="denoise", seed=i) for i, c in enumerate((a, small))]
    threads = dipcore.EngineOptions(batch_mode="threads", autocast="off")
    side = dipcore.restore_batch(obs, task="denoise", iterations=1, canvas="bucket", engine=threads, **SMALL)
    assert side[0].config["canvas"] == [320, 64] and "canvas" not in side[1].config
    assert [r.image.shape for r in side] == [a.shape, small.shape]
    pair = [dipcore.degrade(c, task="denoise", seed=i) for i, c in enumerate(tall)]
    stacked = dipcore.restore_batch(pair, task="denoise", iterations=1, canvas="bucket", engine=STACK, **SMALL)
    assert stacked[0].config["canvas"] == [320, 64] and "canvas" not in stacked[1].config  # b's own is the bucket
    with pytest.raises(ConfigError, match="max_canvas_waste"):  # buckets far apart still cannot stack
        dipcore.restore_batch(obs, task="denoise", iterations=1, canvas="bucket", engine=STACK, **SMALL)


# ------------------------------------------------------------------------------------------------- the limits


def test_the_waste_limit_refuses_a_canvas_too_large_for_an_image(pair):
    big = data.astronaut().astype(np.float32)[0:96, 0:96] / 255  # canvas 96×96: 2.25× the small one's 64×64
    obs = [dipcore.degrade(c, task="denoise", seed=i) for i, c in enumerate((big, pair[1]))]
    kw = dict(task="denoise", iterations=1, engine=STACK, **SMALL)
    with pytest.raises(ConfigError, match="max_canvas_waste"):
        dipcore.restore_batch(obs, **kw)
    assert len(dipcore.restore_batch(obs, max_canvas_waste=None, **kw)) == 2  # lifted: it runs
    assert len(dipcore.restore_batch(obs, max_canvas_waste=2.5, **kw)) == 2
    with pytest.raises(ConfigError, match="one canvas size"):  # stacked on their own canvases: one size only
        dipcore.restore_batch(obs, canvas="own", **kw)
    with pytest.raises(ConfigError, match="cannot hold"):
        dipcore.restore_batch(obs, canvas=(64, 64), **kw)
    with pytest.raises(ConfigError, match="canvas must be"):
        dipcore.restore_batch(obs, canvas="large", **kw)


def test_a_canvas_must_hold_the_image_on_the_nets_multiples(pair):
    p = preset_for("denoise", **SMALL)
    o = dipcore.degrade(pair[0], task="denoise")
    for canvas in ((64, 64), (100, 64)):  # too small; not a multiple of 32
        with pytest.raises(ConfigError, match="cannot hold"):
            build_problem(p, o, device=torch.device("cpu"), seed=0, canvas=canvas)
    problem = build_problem(p, o, device=torch.device("cpu"), seed=0, canvas=(128, 96))
    assert problem.z.shape[-2:] == (128, 96) and problem.crop == (24, 16, 80, 64)
