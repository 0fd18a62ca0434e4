"""Compact reports (issue 12, item 4): rows buffered and flushed every N rows or T seconds, a run's parts compacted
into a few files when it ends (crash-safe between the write and the deletes), readers through pyarrow.dataset with
hive partitioning and filters — on local files and on the moto S3 server."""

from __future__ import annotations

import logging
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines import storage
from pipelines.reporting import reports
from pipelines.reporting.reports import REPORT_SCHEMA, ReportWriter

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
V1_REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "2026-11-26-h200" / "set5-x4-graph"


def row(key: str, **kw) -> dict:
    base = {
        "dataset": "set5",
        "image_key": key,
        "task": "denoise",
        "status": "ok",
        "input_sha256": f"sha-{key}",
        "config_hash": "cfg",
        "psnr": 30.0,
        "finished_at": T0 + timedelta(seconds=1),
    }
    return {**base, **kw}


def curves(key: str, run_id: str) -> list[dict]:
    return reports.curve_rows({"loss": [3.0, 2.0, 1.0]}, run_id=run_id, dataset="set5", image_key=key)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def names(out: str, kind: str, run_id: str, so: dict | None = None) -> list[str]:
    """The files of a run that every reader globs (``<out>/<kind>/run_id=<run>/``)."""
    uris = storage.list_files(storage.join(out, kind, f"run_id={run_id}"), so, suffix=".parquet")
    return [u.rpartition("/")[2] for u in uris]


def pending(out: str, kind: str, run_id: str, so: dict | None = None) -> list[str]:
    """The parts of a run that only dipflow's readers read (``<out>/_dipflow/pending/<kind>/run_id=<run>/``)."""
    return names(storage.join(out, "_dipflow", "pending"), kind, run_id, so)


def rows_of(table) -> list[tuple]:
    return sorted(zip(table.column("run_id").to_pylist(), table.column("image_key").to_pylist(), strict=True))


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out"), None
    s3_server = request.getfixturevalue("s3_server")
    return f"{request.getfixturevalue('s3_root')}/out", s3_server.storage_options


# ---------------------------------------------------------------------------------------------- flush policy


def test_defaults_are_256_rows_or_30_seconds():
    assert (reports.FLUSH_ROWS, reports.FLUSH_SECONDS, reports.COMPACT_ROWS) == (256, 30.0, 1_000_000)
    with pytest.raises(ValueError, match="flush_seconds"):
        ReportWriter("memory://x", "r", flush_seconds=-1)


def test_flushes_every_n_rows_with_their_curves(tmp_path):
    out = str(tmp_path)
    w = ReportWriter(out, "r", flush_every=3, flush_seconds=None, clock=Clock())
    for i in range(2):
        w.append(row(f"{i}.png"), curves(f"{i}.png", "r"))
    assert reports.read_report(out).num_rows == 0 and w.parts_written == 0  # buffered
    w.append(row("2.png"), curves("2.png", "r"))  # the third image: its row and curves flushed with the others
    assert reports.read_report(out).num_rows == 3 and reports.read_curves(out).num_rows == 9
    assert pending(out, "report", "r") == ["part-00000.parquet"] == pending(out, "curves", "r")
    assert names(out, "report", "r") == []  # outside readers see a run's rows once it is committed
    w.append(row("3.png"))
    w.append_curves(curves("3.png", "r"))  # curves alone count toward N as well (one batch)
    assert reports.read_report(out).num_rows == 3  # not lost, not yet written: what a crash here would cost


def test_flushes_when_a_row_arrives_t_seconds_after_the_last_flush(tmp_path):
    out, clock = str(tmp_path), Clock()
    w = ReportWriter(out, "r", flush_every=1000, flush_seconds=30.0, clock=clock)
    w.append(row("a.png"))
    clock.now += 29.9
    w.append(row("b.png"))
    assert reports.read_report(out).num_rows == 0
    clock.now += 600  # a long fit: no row arrives, nothing is written (there is no timer thread) …
    assert reports.read_report(out).num_rows == 0
    w.append(row("c.png"))  # … the next row finds T passed and flushes all three
    assert reports.read_report(out).num_rows == 3 and w.parts_written == 1
    clock.now += 10
    w.append(row("d.png"))  # the window starts again at that flush
    assert reports.read_report(out).num_rows == 3
    w.close()
    assert sorted(reports.read_report(out).column("image_key").to_pylist()) == ["a.png", "b.png", "c.png", "d.png"]


