"""A run's settings have one home (`pipelines.settings`): the flows take each model as one parameter, refuse a
misspelt field before anything is written, and resolve the dipcore preset once per dataset — never again per job,
per batch or in the worker (the inline executor keeps the fits in this process, so every resolution is counted)."""

from __future__ import annotations

import pytest

import dipcore.tasks
from pipelines import flows

FAST = {"preset": "fast", "iterations": 2, "channels": 4}
INLINE = {"executor": "inline"}


@pytest.fixture
def resolutions(monkeypatch):
    """How many times a preset was resolved (`dipcore.tasks.get_preset`: every `preset_for` goes through it)."""
    calls = []
    real = dipcore.tasks.get_preset

    def counted(*args, **kwargs):
        calls.append(args[0] if args else kwargs["task"])
        return real(*args, **kwargs)

    monkeypatch.setattr(dipcore.tasks, "get_preset", counted)
    return calls


def test_restore_resolves_the_preset_once_for_all_its_jobs(tmp_path, write_images, resolutions):
    write_images(str(tmp_path / "src"), ["a.png", "b.png", "c/d.png"], size=16)
    summary = flows.restore_dataset(
        str(tmp_path / "src"), str(tmp_path / "out"), {"task": "denoise", **FAST}, execution={**INLINE, "pack": 1}
    )
    assert summary["ok"] == 3
    assert resolutions == ["denoise"]  # the driver's one resolution; 3 jobs, 3 fits, none resolved again


def test_evaluate_resolves_the_preset_once_per_benchmark(tmp_path, write_images, resolutions):
    write_images(str(tmp_path / "clean"), ["a.png", "b.png"], size=16)
    settings = {"task": "denoise", **FAST, "runs": 1, "stopping": "off", "classical": False}
    summary = flows.evaluate([str(tmp_path / "clean")], str(tmp_path), str(tmp_path / "eval"), settings, INLINE)
    assert summary["ok"] == 2
    assert resolutions == ["denoise"]


def test_a_misspelt_setting_fails_the_run_before_anything_is_written(tmp_path, write_images):
    from prefect.exceptions import ParameterTypeError

    write_images(str(tmp_path / "src"), ["a.png"], size=16)
    for settings, selection in (({"task": "denoise", "iteration": 2}, {}), ({"task": "denoise"}, {"mask": "m/"})):
        with pytest.raises(ParameterTypeError, match=r"iteration|mask"):
            flows.restore_dataset(str(tmp_path / "src"), str(tmp_path / "out"), settings, selection, INLINE)
    with pytest.raises(ParameterTypeError, match="stopping"):
        flows.evaluate([str(tmp_path / "src")], str(tmp_path), str(tmp_path / "eval"), {"stopping": "stop"}, INLINE)
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()
