"""pipelines.evaluation.baselines: the classical denoisers and the inpainting fill beat the degraded input on photo
crops; a failing baseline costs its columns, never the image."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from skimage import data

import dipcore
from pipelines.evaluation import baselines


@pytest.fixture(scope="module")
def photo():
    return data.astronaut()[64:128, 192:256].astype(np.float32) / 255  # (64, 64, 3)


def _gain(task, obs, truth, **kw):
    name, estimate = baselines.restore_classical(task, obs, **kw)
    assert estimate.shape == truth.shape and estimate.dtype == np.float32
    assert estimate.min() >= 0.0 and estimate.max() <= 1.0
    return name, dipcore.psnr(estimate, truth) - dipcore.psnr(obs.image, truth)


@pytest.mark.parametrize("gray", [False, True])
def test_denoising_baseline_is_cbm3d_when_installed(photo, gray):
    pytest.importorskip("bm3d")
    truth = photo[16:48, 16:48]  # 32²: CBM3D takes seconds on a busy CPU even at 64²
    truth = truth.mean(2, keepdims=True) if gray else truth
    obs = dipcore.degrade(truth, task="denoise", sigma=25, seed=0)
    name, gain = _gain("denoise", obs, truth, sigma=25)
    assert name == ("bm3d" if gray else "cbm3d") and gain > 5.0, gain  # the noisy input is ~20 dB


def test_denoising_falls_back_to_non_local_means(photo, monkeypatch):
    monkeypatch.setattr(baselines, "_bm3d", lambda: None)  # as where the optional extra is not installed
    obs = dipcore.degrade(photo, task="denoise", sigma=25, seed=0)
    name, gain = _gain("denoise", obs, photo, sigma=25)
    assert name == "nlm" and gain > 4.0, gain


def test_inpainting_baseline_fills_the_dropped_pixels(photo):
    gray = photo.mean(2, keepdims=True)
    obs = dipcore.degrade(gray, task="inpaint", drop=0.5, seed=0)
    name, gain = _gain("inpaint", obs, gray)
    assert name == "biharmonic" and gain > 10.0, gain
    assert baselines.restore_classical("sr", dipcore.degrade(photo, task="sr", scale=4, seed=0)) is None


def test_a_failing_baseline_gives_null_columns_and_a_warning(photo, caplog):
    obs = dipcore.degrade(photo, task="inpaint", drop=0.5, seed=0)
    obs.mask = None
    with caplog.at_level(logging.WARNING, logger="dipflow.baselines"):
        cols = baselines.score_classical("inpaint", obs, photo, sigma=None, protocol={})
    assert cols == {"classical_name": None, "psnr_classical": None}
    assert "needs the observation's mask" in caplog.text
    obs = dipcore.degrade(photo, task="inpaint", drop=0.5, seed=0)
    cols = baselines.score_classical("inpaint", obs, photo, sigma=None, protocol={"shave": 2})
    _, estimate = baselines.restore_classical("inpaint", obs)
    assert cols == {"classical_name": "biharmonic", "psnr_classical": dipcore.psnr(estimate, photo, shave=2)}


def test_the_tasks_planning_scores_classically_are_those_with_a_baseline(photo):
    """`jobs.CLASSICAL_TASKS` (what planning puts in a config's identity) names exactly the tasks that have a method
    here: a task in one and not the other would record a baseline that never comes, or drop one that would."""
    from pipelines import jobs

    small = photo[:16, :16]
    for task in dipcore.TASKS:
        if task in jobs.CLASSICAL_TASKS:
            assert baselines.restore_classical(task, dipcore.degrade(small, task=task, seed=0), sigma=25) is not None
        else:
            assert baselines.restore_classical(task, None) is None, task
    assert set(jobs.CLASSICAL_TASKS) <= set(dipcore.TASKS)
