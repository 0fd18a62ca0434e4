"""pipelines.execution.workers and pipelines.jobs: one job in-process, the Ray driver loop with dead and stuck actors,
and actor placement on a multi-node cluster with logical GPUs. Tiny images, 8-channel nets, a few iterations."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np
import pytest
import torch
import whole_plan
from whole_plan import Planned

import dipcore
from pipelines import jobs, storage
from pipelines.evaluation import protocols
from pipelines.jobs import Job, Synthesis
from pipelines.settings import EvaluationSettings, RestoreSettings

FAST = {"preset": "fast", "iterations": 2, "channels": 8}


def plan(root: str, output: str, task: str = "denoise", synthesis: Synthesis | None = None, **kw) -> Planned:
    config = jobs.run_config(dipcore.preset_for(task, **FAST, **kw), synthesis=synthesis)
    return whole_plan.plan(root, run_id="test-run", dataset="tiny", output=output, config=config)


# ---------------------------------------------------------------------------------------------- in-process


def test_restorer_runs_one_evaluation_job_with_the_sr_protocol(tmp_path, write_images):
    write_images(str(tmp_path / "src"), ["sub/a.png"], size=72)
    p = plan(
        str(tmp_path / "src"),
        str(tmp_path / "out"),
        task="sr",
        scale=4,
        synthesis=Synthesis("sr", scale=4, crop_multiple=32),
    )
    from pipelines.execution.workers import Restorer

    outcome = Restorer().run(p.jobs[0])
    row = outcome.row
    assert row["status"] == "ok", row.get("error")
    assert row["output_uri"] == str(tmp_path / "out" / "sub" / "a.png")
    restored = dipcore.load_image(tmp_path / "out" / "sub" / "a.png")
    assert restored.shape == (64, 64, 3)  # 72 px centre-cropped to a multiple of 32, restored at full size
    assert (row["height"], row["width"]) == (64, 64)
    assert (row["psnr_channel"], row["psnr_shave"], row["psnr_crop"]) == ("y", 4, "center32")
    assert row["baseline_name"] == "bicubic" and row["psnr_baseline"] > 20  # a smooth image: bicubic does well
    assert row["psnr"] is not None and row["ssim"] is not None
    # The curve is measured with the row's protocol (Y, 4 px shaved): its last point is the last iterate's PSNR.
    curve = [c["psnr"] for c in outcome.curves]
    assert curve[-1] == pytest.approx(row["psnr_final"], abs=1e-3) and row["psnr_best"] == max(curve)
    assert row["iteration_best"] == curve.index(max(curve)) + 1
    assert row["psnr_auto"] is None and row["psnr_two_runs"] is None and row.get("classical_name") is None
    assert row["torch_version"] == torch.__version__ and json.loads(row["engine_json"])["sync_every"] == 1
    assert row["iterations_run"] == 2 and row["input_sha256"] == storage.sha256_hex(
        storage.read_bytes(p.jobs[0].input_uri)
    )
    assert [c["iteration"] for c in outcome.curves] == [1, 2]
    assert all(not isinstance(v, np.ndarray) for v in row.values())  # rows stay small


def test_restorer_turns_bad_inputs_into_error_rows(tmp_path, write_images):
    src = tmp_path / "src"
    write_images(str(src), ["good.png"])
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (src / "empty.png").write_bytes(b"")
    p = plan(str(src), str(tmp_path / "out"), task="inpaint")  # no masks beside them: also an error
    from pipelines.execution.workers import Restorer

    restorer = Restorer()
    rows = {j.key: restorer.run(j).row for j in p.jobs}
    missing = dataclasses.replace(p.jobs[0], key="gone.png", input_uri=str(src / "gone.png"))
    rows["gone.png"] = restorer.run(missing).row
    assert {k: r["status"] for k, r in rows.items()} == dict.fromkeys(rows, "error")
    assert "empty file" in rows["empty.png"]["error"]
    assert "corrupt" in rows["corrupt.png"]["error"] or "truncated" in rows["corrupt.png"]["error"]
    assert "no mask for good.png" in rows["good.png"]["error"]
    assert "no such file" in rows["gone.png"]["error"]
    assert not (tmp_path / "out").exists()


def test_restorer_reports_a_job_too_large_for_its_device_as_an_error_row(tmp_path, write_images):
    write_images(str(tmp_path / "src"), ["big.png"], size=64)
    p = plan(str(tmp_path / "src"), str(tmp_path / "out"))
    from pipelines.execution.workers import Restorer

    row = Restorer(engine=dipcore.EngineOptions(memory_budget=2**20)).run(p.jobs[0]).row  # a 1 MiB "device"
    assert row["status"] == "error"
    error = row["error"]
    assert error.startswith("this job (1 fit of 64×64") and "with activation checkpointing" in error, error
    assert "only 1 MiB of RAM is free" in error and "smaller image" in error, error
    assert not (tmp_path / "out").exists()


def test_plan_rejects_keys_that_would_escape_the_output_root():
    root = "memory://plan-escape"
    for key in ["ok.png", "..%2fevil.png", "sub/..%2f..%2fevil.png", "x\\..\\evil.png"]:
        storage.write_bytes_atomic(f"{root}/src/{key}", b"bytes")
    p = plan(f"{root}/src", f"{root}/out")
    assert [j.key for j in p.jobs] == ["ok.png"] and p.jobs[0].output_uri == f"{root}/out/ok.png"
    assert sorted(p.rejected) == ["..%2fevil.png", "sub/..%2f..%2fevil.png", "x\\..\\evil.png"]
    assert all("unsafe key" in why for why in p.rejected.values())


def test_config_hash_changes_with_settings_not_with_execution():
    def config(**kw) -> jobs.RunConfig:
        return jobs.restore_config(RestoreSettings(task="denoise", **{**FAST, **kw}))

    a = config()
    assert config().config_hash == a.config_hash
    assert config(iterations=3).config_hash != a.config_hash
    assert config(seed=1).config_hash != a.config_hash
    with pytest.raises(dipcore.ConfigError, match="unknown setting"):
        config(overrides={"chanels": 8})


def test_evaluation_configs_follow_the_paper_and_hash_what_shapes_a_row():
    def config(name: str, **kw) -> jobs.RunConfig:
        return protocols.evaluation_config(name, EvaluationSettings(**kw))

    dn = config("cbm3d9", **FAST)
    assert dn.config["restarts"] == 2 and dn.config["early_stopping"] == "observe" and dn.classical
    assert dn.preset.restarts == 2 and dn.config["classical_baseline"] is True
    assert config("cbm3d9").config["iterations"] == 1800  # the paper's table (the code: 3000)
    sr = config("set5", **FAST)
    assert sr.config["restarts"] == 1 and not sr.classical and "classical_baseline" not in sr.config  # bicubic
    # The fast preset returns SR's moving average; the paper's keeps none: the evaluation records one (psnr_average)
    # and still returns the last iterate.
    assert (sr.config["ema"], sr.config["output"]) == (0.99, "average")
    paper_sr = config("set5")
    assert (paper_sr.config["ema"], paper_sr.config["output"]) == (protocols.OBSERVED_EMA, "final")
    assert config("set5", overrides={"ema": 0.9}).config["ema"] == 0.9  # a caller's stays
    assert dn.config["ema"] == dipcore.preset_for("denoise", preset="fast").ema  # the preset's own
    assert config("cbm3d9", task="sr", **FAST).config["restarts"] == 1  # runs follow the task
    changed = [
        config("cbm3d9", **FAST, **kw).config_hash
        for kw in ({"runs": 1}, {"stopping": "off"}, {"stopping": "variance"}, {"classical": False})
    ]
    assert len({dn.config_hash, *changed}) == 5
    assert config("cbm3d9", preset="fast", overrides={"restarts": 3}).config["restarts"] == 3
    with pytest.raises(dipcore.ConfigError, match="disagree"):
        config("cbm3d9", runs=2, overrides={"restarts": 3})
    with pytest.raises(ValueError, match="'variance', 'observe' or 'off'"):  # pydantic's ValidationError
        config("set5", stopping="maybe")


# ------------------------------------------------------------------------------------------------- on Ray


def _run(job_list, pool, **kw):
    from pipelines.execution.workers import run_jobs

    outcomes = []
    stats = run_jobs(job_list, workers=pool, on_result=outcomes.append, poll=0.5, startup_timeout=300, **kw)
    return outcomes, stats


class _CrashingJob(Job):
    """A job that kills the worker process reading it (fault injection): always, or on its first attempt only."""

    @property
    def scale(self):  # read by the worker first thing (jobs.base_row); the driver reads it too, harmlessly
        if os.getpid() != _DRIVER_PID:
            marker = os.path.join(_MARKERS, self.key)
            if self.key.startswith("always") or not os.path.exists(marker):
                open(marker, "w").close()
                # Die a moment into the job, as an OOM kill mid-fit would: an instant exit could take the reply
                # of the previous call, finished but not yet sent, down with it.
                time.sleep(0.5)
                os._exit(1)
        return super().scale


def _crashing(job: Job) -> _CrashingJob:
    return _CrashingJob(**{f.name: getattr(job, f.name) for f in dataclasses.fields(Job)})


_DRIVER_PID = os.getpid()
_MARKERS = ""


@pytest.mark.slow
def test_jobs_of_dead_actors_are_retried_then_given_up(ray_local, tmp_path, write_images):
    global _MARKERS
    _MARKERS = str(tmp_path)
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    write_images(str(tmp_path / "src"), ["always.png", "once.png", "ok1.png", "ok2.png"])
    p = plan(str(tmp_path / "src"), str(tmp_path / "out"))
    job_list = [_crashing(j) if j.key in ("always.png", "once.png") else j for j in p.jobs]
    from pipelines.execution.workers import WorkerPool

    pool = WorkerPool(2, num_cpus=1)
    try:
        outcomes, stats = _run(job_list, pool, max_attempts=2)
    finally:
        pool.shutdown()
    rows = {o.row["image_key"]: o.row for o in outcomes}
    assert len(outcomes) == len(rows) == 4  # every job exactly once
    assert rows["always.png"]["status"] == "error" and rows["always.png"]["attempts"] == 2
    assert "failed after 2 attempt(s)" in rows["always.png"]["error"] and "worker lost" in rows["always.png"]["error"]
    assert rows["once.png"]["status"] == "ok" and rows["once.png"]["attempts"] == 2
    # Calls queued behind a crashing job never started: they are requeued without losing an attempt.
    assert [rows[k]["attempts"] for k in ("ok1.png", "ok2.png")] == [1, 1]
    assert stats.failed_attempts == 3 and stats.restarts >= 3 and (stats.ok, stats.errors) == (3, 1)
    assert all((tmp_path / "out" / k).exists() for k in ("once.png", "ok1.png", "ok2.png"))


def test_a_packed_batch_through_ray_requeues_its_jobs_when_its_actor_dies(ray_local, tmp_path, write_images):
    """pack=2 on one CPU actor: [a b] (a kills the actor on its first attempt), [c] (another shape), [d e]."""
    # "a" is a key no other test uses: a reused worker process may unpickle _CrashingJob with an earlier test's
    # _MARKERS, where a marker of the same name would already exist.
    global _MARKERS
    _MARKERS = str(tmp_path)
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    src = tmp_path / "src"
    write_images(str(src), ["a-crashes-once.png", "b.png", "d.png", "e.png"])
    write_images(str(src), ["c.png"], size=48)
    p = plan(str(src), str(tmp_path / "out"))
    by_key = {j.key: j for j in p.jobs}
    crashing = _crashing(by_key["a-crashes-once.png"])
    job_list = [crashing, *(by_key[k] for k in ("b.png", "c.png", "d.png", "e.png"))]
    from pipelines.execution.workers import WorkerPool

    pool = WorkerPool(1, num_cpus=1)
    try:
        outcomes, stats = _run(job_list, pool, max_attempts=2, pack=2)
    finally:
        pool.shutdown()
    rows = {o.row["image_key"]: o.row for o in outcomes}
    assert len(outcomes) == len(rows) == 5 and all(r["status"] == "ok" for r in rows.values())
    # The batch that died lost one attempt for each of its jobs; the call queued behind it lost none.
    assert {k: r["attempts"] for k, r in rows.items()} == {
        "a-crashes-once.png": 2,
        "b.png": 2,
        "c.png": 1,
        "d.png": 1,
        "e.png": 1,
    }
    assert stats.packed == 2  # d and e in one stacked fit; the retries ran alone
    assert (stats.failed_attempts, stats.restarts) == (2, 1)
    assert (rows["c.png"]["height"], rows["d.png"]["height"]) == (48, 32)


def test_a_stuck_attempt_times_out(ray_local, tmp_path, write_images):
    write_images(str(tmp_path / "src"), ["fine.png"])
    p = plan(str(tmp_path / "src"), str(tmp_path / "out"))
    os.mkfifo(tmp_path / "src" / "stuck.png")  # reading it blocks forever: no writer ever opens it
    stuck = dataclasses.replace(p.jobs[0], key="stuck.png", input_uri=str(tmp_path / "src" / "stuck.png"))
    from pipelines.execution.workers import WorkerPool

    pool = WorkerPool(1, num_cpus=1)
    try:
        started = time.monotonic()
        outcomes, stats = _run([stuck], pool, max_attempts=1, timeout=2.0)
        assert time.monotonic() - started < 60
    finally:
        pool.shutdown()
    (row,) = [o.row for o in outcomes]
    assert row["status"] == "error" and "timed out after 2 s" in row["error"] and row["attempts"] == 1
    assert stats.restarts == 1


# ----------------------------------------------------------------------------------- multi-node, logical GPUs


@pytest.mark.slow
def test_actors_land_on_gpu_nodes_of_a_multi_node_cluster(ray_session, tmp_path, write_images, test_cluster):
    """Head without GPUs, two nodes with one logical GPU each (no CUDA needed: Ray only schedules by count)."""
    from pipelines.execution import workers
    from pipelines.execution.workers import pool as pools

    ray = ray_session
    ray.shutdown()  # the shared local instance; `ray_local` restarts it for any later test
    store = 80 * 1024 * 1024
    cluster = test_cluster(num_cpus=1, num_gpus=0, object_store_memory=store)
    try:
        gpu_nodes = {cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=store).node_id for _ in range(2)}
        ray.init(address=cluster.address, logging_level=30, log_to_driver=False)
        cluster.wait_for_nodes()
        assert (pools._capacity(1, 0), pools._capacity(0.5, 0), pools._capacity(0, 1)) == (2, 4, 3)
        write_images(str(tmp_path / "src"), [f"im{i}.png" for i in range(4)])
        p = plan(str(tmp_path / "src"), str(tmp_path / "out"))
        pool = workers.WorkerPool.for_cluster(gpus_per_worker=1.0, max_workers=8)
        assert len(pool.slots) == 2 and pool.options["num_gpus"] == 1.0
        try:
            outcomes, _ = _run(p.jobs, pool)
            # Ask every actor directly: under load one actor may finish all four jobs before the other is ready.
            placed = {ray.get(s.actor.info.remote(), timeout=120)["node"] for s in pool.slots}
        finally:
            pool.shutdown()
        assert placed == gpu_nodes  # one actor on each GPU node, none on the head
        assert sorted(o.row["image_key"] for o in outcomes) == [f"im{i}.png" for i in range(4)]
        assert {o.row["ray_node"] for o in outcomes} <= gpu_nodes
        assert all(o.row["status"] == "ok" and o.row["device"] == "cpu" for o in outcomes)  # no CUDA here
    finally:
        ray.shutdown()
