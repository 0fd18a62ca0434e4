"""The stopping study (benchmarks/study_stopping.py) and what it rests on: every choice it records lies on the run's
own curves and below the run's oracle, σ̂ is close to σ, the study's signals are ES-WMV's, and watching a fit
changes nothing in it."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from dipcore.api import build_problem
from dipcore.degrade import degrade
from dipcore.fit import FitSettings, fit
from dipcore.noise_level import estimate_sigma
from dipcore.stopping import VarianceStopping, WindowVariance
from dipcore.tasks import preset_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stopping_candidates as sc
import study_stopping

# Rules small enough to fire within a 20-iteration fit, so that the checks below see fired choices too.
SMALL = study_stopping.StudyConfig(
    channels=8,
    iterations={"denoise": 20, "sr": 20},
    averages=(sc.Average(0.995), sc.Average(0.999, warmup=True)),
    window=4,
    patiences=(3, 8),
    smooth=3,
)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return data.astronaut()[100:132, 200:232].astype(np.float32) / 255  # 32² of texture and edges


@pytest.fixture(scope="module")
def rows(clean) -> list[dict]:
    denoise = study_stopping.study_image("denoise", clean, level=25, config=SMALL)
    sr = study_stopping.study_image(
        "sr", clean, level=4, config=study_stopping.dataclasses.replace(SMALL, variants=("base", "selfval"))
    )
    return denoise + sr


def test_the_study_records_every_variant_and_rule(rows):
    denoise = {r["variant"] for r in rows if r["task"] == "denoise"}
    assert denoise == {
        "base",
        "ema0.995",
        "ema0.999w",
        "selfval",
        "cosine",
        "cosine+ema0.995",
        "cosine+ema0.999w",
        "sure",
    }
    picks = {name for r in rows for name in r["picks"]}
    for rule in ("wmv_raw_p3", "wmv_avg_p8", "selfval_raw_p3", "selfval_avg_p8", "discrepancy_avg", "sure_negative"):
        assert rule in picks
    assert not any(name.startswith("discrepancy") for r in rows if r["task"] == "sr" for name in r["picks"])
    assert any(c["fired"] and name.startswith("wmv") for r in rows for name, c in r["picks"].items())


def test_every_choice_lies_on_the_runs_curves_and_below_its_oracle(rows):
    for r in rows:
        n, best = r["iterations"], r["oracle"]
        assert best["psnr"] == pytest.approx(max(max(c) for c in r["curves"].values()), abs=0.005)
        assert 1 <= best["iteration"] <= n
        for name, choice in r["picks"].items():
            where = f"{r['task']} {r['variant']} {name}"
            assert 1 <= choice["iteration"] <= n, where
            assert choice["psnr"] <= best["psnr"], where
            # The curves are stored to 0.01 dB, the choices to 1e-4.
            assert choice["psnr"] == pytest.approx(r["curves"][choice["output"]][choice["iteration"] - 1], abs=0.006)
        assert r["picks"]["fixed"]["iteration"] == r["count"]


def test_the_sure_variant_learns_from_the_noisy_image_and_its_loss_estimates_the_mse(rows):
    sure = next(r for r in rows if r["variant"] == "sure")
    assert sure["signals"]["sure_raw"] and all(v is not None for v in sure["signals"]["sure_raw"])
    # SURE ≈ MSE to the clean image: at the last iteration within a few of its own standard deviations of it.
    mse = 10 ** (-sure["curves"]["raw"][-1] / 10)
    assert sure["signals"]["sure_raw"][-1] == pytest.approx(mse, rel=0.5)


@pytest.mark.parametrize("sigma", [25, 50])
@pytest.mark.parametrize("image", ["flat", "smooth"])
def test_the_noise_estimate_is_within_ten_percent(sigma, image):
    """On Gaussian noise alone, σ̂'s relative standard deviation is 1.17/√n (the median's asymptotic variance: the
    MAD estimate is 37 % efficient); a 64×64 colour image gives n = 32·32·3 = 3072 HH coefficients, 2.1 %, so
    ±10 % is 4.7 standard deviations. A smooth image adds a second derivative of ~10⁻³ to HH; clipping at σ = 50
    takes ~1 % from the flat image's estimate."""
    yy, xx = np.mgrid[0:64, 0:64] / 64
    base = np.full((64, 64), 0.5) if image == "flat" else 0.5 + 0.2 * np.sin(2 * np.pi * xx) * np.cos(np.pi * yy)
    clean = np.repeat(base[..., None], 3, axis=2).astype(np.float32)
    noisy = degrade(clean, task="denoise", sigma=sigma, seed=3).image
    assert 255 * estimate_sigma(noisy) == pytest.approx(sigma, rel=0.10)
    assert 255 * estimate_sigma(clean) < 1.0  # what σ̂ sees of the image itself


