"""pipelines.evaluation.protocols reads each task's definition (dipcore.get_task): the paper's knobs per task, the
side inputs a plain job needs, the PSNR protocol and the naive baseline of a score."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import jobs
from pipelines.evaluation import protocols
from pipelines.jobs import Synthesis
from pipelines.settings import EvaluationSettings, RestoreSettings


def _job(config: jobs.RunConfig, **kw) -> jobs.Job:
    return jobs.Job(
        run_id="r",
        dataset="d",
        key="a.png",
        input_uri="memory://in/a.png",
        config=config,
        output_uri="memory://out/a.png",
        **kw,
    )


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        ("set5", {}, Synthesis("sr", scale=4, crop_multiple=32)),
        ("set5", {"scale": 2, "sigma": 50.0, "crop": 64}, Synthesis("sr", scale=2, crop_multiple=32, crop_size=64)),
        ("cbm3d9", {}, Synthesis("denoise", sigma=25.0)),
        ("cbm3d9", {"sigma": 50.0, "scale": 2}, Synthesis("denoise", sigma=50.0)),  # σ is denoising's knob only
        ("heide11", {}, Synthesis("inpaint", drop=0.5, variant="random")),
        ("set14", {"task": "inpaint"}, Synthesis("inpaint", drop=0.5, variant="random")),
        ("set14", {"task": "jpeg", "crop": 40}, Synthesis("jpeg", crop_size=40)),
        ("my-folder", {}, Synthesis("sr", scale=4, crop_multiple=32)),  # not a benchmark: SR ×4
    ],
)
def test_the_papers_knobs_are_kept_where_the_tasks_synthesis_reads_them(name, kw, expected):
    assert protocols.benchmark_synthesis(name, **kw) == expected


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("inpaint", "no mask for a.png: none named a_mask.<ext> beside it, nor a.<ext> or a_mask.<ext> at its place"),
        ("flash_noflash", "no guide for a.png: put a<SUFFIX>.png beside it and pass --guide-suffix"),
    ],
)
def test_a_plain_job_without_the_side_input_its_task_needs_is_refused(task, message):
    import re

    import dipcore

    with pytest.raises(dipcore.ConfigError, match=re.escape(message)):
        protocols.observe(
            _job(jobs.restore_config(RestoreSettings(task=task))), np.zeros((8, 8, 3), np.float32), lambda uri: None
        )


def test_the_psnr_protocol_and_the_naive_baseline_are_the_tasks():
    sr = _job(protocols.evaluation_config("set5", EvaluationSettings(preset="fast")))
    denoise = _job(protocols.evaluation_config("cbm3d9", EvaluationSettings(preset="fast")))
    assert protocols.psnr_protocol(sr) == {"y_channel": True, "shave": 4}
    assert protocols.psnr_protocol(denoise) == {"y_channel": False, "shave": 0}

    class _Result:  # what score reads of a Restoration
        image = np.full((64, 64, 3), 0.5, np.float32)
        runs, average, final, best_psnr, best_iteration, stopping = [], None, image, None, None, None

    truth = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    obs, _, _ = protocols.observe(sr, truth, lambda uri: None)
    row = protocols.score(sr, _Result(), obs, truth)
    assert (row["baseline_name"], row["psnr_channel"], row["psnr_shave"]) == ("bicubic", "y", 4)
    assert protocols.score(denoise, _Result(), truth, truth)["baseline_name"] == "input"