def test_a_crash_loses_only_unflushed_rows_and_keyboard_interrupt_flushes(tmp_path):
    out = str(tmp_path)
    crashed = ReportWriter(out, "dead", flush_every=2, flush_seconds=None)
    for i in range(3):
        crashed.append(row(f"{i}.png"))
    # no close(): the process died; one row (less than N) is lost and resume would restore that image again
    assert reports.read_report(out, run_id="dead").column("image_key").to_pylist() == ["0.png", "1.png"]
    with pytest.raises(KeyboardInterrupt), ReportWriter(out, "int", flush_every=100) as w:
        w.append(row("a.png"))
        raise KeyboardInterrupt
    assert reports.read_report(out, run_id="int").column("image_key").to_pylist() == ["a.png"]


# ---------------------------------------------------------------------------------------------- compaction


def test_close_compacts_a_runs_parts_into_one_file(where):
    out, so = where
    w = ReportWriter(out, "r", so, flush_every=2)
    for i in range(7):
        w.append(row(f"{i}.png"), curves(f"{i}.png", "r"))
    w.flush()
    assert pending(out, "report", "r", so) == [f"part-0000{i}.parquet" for i in range(4)]
    before, before_curves = reports.read_report(out, so), reports.read_curves(out, so)
    w.close()
    assert names(out, "report", "r", so) == ["compacted-00000-00003.parquet"]
    assert names(out, "curves", "r", so) == ["compacted-00000-00003.parquet"]
    assert pending(out, "report", "r", so) == [] and pending(out, "curves", "r", so) == []
    assert w.compaction["report"] == reports.Compaction(written=1, rows=7, removed=4)
    after, after_curves = reports.read_report(out, so), reports.read_curves(out, so)
    assert after.schema == REPORT_SCHEMA and after.to_pylist() == before.to_pylist()
    assert after_curves.to_pylist() == before_curves.to_pylist()
    assert reports.compact_run(out, "r", so)["report"] == reports.Compaction()  # nothing left to do


def test_compacted_files_are_bounded_in_rows_and_cover_consecutive_parts(tmp_path):
    out = str(tmp_path)
    with ReportWriter(out, "r", flush_every=2, compact_rows=5) as w:
        for i in range(11):
            w.append(row(f"{i:02d}.png"))
    # parts of 2,2,2,2,2,1 rows → files of at most 5 rows: parts 0-1 (4), 2-3 (4), 4-5 (3)
    assert names(out, "report", "r") == [
        "compacted-00000-00001.parquet",
        "compacted-00002-00003.parquet",
        "compacted-00004-00005.parquet",
    ]
    assert reports.read_report(out).column("image_key").to_pylist() == [f"{i:02d}.png" for i in range(11)]


def test_a_crash_between_the_write_and_the_deletes_loses_nothing_and_counts_nothing_twice(where, monkeypatch):
    out, so = where
    w = ReportWriter(out, "r", so, flush_every=1)
    for i in range(4):
        w.append(row(f"{i}.png"))
    w.append(row("3.png", status="error", error="boom", finished_at=T0 + timedelta(hours=1)))
    expected = rows_of(reports.read_report(out, so))
    removed = []

    def die_after_one(uri, storage_options=None):
        if removed:
            raise OSError("the process died here")
        removed.append(uri)
        remove(uri, storage_options)

    remove = storage.remove_file
    monkeypatch.setattr(storage, "remove_file", die_after_one)
    with pytest.raises(OSError, match="died"):
        w.close()
    monkeypatch.undo()
    assert names(out, "report", "r", so) == ["compacted-00000-00004.parquet"]  # what outside readers see: once
    assert pending(out, "report", "r", so) == [f"part-0000{i}.parquet" for i in range(1, 5)]
    assert rows_of(reports.read_report(out, so)) == expected  # the committed copy only: no row twice
    assert reports.completed_keys(out, so) == {(f"sha-{i}.png", "cfg") for i in range(3)}
    with ReportWriter(out, "r", so, flush_every=1) as again:  # a reopened run: numbering after the range
        again.append(row("4.png"))
    assert names(out, "report", "r", so) == ["compacted-00000-00004.parquet", "compacted-00005-00005.parquet"]
    assert pending(out, "report", "r", so) == []  # the leftovers, held by the committed range, deleted
    assert rows_of(reports.read_report(out, so)) == sorted([*expected, ("r", "4.png")])


