"""pipelines.flows end to end under one Prefect test harness and one local Ray instance: a local folder (with bad
files, artifacts and resume), an interrupted run, memory://, S3 on a moto server, and the benchmark protocol."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.reporting import reports

FAST = {"preset": "fast", "iterations": 2, "channels": 8}
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = pytest.mark.usefixtures("prefect_harness")


def by_key(table) -> dict[str, dict]:
    rows = table.to_pylist()
    assert len(rows) == len({r["image_key"] for r in rows}), "an image has more than one row in a run"
    return {r["image_key"]: r for r in rows}


def test_restore_dataset_on_a_local_folder_with_artifacts_and_resume(ray_local, tmp_path, write_images):
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from pipelines import flows

    src, out = tmp_path / "src", tmp_path / "out"
    write_images(str(src), ["a.png", "sub/b.png", "sub/deeper/c.png"])
    (src / "corrupt.png").write_bytes(b"not an image at all")
    (src / "empty.png").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")

    # A precision asked of the run reaches every actor (dipcore's default would keep these tiny fits in fp32).
    first = flows.restore_dataset(str(src), str(out), {"task": "denoise", **FAST}, execution={"precision": "bf16"})
    assert (first["images"], first["ok"], first["error"], first["skipped"], first["not_images"]) == (5, 3, 2, 0, 1)
    assert sorted(f["image_key"] for f in first["failures"]) == ["corrupt.png", "empty.png"]
    for key in ["a.png", "sub/b.png", "sub/deeper/c.png"]:  # outputs mirror the input's relative paths
        assert (out / key).is_file()
    rows = by_key(reports.read_report(str(out), run_id=first["run_id"]))
    assert rows["a.png"]["status"] == "ok" and rows["a.png"]["flow_run_id"] == first["flow_run_id"]
    assert rows["a.png"]["attempts"] == 1 and rows["a.png"]["ray_node"] and rows["a.png"]["psnr"] is None
    assert {json.loads(rows[k]["engine_json"])["autocast"] for k in ("a.png", "sub/b.png")} == {"bf16"}
    assert "empty file" in rows["empty.png"]["error"]
    assert "not a recognised image format" in rows["corrupt.png"]["error"]
    curves = reports.read_curves(str(out), run_id=first["run_id"])
    assert sorted(set(curves.column("image_key").to_pylist())) == ["a.png", "sub/b.png", "sub/deeper/c.png"]

    table = json.loads(Artifact.get("restore-dataset-summary").data)
    assert [(r["dataset"], r["images"], r["ok"], r["errors"]) for r in table] == [(str(src), 5, 3, 2)]
    assert first["run_id"] in Artifact.get("restore-dataset-report").data
    assert Artifact.get("restore-dataset-progress").data == 100.0
    with get_client(sync_client=True) as client:  # the Ray part (listing and planning streamed into it) is a task run
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[first["flow_run_id"]]))
        )
    states = {run.name.rsplit("-", 1)[0]: run.state.type.value for run in task_runs}
    assert states == {"load-state": "COMPLETED", "restore-images": "COMPLETED"}

    stamp = (out / "a.png").stat().st_mtime_ns
    second = flows.restore_dataset(str(src), str(out), {"task": "denoise", **FAST})
    assert (second["ok"], second["error"], second["skipped"]) == (0, 2, 3)  # only the failed ones run again
    assert second["done_earlier"] == 3
    assert (out / "a.png").stat().st_mtime_ns == stamp
    # The images done earlier get no row (the runs table counts them); the failed ones get their rows again.
    assert sorted(by_key(reports.read_report(str(out), run_id=second["run_id"]))) == ["corrupt.png", "empty.png"]


def test_an_interrupted_run_resumes_with_only_the_unfinished_images(ray_local, tmp_path, write_images, monkeypatch):
    from pipelines import flows

    src, out = tmp_path / "src", tmp_path / "out"
    keys = [f"im{i}.png" for i in range(4)]
    write_images(str(src), keys)
    append = reports.ReportWriter.append
    calls = []

    def crash_after_two(self, row, curves=()):
        if len(calls) == 2:
            raise RuntimeError("simulated crash of the driver")
        calls.append(row["image_key"])
        append(self, row, curves)

    monkeypatch.setattr(reports.ReportWriter, "append", crash_after_two)
    with pytest.raises(RuntimeError, match="simulated crash"):  # the driver dies; in-process jobs save a pool start
        flows.restore_dataset(
            str(src), str(out), {"task": "denoise", **FAST}, execution={"executor": "inline", "precision": "fp32"}
        )
    monkeypatch.undo()
    assert len(calls) == 2
    written = by_key(reports.read_report(str(out)))
    assert {json.loads(r["engine_json"])["autocast"] for r in written.values()} == {"off"}  # reached the restorer

    resumed = flows.restore_dataset(str(src), str(out), {"task": "denoise", **FAST})
    rows = by_key(reports.read_report(str(out), run_id=resumed["run_id"]))
    assert resumed["done_earlier"] == len(calls)  # counted, not rows
    assert sorted(k for k, r in rows.items() if r["status"] == "ok") == sorted(set(keys) - set(calls))
    assert len(rows) == len(keys) - len(calls)
    latest = reports.latest_rows(reports.read_report(str(out)))
    assert sorted(latest.column("image_key").to_pylist()) == keys
    assert set(latest.column("status").to_pylist()) == {"ok"}


def test_restore_dataset_on_memory_keeps_escaping_keys_inside(tmp_path, write_images):
    import fsspec

    from pipelines import flows

    root = "memory://flow-memory"
    write_images(f"{root}/src", ["a.png", "sub/b.png"])
    for key in ["..%2f..%2fescaped.png", "sub/..%2fescaped.png"]:
        storage.write_bytes_atomic(f"{root}/src/{key}", storage.read_bytes(f"{root}/src/a.png"))
    summary = flows.restore_dataset(f"{root}/src", f"{root}/out", {"task": "denoise", **FAST})
    assert (summary["ok"], summary["error"]) == (2, 2)
    rows = by_key(reports.read_report(f"{root}/out"))
    assert all("unsafe key" in rows[k]["error"] for k in ["..%2f..%2fescaped.png", "sub/..%2fescaped.png"])
    files = fsspec.filesystem("memory").find("/")  # the whole process-wide memory filesystem
    written = [f for f in files if "escaped" in f or f.startswith("/flow-memory/")]
    assert all(f.startswith(("/flow-memory/src/", "/flow-memory/out/")) for f in written), written
    assert [f for f in written if "escaped" in f and not f.startswith("/flow-memory/src/")] == []
    assert storage.exists(f"{root}/out/sub/b.png")


def test_restore_dataset_packs_images_of_one_canvas_bucket(tmp_path, write_images, monkeypatch):
    from prefect.exceptions import ParameterTypeError

    import dipcore
    from pipelines import flows

    stacked: list[int] = []
    real = dipcore.restore_batch
    monkeypatch.setattr(dipcore, "restore_batch", lambda obs, **kw: stacked.append(len(obs)) or real(obs, **kw))
    root = "memory://flow-pack"
    write_images(f"{root}/src", ["a.png", "b.png", "c.png"])
    write_images(f"{root}/src", ["large.png"], size=96)  # 32² and 48² share the 64² canvas bucket; 96² does not
    summary = flows.restore_dataset(f"{root}/src", f"{root}/out", {"task": "denoise", **FAST}, execution={"pack": 2})
    assert (summary["ok"], summary["error"]) == (4, 0), summary["failures"]
    assert sorted(stacked) == [2]  # [a b] stacked; c and the 96² image alone
    rows = by_key(reports.read_report(f"{root}/out"))
    assert {k: (r["height"], r["attempts"]) for k, r in rows.items()} == {
        "a.png": (32, 1),
        "b.png": (32, 1),
        "c.png": (32, 1),
        "large.png": (96, 1),
    }
    with pytest.raises(ParameterTypeError, match=r"execution\.pack"):
        flows.restore_dataset(f"{root}/src", f"{root}/out", {"task": "denoise", **FAST}, execution={"pack": 0})


def test_restore_dataset_on_s3_keeps_credentials_out_of_prefect(ray_local, s3_server, s3_root, write_images):
    from prefect.client.orchestration import get_client

    from pipelines import flows

    plain, secret = storage.split_secret_options(s3_server.storage_options)
    assert set(secret) == {"key", "secret"} and "client_kwargs" in plain
    write_images(f"{s3_root}/in", ["a.png", "sub/b.png"], storage_options=s3_server.storage_options)
    with flows.storage_credentials(secret):
        summary = flows.restore_dataset(
            f"{s3_root}/in", f"{s3_root}/out", {"task": "sr", "scale": 2, **FAST}, storage_options=plain
        )
    assert (summary["ok"], summary["error"]) == (2, 0), summary["failures"]
    so = s3_server.storage_options
    assert storage.exists(f"{s3_root}/out/sub/b.png", so)
    rows = by_key(reports.read_report(f"{s3_root}/out", so))
    assert rows["sub/b.png"]["output_uri"] == f"{s3_root}/out/sub/b.png" and rows["sub/b.png"]["height"] == 64
    with get_client(sync_client=True) as client:
        parameters = client.read_flow_run(summary["flow_run_id"]).parameters
    assert "testing" not in repr(parameters) and parameters["storage_options"] == plain


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")
def test_evaluate_scores_benchmarks_with_the_paper_protocols(ray_local, tmp_path):
    from pipelines import flows

    # The study columns are off here (the smoke protocol covers the defaults): what is checked is the switches.
    summary = flows.evaluate(
        ["set5", "cbm3d9", "heide11"],
        str(DATA),
        str(tmp_path / "eval"),
        {"crop": 48, "stopping": "off", "runs": 1, "classical": False, **FAST},
        execution=flows.Execution(executor="inline"),
        options={"limit": 1},
    )  # the protocol is the worker's, not Ray's
    assert (summary["ok"], summary["error"]) == (3, 0), summary["failures"]
    rows = {r["dataset"]: r for r in reports.read_report(str(tmp_path / "eval")).to_pylist()}
    sr, dn, inp = rows["set5"], rows["cbm3d9"], rows["heide11"]
    assert (sr["task"], sr["scale"], sr["psnr_channel"], sr["psnr_shave"], sr["psnr_crop"]) == (
        "sr",
        4,
        "y",
        4,
        "48x48+center32",
    )
    assert sr["baseline_name"] == "bicubic" and (sr["height"], sr["width"]) == (32, 32)
    assert (dn["task"], dn["psnr_channel"], dn["psnr_shave"], dn["baseline_name"]) == ("denoise", "rgb", 0, "input")
    assert 18 < dn["psnr_baseline"] < 24  # σ = 25 noise on [0, 255]: about 20.2 dB before clipping
    assert (inp["task"], inp["variant"], inp["psnr_channel"]) == ("inpaint", "random", "gray")
    assert all(r["psnr"] is not None and r["ssim"] is not None for r in rows.values())
    assert all(r["psnr_best"] is not None and r["torch_version"] and r["engine_json"] for r in rows.values())
    off = ("psnr_auto", "iteration_auto", "es_stop_iteration", "psnr_two_runs", "classical_name", "psnr_classical")
    assert all(r[name] is None for r in rows.values() for name in off)
    assert json.loads(dn["config_json"])["restarts"] == 1 and json.loads(dn["config_json"])["early_stopping"] is False
    assert os.path.isfile(tmp_path / "eval" / "set5" / "baby.png")


def test_the_progress_artifact_never_passes_100_percent_while_folders_are_planned(monkeypatch):
    """A folder's images count as listed when its planning starts, before its rows: the finished share read on
    every row stays within 100 % (it once reached 129 %, the total lagging a folder behind the rows)."""
    import itertools

    import prefect.artifacts

    from pipelines import flows, jobs, run_tracker
    from pipelines.settings import RestoreSettings

    shares: list[float] = []
    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", lambda *a, **k: "artifact")
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", lambda _id, share, **_: shares.append(share))
    clock = itertools.count(0.0, 2.0)  # every update is due: each call of monotonic() is 2 s after the last
    monkeypatch.setattr(run_tracker.time, "monotonic", lambda: next(clock))
    plan = jobs.Plan("d", jobs.restore_config(RestoreSettings(task="denoise", preset="fast")), output="out")
    tracker = run_tracker.Tracker([plan], artifact=flows._ProgressArtifact("restore-dataset"))
    for _folder in range(3):  # plan_stream counts a folder's 10 images, then yields its jobs; 2 were done earlier
        plan.listed += 10
        plan.done_earlier += 2
        for _ in range(8):
            tracker.advance({"dataset": "d", "status": "ok"})
        tracker.listed()  # the next folder is asked for
    tracker.close()
    assert len(shares) > 20 and max(shares) <= 100.0
    assert shares[-1] == 100.0 and tracker.total == 30 and tracker.earlier == 6
