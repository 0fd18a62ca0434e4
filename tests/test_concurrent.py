"""Concurrent fits on CPU threads: the same results as the fits run one by one, threads shared and given back."""

import numpy as np
import pytest
import torch
from skimage import data

import dipcore
from dipcore import preset_for
from dipcore.api import build_problem
from dipcore.concurrent import concurrent_workers, fit_concurrently
from dipcore.engine import EngineOptions
from dipcore.errors import ConfigError
from dipcore.fit import FitSettings, fit
from dipcore.observation import Observation

SMALL = dict(preset="fast", channels=8)


@pytest.fixture
def two_threads(keep_torch_threads):
    torch.set_num_threads(2)


def _problems(seeds, iterations=3):
    img = data.astronaut()[100:164, 180:244].astype(np.float32) / 255
    p = preset_for("denoise", **SMALL)
    obs = dipcore.degrade(img, task="denoise", seed=0)
    problems = [
        build_problem(p, Observation(obs.image, "denoise"), device=torch.device("cpu"), seed=s, reference=img)
        for s in seeds
    ]
    settings = FitSettings(lr=p.lr, iterations=iterations, reg_noise_std=p.reg_noise_std, ema=p.ema)
    return problems, settings


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_concurrent_fits_equal_the_fits_one_by_one_on_as_many_threads(two_threads):
    seeds = [3, 4, 5]  # three fits on two workers: the third waits for a free one
    problems, settings = _problems(seeds)
    together = fit_concurrently(problems, settings, generators=_generators(seeds))
    torch.set_num_threads(1)  # what each of the two workers had
    problems, settings = _problems(seeds)
    alone = [fit(p, settings, generator=g) for p, g in zip(problems, _generators(seeds), strict=True)]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a.final, b.final, atol=1e-6, rtol=0)
        assert a.history["loss"] == pytest.approx(b.history["loss"], rel=1e-6)
    assert np.abs((together[0].final - together[1].final).numpy()).max() > 0.05  # fits did not get mixed up


def test_torch_threads_are_given_back_after_success_and_failure(two_threads):
    problems, settings = _problems([0, 1])
    fit_concurrently(problems, settings, generators=_generators([0, 1]))
    assert torch.get_num_threads() == 2
    problems[1].target = problems[1].target[:, :, :5]  # a loss that cannot be computed
    with pytest.raises(RuntimeError):
        fit_concurrently(problems, settings, generators=_generators([0, 1]))
    assert torch.get_num_threads() == 2


def test_a_stop_from_the_callback_stops_every_fit(two_threads):
    problems, settings = _problems([0, 1], iterations=200)
    seen = []

    def callback(record):
        seen.append(record.iteration)
        return record.iteration == 3

    results = fit_concurrently(problems, settings, generators=_generators([0, 1]), callback=callback)
    assert seen == [1, 2, 3]  # one fit's records, in order
    assert [r.stop_reason for r in results] == ["callback", "callback"]
    assert results[0].iterations_run == 3 and results[1].iterations_run < 200


def test_a_caller_pinned_to_one_cpu_runs_the_fits_one_by_one(two_threads, monkeypatch):
    # OMP_PROC_BIND pins the main thread to one core and the fits' threads would inherit it (benchmarks/RESULTS.md).
    import threading

    from dipcore import concurrent

    ran_on = []

    def recording_fit(*args, **kw):
        ran_on.append(threading.current_thread().name)
        return fit(*args, **kw)

    monkeypatch.setattr(concurrent, "fit", recording_fit)
    problems, settings = _problems([0, 1], iterations=1)
    fit_concurrently(problems, settings, generators=_generators([0, 1]))
    assert len(ran_on) == 2 and all(name.startswith("dip-fit") for name in ran_on)  # side by side

    ran_on.clear()
    monkeypatch.setattr(concurrent.os, "sched_getaffinity", lambda pid: {0})
    with pytest.warns(RuntimeWarning, match="run one by one"):
        fit_concurrently(problems, settings, generators=_generators([0, 1]))
    assert ran_on == [threading.current_thread().name] * 2 and torch.get_num_threads() == 2


def test_as_many_workers_as_threads_and_fits_allow():
    assert concurrent_workers(3, threads=2) == 2
    assert concurrent_workers(1, threads=2) == 1
    assert concurrent_workers(5, threads=1) == 1


def test_threads_are_the_cpu_default_and_refused_on_cuda():
    assert EngineOptions().resolved(torch.device("cpu")).batch_mode == "threads"
    assert EngineOptions().resolved(torch.device("cuda")).batch_mode == "stack"
    with pytest.raises(ConfigError, match="for CPUs: on cuda"):
        EngineOptions(batch_mode="threads").resolved(torch.device("cuda"))
    with pytest.raises(ConfigError, match="batch_mode"):
        EngineOptions(batch_mode="processes").resolved(torch.device("cpu"))