def test_compaction_never_hides_an_existing_compacted_file(tmp_path):
    out = str(tmp_path)
    for batch in ("ab", "cd"):  # two sessions of one run (a retried flow): two compacted files
        with ReportWriter(out, "r", flush_every=1) as w:
            for key in batch:
                w.append(row(f"{key}.png"))
    assert names(out, "report", "r") == ["compacted-00000-00001.parquet", "compacted-00002-00003.parquet"]
    # a stale compacted file whose range another one holds (a crash of a re-compaction) is skipped, then removed
    storage.write_bytes_atomic(
        f"{out}/report/run_id=r/compacted-00000-00000.parquet",
        storage.read_bytes(f"{out}/report/run_id=r/compacted-00000-00001.parquet"),
    )
    assert reports.read_report(out).column("image_key").to_pylist() == ["a.png", "b.png", "c.png", "d.png"]
    assert reports.compact_run(out, "r")["report"] == reports.Compaction(removed=1)
    assert names(out, "report", "r") == ["compacted-00000-00001.parquet", "compacted-00002-00003.parquet"]


def test_a_failed_compaction_does_not_hide_the_runs_own_error(tmp_path, monkeypatch, caplog):
    out = str(tmp_path)

    def refuse(*args, **kwargs):
        raise OSError("store refused")

    with pytest.raises(RuntimeError, match="the run failed"), ReportWriter(out, "r", flush_every=1) as w:
        w.append(row("a.png"))
        w.append(row("b.png"))
        monkeypatch.setattr(storage, "remove_file", refuse)
        with caplog.at_level(logging.WARNING, logger="pipelines.reporting.reports"):
            raise RuntimeError("the run failed")
    assert "left uncompacted" in caplog.text
    assert sorted(reports.read_report(out).column("image_key").to_pylist()) == ["a.png", "b.png"]


def test_version_1_parts_stay_committed_as_they_are_and_read_with_the_new_schema(tmp_path):
    """An earlier version's loose parts in report/ are rows outside readers count once already: merging them there
    would show them twice until the deletes, so recovery leaves them."""
    shutil.copytree(V1_REPORT, tmp_path, dirs_exist_ok=True)
    files = names(str(tmp_path), "report", "set5-optimised-graph")
    before = reports.read_report(str(tmp_path))
    assert reports.recover(str(tmp_path)) == {"report": reports.Compaction(), "curves": reports.Compaction()}
    assert reports.compact_run(str(tmp_path), "set5-optimised-graph")["report"] == reports.Compaction()
    assert names(str(tmp_path), "report", "set5-optimised-graph") == files and len(files) == 5
    after = reports.read_report(str(tmp_path))
    assert after.schema == REPORT_SCHEMA and after.to_pylist() == before.to_pylist()  # newer columns: nulls


def test_an_earlier_versions_interrupted_compaction_is_cleaned_by_the_next_run(tmp_path):
    """An earlier version compacted inside report/: a crash between its write and its deletes left the compacted
    file beside parts it holds (outside readers counted them twice). The next run's recovery deletes those parts,
    never a row's only copy; loose parts outside any range stay."""
    out = str(tmp_path)
    folder = tmp_path / "report" / "run_id=old"
    with ReportWriter(out, "old", flush_every=1, compact=False) as w:
        for i in range(4):
            w.append(row(f"{i}.png"))
    folder.mkdir(parents=True)
    parts = tmp_path / "_dipflow" / "pending" / "report" / "run_id=old"
    for part in parts.iterdir():  # the old layout: parts inside report/
        part.rename(folder / part.name)
    whole = reports.read_report(out)
    first_three = whole.filter(ds.field("image_key") != "3.png")
    buffer = pa.BufferOutputStream()
    pq.write_table(first_three, buffer)
    (folder / "compacted-00000-00002.parquet").write_bytes(buffer.getvalue().to_pybytes())
    (folder / "part-00000.parquet").unlink()  # the crash came after the first delete
    assert rows_of(reports.read_report(out)) == rows_of(whole)  # dipflow's reader: each row once already
    assert reports.recover(out)["report"] == reports.Compaction(removed=2)  # parts 1 and 2, held by the range
    assert names(out, "report", "old") == ["compacted-00000-00002.parquet", "part-00003.parquet"]
    assert rows_of(reports.read_report(out)) == rows_of(whole)