def test_the_window_variance_is_es_wmvs():
    """The study's signal is the deployed rule's (one class, `dipcore.stopping.WindowVariance`), and it is the
    variance of the last W outputs as recomputing the window gives it."""
    gen = torch.Generator().manual_seed(0)
    rule, ours, last = VarianceStopping(window=5, patience=100), WindowVariance(5), []
    for it in range(1, 40):
        x = 0.5 + 0.1 * torch.rand(1, 3, 8, 8, generator=gen) * math.exp(-it / 10)
        rule.update(x, it)
        value = ours.update(x)
        last = [*last[-4:], x]
        if rule.variance is None:
            assert value is None and len(last) < 5
        else:
            window = torch.stack(last)
            expected = (window - window.mean(0, keepdim=True)).pow(2).mean()
            assert float(value) == pytest.approx(float(expected), rel=1e-4, abs=1e-9)
            assert float(value) == float(rule.variance)


def test_the_rules_pick_as_they_say():
    ctx = sc.Context(iterations=8, sigma_hat=0.1)
    series = [None, 5.0, 3.0, 4.0, 3.0, 6.0, 2.0, 7.0]
    assert sc.minimum_with_patience(2)(series, ctx) == (3, 5)  # 3.0 again at 5 is no new minimum
    assert sc.minimum_with_patience(9)(series, ctx) == (None, None)
    assert sc.below_noise_level()([0.05, 0.02, 0.009, 0.001], ctx) == (3, 3)  # σ̂² = 0.01
    assert sc.below_noise_level()([0.05], sc.Context(iterations=1)) == (None, None)  # no σ̂, no rule
    # Trailing means of 3 from iteration 3: 3.3, 4.3, 2.7, 5.7, 4.3, 6: the minimum at 5 speaks for iterations 3–5,
    # so 4 is picked; two iterations later (7) it fires.
    assert sc.smoothed(sc.minimum_with_patience(2), 3)([1.0, 7.0, 2.0, 4.0, 2.0, 11.0, 0.0, 7.0], ctx) == (4, 7)
    curves = {"raw": [1.0, 2.0, 3.0], "avg": [1.5, 2.5, 2.9]}
    rule = sc.Rule("r", "variance", "raw", sc.minimum_with_patience(5))
    unfired = sc.apply_rule(rule, curves, [1.0, 2.0, 3.0], sc.Context(iterations=3), default="avg")
    assert (unfired.iteration, unfired.output, unfired.psnr, unfired.fired) == (3, "avg", 2.9, False)
    assert sc.oracle(curves) == sc.Choice(3, "raw", 3.0, fired=True)


def _denoising_fit(clean, iterations=12, **settings):
    """(problem, result) of a short denoising fit with the paper's loop (jitter, EMA, backtracking); 0 iterations:
    the problem alone, its net as initialised."""
    p = preset_for("denoise", preset="paper", channels=8)
    obs = degrade(clean, task="denoise", sigma=25, seed=0)
    problem = build_problem(p, obs, device=torch.device("cpu"), seed=0, reference=clean)
    if iterations == 0:
        return problem, None
    settings = FitSettings(
        lr=p.lr, iterations=iterations, reg_noise_std=p.reg_noise_std, ema=p.ema, backtrack=True, **settings
    )
    return problem, fit(problem, settings, generator=torch.Generator().manual_seed(0))


def test_monitors_leave_the_fit_bit_identical(clean):
    _, plain = _denoising_fit(clean)
    problem, watched = _denoising_fit(clean)
    spec = sc.SignalSpec(
        12,
        window=3,
        averages=(sc.Average(0.999, warmup=True),),
        data=sc.DataFit(problem.operator, problem.target, torch.ones(1, 1, 32, 32)),
        heldout=sc.DataFit(problem.operator, problem.target, torch.ones(1, 1, 32, 32)),
        reference=problem.reference,
    )
    _, watched = _denoising_fit(clean, monitors=(lambda: sc.Signals(spec), lambda: sc.Signals(spec)))
    assert torch.equal(watched.final, plain.final) and torch.equal(watched.average, plain.average)
    assert watched.history == plain.history
    assert len(watched.monitors) == 2 and watched.monitors[0] is not watched.monitors[1]
    signals = watched.monitors[0].read()
    assert set(signals) == {
        f"{s}_{o}" for s in ("variance", "datafit", "heldout") for o in ("raw", "avg", "ema0.999w")
    } | {"psnr_ema0.999w"}
    assert signals["variance_raw"][:2] == [None, None] and None not in signals["variance_raw"][2:]


def test_a_learning_rate_schedule_scales_adams_steps(clean):
    initial, _ = _denoising_fit(clean, iterations=0)
    moved, plain = _denoising_fit(clean)
    _, same = _denoising_fit(clean, lr_schedule=lambda t: 1.0)
    frozen, _ = _denoising_fit(clean, lr_schedule=lambda t: 0.0)
    assert torch.equal(same.final, plain.final)

    def weights(problem):
        return torch.cat([p.detach().flatten() for p in problem.net.parameters()])

    assert torch.equal(weights(frozen), weights(initial))  # a factor 0: Adam's steps move nothing
    assert not torch.equal(weights(moved), weights(initial))
