"""Self-validation (dipcore.selfvalidation): the held-out split, the two rules, and restore's two phases.

Fits are tiny (24² crops, 8 channels, tens of iterations): what is checked is what holds on every CPU — which pixels
the first fit sees, which iteration each rule keeps, and that the returned image is exactly a plain fit's to the
count found — not how good the image is (the study in benchmarks/RESULTS.md measures that).
"""

import dataclasses

import numpy as np
import pytest
import torch
from skimage import data

import dipcore
import dipcore.selfvalidation as sv
from dipcore.api import build_problem
from dipcore.batched import stack_problems
from dipcore.fit import FitSettings, fit_stacked
from dipcore.operators import Mask

TINY = {"channels": 8, "seed": 0}


@pytest.fixture(scope="module")
def crop():
    return data.astronaut()[100:124, 200:224].astype(np.float32) / 255  # (24, 24, 3)


def test_held_out_pixels_are_a_seeded_tenth_of_the_observed_ones():
    observed = torch.zeros(1, 1, 64, 64)
    observed[..., :, :40] = 1  # only the left 40 columns are known
    held = sv.held_out_mask(observed, 0.1, seed=3)
    assert held.shape == observed.shape and set(held.unique().tolist()) <= {0.0, 1.0}
    assert held[..., :, 40:].sum() == 0  # never an unknown pixel
    assert 0.07 < held.sum() / observed.sum() < 0.13  # 256 expected of 2560; 3 standard deviations ≈ 0.018
    assert torch.equal(held, sv.held_out_mask(observed, 0.1, seed=3))
    assert not torch.equal(held, sv.held_out_mask(observed, 0.1, seed=4))
    with pytest.raises(ValueError):
        sv.held_out_mask(observed, 1.0, seed=0)


@pytest.mark.parametrize("task", ["denoise", "inpaint", "sr"])
def test_the_first_fit_never_sees_its_held_out_pixels(crop, task):
    """Whatever the net outputs, the loss is blind to the held-out entries: changing the observation there changes
    nothing the first fit computes, and the held-out measure is the fit on exactly those entries."""
    obs = dipcore.degrade(crop, task=task, seed=0, **({"scale": 2} if task == "sr" else {}))
    p = dipcore.preset_for(task, **({"scale": 2} if task == "sr" else {}), channels=8)
    problem = build_problem(p, obs, device=torch.device("cpu"), seed=0)
    original_operator, original_target = problem.operator, problem.target.clone()
    measure = sv.hold_out(problem, seed=0)
    held = measure.weight[:, :1] > 0  # (1, 1, h, w) in A's space
    expected_type = {"denoise": Mask, "inpaint": Mask, "sr": sv.HeldOut}[task]
    assert isinstance(problem.operator, expected_type)
    if task == "inpaint":  # held out among the known pixels only
        assert not (held & (original_operator.mask[:, :1] == 0)).any()
    x = torch.rand(1, 3, *crop.shape[:2])
    residual = problem.operator(x) - problem.target
    assert residual.masked_select(held.expand_as(residual)).abs().max() == 0
    outside = residual.masked_select(~held.expand_as(residual))
    expected = (original_operator(x) - original_target).masked_select(~held.expand_as(residual))
    torch.testing.assert_close(outside, expected)
    fit_on_held = (original_operator(x) - original_target).square().masked_select(held.expand_as(residual)).mean()
    torch.testing.assert_close(measure(x), fit_on_held)


class _Series:
    """A held-out measure that reads its value from a list, one per call."""

    def __init__(self, values):
        self.values = iter(values)

    def __call__(self, x):
        return torch.tensor(next(self.values), dtype=torch.float32)


def test_held_out_rule_keeps_the_strict_minimum_and_stops_patience_after_it():
    values = [5.0, 4.0, 3.0, 3.0, 3.5, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0]
    rule = sv.HeldOutStopping(_Series(values), patience=4)
    stops = []
    for it, _ in enumerate(values, start=1):
        rule.update(torch.full((1, 1, 2, 2), float(it)), it)
        stops.append(rule.should_stop(it))
    assert int(rule.best_iteration) == 6  # 2.5; the tie at 4 did not move the pick from 3 earlier
    assert float(rule.best_output[0, 0, 0, 0]) == 6.0  # the image it was handed at that iteration
    assert stops.index(True) + 1 == 10  # 4 iterations after 6