# ---------------------------------------------------------------------------------------------- readers


def test_readers_push_filters_and_columns_down(where):
    out, so = where
    for hours, (run_id, status) in enumerate((("b", "error"), ("a", "ok"), ("c", "skipped"))):  # error, then ok
        with ReportWriter(out, run_id, so) as w:
            for i in range(3):
                w.append(row(f"{i}.png", status=status, finished_at=T0 + timedelta(hours=hours)))
    # a broken file in run a: a filter on run_id prunes its folder, so it is never opened
    storage.write_bytes_atomic(f"{out}/report/run_id=a/part-00099.parquet", b"not parquet", so)
    only_b = reports.read_report(out, so, filter=ds.field("run_id") == "b", columns=["run_id", "image_key"])
    assert only_b.column_names == ["run_id", "image_key"] and rows_of(only_b) == [("b", f"{i}.png") for i in range(3)]
    assert reports.read_report(out, so, run_id="b").num_rows == 3
    real = reports.read_report(out, so, run_id="c", filter=ds.field("status") != "skipped")
    assert real.num_rows == 0
    empty = reports.read_report(f"{out}/none", so, columns=["status"])
    assert empty.column_names == ["status"] and empty.num_rows == 0
    storage.remove_file(f"{out}/report/run_id=a/part-00099.parquet", so)
    assert reports.completed_keys(out, so) == {(f"sha-{i}.png", "cfg") for i in range(3)}


def test_latest_rows_keeps_table_order_and_null_keys():
    t = reports.to_table(
        [
            row("a.png", run_id="r1", finished_at=T0),
            row("n.png", run_id="r1", input_sha256=None),
            row("b.png", run_id="r1"),
            row("n.png", run_id="r2", input_sha256=None),
            row("a.png", run_id="r2", status="skipped", finished_at=T0 + timedelta(days=1)),
            row("a.png", run_id="r3", status="error", finished_at=T0 + timedelta(hours=1)),
        ]
    )
    latest = reports.latest_rows(t)
    assert rows_of(latest) == [("r1", "b.png"), ("r2", "n.png"), ("r3", "a.png")]
    assert latest.column("image_key").to_pylist() == ["b.png", "n.png", "a.png"]  # in table order


def test_memory_filesystem_compacts_too():
    out = f"memory://compact-{uuid.uuid4().hex}/out"
    with ReportWriter(out, "m", flush_every=1) as w:
        w.append(row("a.png"))
        w.append(row("b.png"))
    assert names(out, "report", "m") == ["compacted-00000-00001.parquet"]
    assert reports.read_report(out).column("image_key").to_pylist() == ["a.png", "b.png"]


def test_a_reader_listing_while_another_process_commits_the_run_sees_each_row_once(tmp_path, monkeypatch):
    """`dipflow report` reading while the run commits: whatever lands between its two listings, each row once."""
    from pipelines.reporting import layout

    out = str(tmp_path)
    w = ReportWriter(out, "r", flush_every=1)
    for i in range(3):
        w.append(row(f"{i}.png"))
    listed, files = [], layout.files

    def commit_between_the_listings(folder, so):
        found = files(folder, so)
        listed.append(folder)
        if len(listed) == 1:  # the reader's first listing is done: the writer commits now
            w.close()
        return found

    monkeypatch.setattr(layout, "files", commit_between_the_listings)
    keys = reports.read_report(out).column("image_key").to_pylist()
    monkeypatch.undo()
    assert "_dipflow" in listed[0] and names(out, "report", "r") == ["compacted-00000-00002.parquet"]
    assert sorted(keys) == ["0.png", "1.png", "2.png"]
