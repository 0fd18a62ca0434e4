"""Each task's definition: the registry behind the task strings, and one check per task that its parts agree (the
operator maps the output's shape onto the target's, the synthesis reads the keywords it declares)."""

import doctest
import inspect

import numpy as np
import pytest
import torch

import dipcore
from dipcore import task_defs
from dipcore.errors import ConfigError
from dipcore.task_defs import TASK_DEFS, get_task
from dipcore.tasks import TASKS, preset_for

CLEAN = np.random.default_rng(0).random((32, 48, 3), dtype=np.float32)


def test_the_task_strings_are_the_registry_in_the_papers_order():
    assert TASKS == tuple(TASK_DEFS) == dipcore.TASKS
    assert TASKS == ("denoise", "jpeg", "sr", "inpaint", "flash_noflash", "preimage", "reconstruct")
    assert all(get_task(name).name == name for name in TASKS)


def test_an_unknown_task_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="unknown task 'deblur'; choose one of denoise, jpeg, sr"):
        get_task("deblur")


def test_the_module_examples_hold():
    assert doctest.testmod(task_defs, raise_on_error=True).attempted >= 2


def test_output_shape_and_the_observed_size_it_inverts():
    sr, pre, den = get_task("sr"), get_task("preimage"), get_task("denoise")
    assert sr.output_shape((8, 12, 3), scale=4) == (32, 48, 3) and sr.observed_size(34, 50, scale=4) == (8, 12)
    assert pre.output_shape((224, 224, 1)) == (224, 224, 3)
    assert den.output_shape((8, 12, 1), scale=4) == (8, 12, 1) and den.observed_size(8, 12, scale=4) == (8, 12)


def test_the_default_psnr_protocol_and_naive_estimate():
    sr = get_task("sr")
    assert sr.psnr_protocol(scale=4).kwargs() == {"y_channel": True, "shave": 4, "crop": None}
    assert get_task("inpaint").psnr_protocol(scale=4) == dipcore.PsnrProtocol()
    name, up = sr.naive(CLEAN[:8, :12], scale=4)
    assert name == "bicubic" and up.shape == (32, 48, 3)
    assert get_task("denoise").naive(CLEAN)[0] == "input" and get_task("denoise").naive(CLEAN)[1] is CLEAN


@pytest.mark.parametrize("name", TASKS)
def test_each_synthesis_reads_exactly_the_keywords_it_declares(name):
    t = get_task(name)
    keywords = {
        n for n, q in inspect.signature(t.synthesise).parameters.items() if q.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert keywords - {"seed"} == set(t.degrade_args)


@pytest.mark.parametrize("name", [n for n in TASKS if n != "flash_noflash"])
def test_each_operator_maps_the_output_onto_the_target(name):
    """The definition's parts agree: A of an output of `output_shape` has the shape of what the fit matches."""
    t = get_task(name)
    p = preset_for(name, preset="fast", scale=2 if t.scaled else None)
    obs = dipcore.degrade(CLEAN, task=name, scale=2, seed=0)
    op = t.operator(p, obs)
    h, w, c = t.output_shape(obs.image.shape, p.scale)
    y = torch.from_numpy(obs.image.transpose(2, 0, 1).copy())[None]  # (1, C, h, w)
    target = op(y) if t.target == "A(y)" else y
    assert op(torch.zeros(1, c, h, w)).shape == target.shape
    assert all(getattr(obs, side) is not None for side in t.side_inputs)


def test_flash_no_flash_has_no_synthesis_and_needs_its_guide():
    t = get_task("flash_noflash")
    assert t.side_inputs == ("guide",)
    with pytest.raises(ConfigError, match="no synthetic degradation"):
        dipcore.degrade(CLEAN, task="flash_noflash")


def test_only_the_pre_image_refuses_batching():
    assert [n for n in TASKS if get_task(n).batch_refusal] == ["preimage"]
    assert dipcore.batch_refusal(preset_for("preimage", preset="fast")) == get_task("preimage").batch_refusal