def test_count_rule_keeps_its_iteration_and_stacked_fits_each_return_their_own(crop):
    """Two stacked fits run to 9; the one told 5 returns its average at 5: the same as a stacked run of 5."""
    obs = dipcore.degrade(crop, task="denoise", sigma=25, seed=0)
    p = dipcore.preset_for("denoise", channels=8, early_stopping=False)

    def stacked(settings):
        problems = [build_problem(p, obs, device=torch.device("cpu"), seed=s) for s in (0, 1)]
        gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
        return fit_stacked(stack_problems(problems), settings, generators=gens)

    base = FitSettings(lr=p.lr, iterations=9, reg_noise_std=p.reg_noise_std, ema=p.ema)
    counted = stacked(sv.refit_settings(base, [5, 9], watches="average"))
    plain5 = stacked(dataclasses.replace(base, iterations=5))
    assert [r.iteration for r in counted] == [5, 9] and counted[0].iterations_run == 9
    torch.testing.assert_close(counted[0].stopped, plain5[0].average, rtol=0, atol=0)
    torch.testing.assert_close(counted[1].stopped, counted[1].average, rtol=0, atol=0)


def test_a_rule_on_the_average_needs_one():
    with pytest.raises(ValueError, match="ema"):
        dipcore.fit._StoppingPolicy(FitSettings(stopping=lambda: sv.CountStopping(3)), 1)


def test_restore_returns_a_plain_fit_to_the_count_the_held_out_fit_found(crop, monkeypatch):
    monkeypatch.setattr(sv, "SELFVAL_PATIENCE", 5)  # so that the rule fires within a tiny run
    obs = dipcore.degrade(crop, task="denoise", sigma=50, seed=0)
    seen = []
    res = dipcore.restore(
        obs, task="denoise", iterations=40, lr=0.05, reference=crop, callback=lambda r: seen.append(r), **TINY
    )
    assert res.config["early_stopping"] == "selfval" and res.stop_reason == "early_stopping"
    found = res.iterations_run - res.iteration  # the first phase's length: the search, then the refit to the count
    # A callback sees each phase in order, labelled (restore-image's progress bar says why it starts again).
    assert [(r.phase, r.iteration) for r in seen] == [
        *(("search", t) for t in range(1, found + 1)),
        *(("refit", t) for t in range(1, res.iteration + 1)),
    ]
    assert {r.iterations for r in seen if r.phase == "refit"} == {res.iteration}
    assert 1 <= res.iteration <= 60 and found <= 60
    if res.stopping.fired_at is not None:  # fired: patience after the pick, at a sync point
        assert res.stopping.fired_at == found and found - res.iteration >= 5
    else:
        assert found == 60  # ran its whole search (1.5 × 40)
    plain = dipcore.restore(obs, task="denoise", iterations=res.iteration, lr=0.05, early_stopping=False, **TINY)
    np.testing.assert_array_equal(res.image, plain.image)  # the refit is that fit, bit for bit
    assert len(res.history["loss"]) == res.iteration  # the curves are the refit's


@pytest.mark.parametrize("mode", ["threads", "stack"])
def test_a_batch_refits_each_image_to_its_own_count(crop, mode, monkeypatch):
    monkeypatch.setattr(sv, "SELFVAL_PATIENCE", 5)
    observations = [dipcore.degrade(crop, task="denoise", sigma=s, seed=0) for s in (15, 50)]
    engine = dipcore.EngineOptions(batch_mode=mode)
    kwargs = {"task": "denoise", "iterations": 30, "lr": 0.05, "channels": 8, "engine": engine}
    batch = dipcore.restore_batch(observations, seeds=[0, 1], **kwargs)
    for res in batch:
        assert res.config["early_stopping"] == "selfval" and 1 <= res.iteration <= 45
        assert res.stopping.iteration == res.iteration
    if mode == "threads":  # side by side on a thread each, a fit is the plain loop on one thread: its own restore
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for obs, res, seed in zip(observations, batch, (0, 1), strict=True):
                alone = dipcore.restore(obs, seed=seed, **{k: v for k, v in kwargs.items() if k != "engine"})
                assert res.iteration == alone.iteration
                np.testing.assert_array_equal(res.image, alone.image)
        finally:
            torch.set_num_threads(threads)
    assert all(np.isfinite(r.image).all() for r in batch)


def test_a_callback_stop_in_the_search_ends_the_restore(crop):
    obs = dipcore.degrade(crop, task="denoise", sigma=25, seed=0)
    res = dipcore.restore(obs, task="denoise", iterations=40, callback=lambda r: r.iteration >= 7, **TINY)
    assert res.stop_reason == "callback" and res.iterations_run == 7


def test_denoising_defaults_to_self_validation_and_false_is_the_papers_loop(crop):
    assert dipcore.get_preset("denoise").early_stopping == "selfval"
    assert dipcore.get_preset("denoise", sigma=50).early_stopping == "selfval"
    assert dipcore.get_preset("denoise", preset="fast").early_stopping is False
    for task in ("sr", "inpaint", "jpeg", "reconstruct"):
        assert dipcore.get_preset(task).early_stopping is False
    obs = dipcore.degrade(crop, task="denoise", sigma=25, seed=0)
    paper = dipcore.restore(obs, task="denoise", iterations=12, early_stopping=False, **TINY)
    assert (paper.iteration, paper.iterations_run, paper.stop_reason) == (12, 12, "iterations")
