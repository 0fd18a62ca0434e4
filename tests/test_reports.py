"""pipelines.reporting.reports: the pinned schema, incremental crash-safe writing, reading runs together, resume,
summaries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines import jobs, storage
from pipelines.reporting import reports
from pipelines.reporting.reports import CURVES_SCHEMA, REPORT_SCHEMA, ReportWriter, SchemaMismatchError

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def row(key: str = "a.png", **kw) -> dict:
    base = {
        "dataset": "set5",
        "image_key": key,
        "task": "sr",
        "scale": 4,
        "status": "ok",
        "input_sha256": f"sha-{key}",
        "config_hash": "cfg1",
        "psnr": 30.0,
        "psnr_baseline": 28.0,
        "ssim": 0.9,
        "wall_seconds": 2.0,
        "attempts": 1,
        "seed": 0,
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=2),
    }
    base.update(kw)
    return base


def test_schemas_are_pinned_with_version_metadata():
    for schema, name in ((REPORT_SCHEMA, b"report"), (CURVES_SCHEMA, b"curves")):
        assert schema.metadata[b"dipflow.report_version"] == reports.REPORT_VERSION.encode() == b"4"
        assert schema.metadata[b"dipflow.schema"] == name
    f = REPORT_SCHEMA.field
    assert {n for n in REPORT_SCHEMA.names if not f(n).nullable} == {"run_id", "dataset", "image_key", "task", "status"}
    assert f("seed").type == pa.int64() and f("iterations_run").type == pa.int32() and f("scale").type == pa.int32()
    assert f("psnr").type == pa.float64() and f("started_at").type == pa.timestamp("us", tz="UTC")
    for name in (
        "flow_run_id",
        "input_uri",
        "config_json",
        "psnr_average",
        "psnr_final",
        "psnr_best",
        "psnr_channel",
        "psnr_shave",
        "psnr_crop",
        "baseline_name",
        "height",
        "width",
        "device",
        "ray_node",
        "error",
        "output_uri",
        "variant",
        "stop_reason",
        "iteration_returned",
    ):
        assert name in REPORT_SCHEMA.names
    assert CURVES_SCHEMA.field("iteration").type == pa.int32() and CURVES_SCHEMA.field("psnr").nullable


def test_config_hash_is_canonical():
    h = jobs.config_hash({"b": 1, "a": [1, 2], "c": {"y": 1.5, "x": None}})
    assert h == jobs.config_hash({"c": {"x": None, "y": 1.5}, "a": [1, 2], "b": 1})
    assert len(h) == 16 and int(h, 16) >= 0
    assert h != jobs.config_hash({"b": 2, "a": [1, 2], "c": {"y": 1.5, "x": None}})
    assert jobs.canonical_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'
    assert jobs.config_hash({}) == storage.sha256_hex(b"{}")[:16]


def test_to_table_casts_and_fills_typed_nulls():
    t = reports.to_table([row(run_id="r1", seed=3), row("b.png", run_id="r1", psnr=None, scale=None)])
    assert t.schema == REPORT_SCHEMA and t.schema.metadata == REPORT_SCHEMA.metadata
    assert t.column("seed").type == pa.int64() and t.column("seed").to_pylist() == [3, 0]
    assert t.column("device").null_count == 2 and t.column("height").type == pa.int32()
    assert t.column("psnr").to_pylist() == [30.0, None]
    assert t.column("finished_at").to_pylist()[0] == T0 + timedelta(seconds=2)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"run_id": "r", "surprise": 1}, "unexpected columns \\['surprise'\\]"),
        ({"run_id": None}, "'run_id' is required"),
        ({"run_id": "r", "status": "done"}, "status must be one of"),
        ({"run_id": "r", "height": "tall"}, "'height' cannot be int32"),
    ],
)
def test_to_table_mismatch_is_loud(bad, message):
    with pytest.raises(SchemaMismatchError, match=message) as err:
        reports.to_table([row(**bad)])
    assert "expected columns: run_id, flow_run_id" in str(err.value)
    assert "given columns:" in str(err.value)


def test_to_table_missing_required_column_names_both_sides():
    r = row(run_id="r")
    del r["task"]
    with pytest.raises(SchemaMismatchError, match="missing required columns \\['task'\\]") as err:
        reports.to_table([r])
    assert "given columns:    dataset, image_key, scale" in str(err.value)


def test_writer_is_crash_safe_without_close(tmp_path):
    out = str(tmp_path / "out")
    writer = ReportWriter(out, "run-1", flush_every=1)
    for i in range(3):
        writer.append(row(f"img{i}.png"))
    # no close(): as if the driver died here
    table = reports.read_report(out)
    assert table.num_rows == 3
    assert table.schema == REPORT_SCHEMA
    assert table.column("run_id").to_pylist() == ["run-1"] * 3
    assert sorted(table.column("image_key").to_pylist()) == ["img0.png", "img1.png", "img2.png"]
    # the parts wait outside report/, where outside readers glob, until the run ends (pipelines.reporting.layout)
    parts = sorted(p.name for p in (tmp_path / "out" / "_dipflow" / "pending" / "report" / "run_id=run-1").iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert not (tmp_path / "out" / "report").exists()


def test_writer_buffers_flush_every_and_close_flushes(tmp_path):
    out = str(tmp_path)
    with ReportWriter(out, "r", flush_every=2) as writer:
        for i in range(3):
            writer.append(row(f"{i}.png"))
        assert reports.read_report(out).num_rows == 2
    assert reports.read_report(out).num_rows == 3
    with pytest.raises(RuntimeError, match="closed"):
        writer.append(row())


def test_writer_flushes_on_exception_and_rejects_bad_rows_at_append(tmp_path):
    out = str(tmp_path)
    with pytest.raises(SchemaMismatchError), ReportWriter(out, "r", flush_every=10) as writer:
        writer.append(row("good.png"))
        writer.append(row("bad.png", psnr="high"))
    assert reports.read_report(out).column("image_key").to_pylist() == ["good.png"]
    with pytest.raises(SchemaMismatchError, match="run_id"):
        ReportWriter(out, "r").append(row(run_id="other"))


def test_reopened_run_continues_numbering(tmp_path):
    out = str(tmp_path)
    ReportWriter(out, "r", flush_every=1).append(row("a.png"))  # no close: left as a part
    ReportWriter(out, "r", flush_every=1).append(row("b.png"))
    assert reports.read_report(out, run_id="r").column("image_key").to_pylist() == ["a.png", "b.png"]
    with ReportWriter(out, "r") as w:  # compacts parts 0-1, and its own part 2 with them
        assert w._report.next_seq == 2
        w.append(row("c.png"))
    assert [p.name for p in (tmp_path / "report" / "run_id=r").iterdir()] == ["compacted-00000-00002.parquet"]
    with ReportWriter(out, "r") as w:  # numbering continues after the compacted range, never hidden by it
        assert w._report.next_seq == 3
        w.append(row("d.png"))
    keys = reports.read_report(out, run_id="r").column("image_key").to_pylist()
    assert keys == ["a.png", "b.png", "c.png", "d.png"]


def test_two_runs_read_together_and_by_run(tmp_path):
    out = f"file://{tmp_path}"
    with ReportWriter(out, "run-a") as w:
        w.append(row("a.png"))
        w.append(row("b.png"))
    with ReportWriter(out, "run-b") as w:
        w.append(row("a.png", status="error", error="boom", psnr=None))
    both = reports.read_report(out)
    assert sorted(zip(both.column("run_id").to_pylist(), both.column("image_key").to_pylist(), strict=True)) == [
        ("run-a", "a.png"),
        ("run-a", "b.png"),
        ("run-b", "a.png"),
    ]
    only_b = reports.read_report(out, run_id="run-b")
    assert only_b.column("run_id").to_pylist() == ["run-b"] and only_b.column("error").to_pylist() == ["boom"]
    assert reports.read_report(out, run_id="run-c").num_rows == 0


def test_old_parts_with_fewer_columns_read_with_the_pinned_schema(tmp_path):
    # A part written by an older version lacking some nullable columns (and with int64 where we pin int32).
    old = pa.table(
        {
            "run_id": ["old"],
            "dataset": ["set5"],
            "image_key": ["z.png"],
            "task": ["sr"],
            "status": ["ok"],
            "height": pa.array([64], pa.int64()),
        }
    )
    path = tmp_path / "report" / "run_id=old" / "part-00000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(old, path)
    with ReportWriter(str(tmp_path), "new") as w:
        w.append(row("a.png", height=32))
    table = reports.read_report(str(tmp_path))
    assert table.schema == REPORT_SCHEMA
    assert sorted(table.column("height").to_pylist()) == [32, 64]
    z = table.filter(pc.equal(table.column("image_key"), "z.png"))
    assert z.column("psnr").to_pylist() == [None]


V1_REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "2026-11-26-h200" / "set5-x4-graph"
V2_COLUMNS = {
    "iteration_best": pa.int32(),
    "psnr_auto": pa.float64(),
    "iteration_auto": pa.int32(),
    "es_stop_iteration": pa.int32(),
    "psnr_two_runs": pa.float64(),
    "classical_name": pa.string(),
    "psnr_classical": pa.float64(),
    "torch_version": pa.string(),
    "engine_json": pa.string(),
    "pack_size": pa.int32(),
}
V3_COLUMNS = {"input_fingerprint": pa.string()}
V4_COLUMNS = {"notes": pa.string()}


def test_versions_2_3_and_4_append_their_columns_after_those_of_a_real_version_1_part():
    v1 = pq.read_schema(next((V1_REPORT / "report").rglob("part-*.parquet")))
    assert v1.metadata[b"dipflow.report_version"] == b"1"
    assert REPORT_SCHEMA.names[: len(v1.names)] == v1.names  # same order: positional readers keep working
    appended = {n: REPORT_SCHEMA.field(n).type for n in REPORT_SCHEMA.names[len(v1.names) :]}
    later = {**V2_COLUMNS, **V3_COLUMNS, **V4_COLUMNS}
    assert appended == later and list(appended) == list(later)  # each version's after the one before
    assert all(REPORT_SCHEMA.field(n).nullable for n in later)


def test_version_1_parts_read_together_with_version_2_ones(tmp_path):
    """Real parts written by schema v1 (an H200 run of Set5) and a new v2 run under one root: one table."""
    import shutil

    shutil.copytree(V1_REPORT / "report", tmp_path / "report")
    with ReportWriter(str(tmp_path), "v2-run") as writer:
        writer.append(
            row(
                "baby.png",
                psnr_best=31.5,
                iteration_best=1800,
                psnr_auto=31.2,
                iteration_auto=1500,
                es_stop_iteration=None,
                torch_version="2.13.0+cpu",
                engine_json='{"sync_every":1}',
            )
        )
    table = reports.read_report(str(tmp_path))
    assert table.schema == REPORT_SCHEMA and table.num_rows == 6
    old = table.filter(pc.not_equal(table.column("run_id"), "v2-run")).to_pylist()
    new = table.filter(pc.equal(table.column("run_id"), "v2-run")).to_pylist()
    assert len(old) == 5 and all(r["psnr"] > 25 and r["status"] == "ok" for r in old)  # v1 values intact
    assert all(r[name] is None for r in old for name in {**V2_COLUMNS, **V4_COLUMNS})  # later columns: typed nulls
    assert (new[0]["iteration_best"], new[0]["psnr_auto"], new[0]["es_stop_iteration"]) == (1800, 31.2, None)
    (summary,) = reports.summarize(reports.latest_rows(table)).to_pylist()  # set5 ×4: five v1 rows and the new one
    assert (summary["images"], summary["ok"]) == (6, 6)


def test_empty_and_missing_report(tmp_path):
    for table in (reports.read_report(str(tmp_path / "none")), reports.read_curves(str(tmp_path))):
        assert table.num_rows == 0
    assert reports.read_report(str(tmp_path)).schema == REPORT_SCHEMA
    assert reports.summarize(reports.read_report(str(tmp_path))).num_rows == 0
    assert "–" in reports.summary_markdown(reports.read_report(str(tmp_path)))


def test_bad_run_id_is_refused(tmp_path):
    for bad in ("../x", "a/b", "", "run id"):
        with pytest.raises(ValueError):
            ReportWriter(str(tmp_path), bad)


def test_latest_rows_and_completed_keys():
    t = reports.to_table(
        [
            row("a.png", run_id="r1", status="error", finished_at=T0),
            row("a.png", run_id="r2", status="ok", finished_at=T0 + timedelta(hours=1)),
            row("a.png", run_id="r3", status="skipped", finished_at=T0 + timedelta(hours=2)),
            row("b.png", run_id="r1", status="ok", finished_at=T0),
            row("b.png", run_id="r2", status="error", finished_at=T0 + timedelta(hours=1)),
            row("c.png", run_id="r1", status="ok", config_hash="cfg2"),
            row("c.png", run_id="r2", status="ok", config_hash="cfg1", finished_at=None),
            row("d.png", run_id="r1", status="skipped"),
        ]
    )
    latest = reports.latest_rows(t)
    got = {
        (k, c): (r, s)
        for k, c, r, s in zip(
            *(latest.column(n).to_pylist() for n in ("image_key", "config_hash", "run_id", "status")), strict=True
        )
    }
    assert got == {
        ("a.png", "cfg1"): ("r2", "ok"),  # a later "skipped" does not hide the ok
        ("b.png", "cfg1"): ("r2", "error"),  # a later error does
        ("c.png", "cfg2"): ("r1", "ok"),
        ("c.png", "cfg1"): ("r2", "ok"),
        ("d.png", "cfg1"): ("r1", "skipped"),
    }
    assert reports.completed_keys(t) == {("sha-a.png", "cfg1"), ("sha-c.png", "cfg2"), ("sha-c.png", "cfg1")}


def test_completed_keys_from_storage(tmp_path):
    with ReportWriter(str(tmp_path), "r1") as w:
        w.append(row("a.png"))
        w.append(row("b.png", status="error", error="x"))
    assert reports.completed_keys(str(tmp_path)) == {("sha-a.png", "cfg1")}
    assert reports.completed_keys(str(tmp_path / "empty")) == set()


def test_summarize_numbers():
    t = reports.to_table(
        [
            row("a.png", run_id="r", psnr=30.0, psnr_baseline=28.0, ssim=0.8, wall_seconds=2.0),
            row("b.png", run_id="r", psnr=32.0, psnr_baseline=29.0, ssim=0.9, wall_seconds=4.0),
            row("c.png", run_id="r", status="error", psnr=None, psnr_baseline=None, ssim=None, wall_seconds=1.0),
            row("d.png", run_id="r", status="skipped", psnr=None, wall_seconds=None),
            row(
                "e.png",
                run_id="r",
                dataset="cbm3d9",
                task="denoise",
                scale=None,
                psnr=25.0,
                psnr_baseline=20.0,
                ssim=None,
                wall_seconds=3.0,
            ),
        ]
    )
    s = reports.summarize(t)
    assert s.schema == reports.SUMMARY_SCHEMA
    rows = {(r["dataset"], r["task"], r["scale"]): r for r in s.to_pylist()}
    assert s.column("dataset").to_pylist() == ["cbm3d9", "set5"]
    set5 = rows[("set5", "sr", 4)]
    assert (set5["images"], set5["ok"], set5["errors"], set5["skipped"]) == (4, 2, 1, 1)
    assert set5["psnr"] == pytest.approx(31.0)
    assert set5["psnr_baseline"] == pytest.approx(28.5)
    assert set5["ssim"] == pytest.approx(0.85)
    assert set5["mean_wall_seconds"] == pytest.approx(3.0)
    assert set5["total_wall_seconds"] == pytest.approx(7.0)
    den = rows[("cbm3d9", "denoise", None)]
    assert (den["images"], den["ok"], den["psnr"], den["ssim"]) == (1, 1, 25.0, None)

    md = reports.summary_markdown(t)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| dataset | task | scale | images | ok | errors | skipped | PSNR (dB)")
    assert len(lines) == 4
    assert "| set5 | sr | 4 | 4 | 2 | 1 | 1 | 31.00 | 28.50 | 0.8500 | 3.0 | 7.0 |" in lines
    assert "| cbm3d9 | denoise | – | 1 | 1 | 0 | 0 | 25.00 | 20.00 | – | 3.0 | 3.0 |" in lines
    assert reports.summary_markdown(s) == md


def test_curves_sampled_written_and_read(tmp_path):
    history = {"loss": [1.0 / (i + 1) for i in range(1000)], "psnr": [20.0 + i / 100 for i in range(1000)]}
    rows = reports.curve_rows(history, run_id="r", dataset="set5", image_key="a.png", max_points=50)
    its = [r["iteration"] for r in rows]
    assert len(rows) == 50 and its[0] == 1 and its[-1] == 1000 and its == sorted(set(its))
    assert rows[-1]["loss"] == pytest.approx(1e-3) and rows[-1]["psnr_average"] is None
    assert len(reports.curve_rows({"loss": [1.0, 0.5]}, run_id="r", dataset="d", image_key="k")) == 2
    with ReportWriter(str(tmp_path), "r") as w:
        w.append_curves(rows)
        w.append_curves([{**r, "image_key": "b.png"} for r in rows[:3]])
    curves = reports.read_curves(str(tmp_path), run_id="r")
    assert curves.schema == CURVES_SCHEMA and curves.num_rows == 53
    assert reports.read_report(str(tmp_path)).num_rows == 0  # curves do not leak into the report


def test_to_records_is_json_able():
    import json

    t = reports.to_table([row(run_id="r", psnr=float("inf"))])
    rec = reports.to_records(t)[0]
    assert rec["psnr"] is None and rec["finished_at"] == "2024-05-01T12:00:02+00:00"
    json.dumps(rec)


def test_reports_on_memory_filesystem():
    root = f"memory://reports-{uuid.uuid4().hex}/out"
    with ReportWriter(root, "m1") as w:
        w.append(row("a.png"))
        w.append(row("b.png"))
    assert reports.read_report(root).column("image_key").to_pylist() == ["a.png", "b.png"]


def test_reports_on_s3(s3_server, s3_root):
    so = s3_server.storage_options
    out = f"{s3_root}/out"
    w = ReportWriter(out, "s3run", storage_options=so, flush_every=1)
    for i in range(3):
        w.append(row(f"{i}.png"))
    w.append_curves(reports.curve_rows({"loss": [3.0, 2.0, 1.0]}, run_id="s3run", dataset="set5", image_key="0.png"))
    table = reports.read_report(out, so)  # before close: every appended row is already there
    assert table.num_rows == 3 and table.column("run_id").to_pylist() == ["s3run"] * 3
    assert table.schema == REPORT_SCHEMA
    w.close()
    with ReportWriter(out, "s3run-2", storage_options=so) as w2:
        w2.append(row("0.png", status="skipped"))
    assert reports.read_report(out, so).num_rows == 4
    assert reports.read_curves(out, so).column("loss").to_pylist() == [3.0, 2.0, 1.0]
    assert reports.completed_keys(out, so) == {(f"sha-{i}.png", "cfg1") for i in range(3)}
    assert storage.list_files(f"{out}/report", so, suffix=".parquet") == [  # three parts compacted at close
        f"{out}/report/run_id=s3run-2/compacted-00000-00000.parquet",
        f"{out}/report/run_id=s3run/compacted-00000-00002.parquet",
    ]
    assert storage.list_files(f"{out}/_dipflow/pending", so) == []  # committed, then deleted


def test_one_mean_and_one_tally_of_statuses():
    from pipelines import progress, stats

    assert stats.mean([1.0, None, float("nan"), 3.0]) == 2.0 and stats.mean([None]) is None and stats.mean([]) is None
    counts = progress.StatusCounts()
    for status in ("ok", "error", "ok"):
        counts.add({"status": status})
    assert str(counts) == "2 ok, 1 failed, 0 skipped" and sum(counts.values()) == 3
