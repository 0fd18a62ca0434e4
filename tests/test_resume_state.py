"""An O(new) resume (issue 12): the done-state table, the runs table, and what a run reads and writes — on local
files and on the moto S3 server. The inline executor keeps these runs in the test's process (no Ray pool to start), so
every read of an input, the driver's and the fit's, goes through the patched `storage` functions."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from pipelines import storage
from pipelines.reporting import reports, runs, state

FAST = {"preset": "fast", "iterations": 2, "channels": 8}


def _row(key: str, fingerprint: str, *, dataset: str = "d", config: str = "c", at: int = 0) -> dict:
    return {
        "dataset": dataset,
        "config_hash": config,
        "image_key": key,
        "input_fingerprint": fingerprint,
        "input_sha256": "0" * 64,
        "output_uri": f"out/{key}",
        "finished_at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=at),
    }


# ---------------------------------------------------------------------------------------------- the state table


def test_the_state_answers_per_scope_with_the_latest_fingerprint(tmp_path):
    root = str(tmp_path)
    first = state.StateWriter(root, "run1", None)
    first.add(_row("a.png", "fp-a1", at=1))
    first.add(_row("b.png", "fp-b", at=1))
    first.add(_row("a.png", "fp-other-dataset", dataset="e", at=1))
    first.add(_row("a.png", "fp-other-config", config="k", at=1))
    first.close()
    second = state.StateWriter(root, "run2", None)
    second.add(_row("a.png", "fp-a2", at=2))  # a.png changed and was restored again
    second.close()

    done = state.DoneState.load(root, None, [("d", "c")])
    assert len(done.done[("d", "c")]) == 2 and list(done.done) == [("d", "c")]  # a.png once: its latest row
    assert done.is_done("d", "c", "a.png", "fp-a2") and done.is_done("d", "c", "b.png", "fp-b")
    assert not done.is_done("d", "c", "a.png", "fp-a1")  # changed since
    assert not done.is_done("d", "c", "a.png", None)  # a listing without a fingerprint: never taken as done
    assert not done.is_done("d", "k", "a.png", "fp-other-config")  # another scope is not loaded
    assert done.files_read == 2 and len(done) == 2
    other = state.DoneState.load(root, None, [("d", "k"), ("e", "c")])
    assert other.is_done("d", "k", "a.png", "fp-other-config") and other.is_done("e", "c", "a.png", "fp-other-dataset")
    assert not other.is_done("d", "k", "a.png", "fp-other-dataset")  # each scope holds its own fingerprint


def test_keys_that_share_a_digest_are_each_found_with_their_own_fingerprint(monkeypatch):
    """Two keys whose 8-byte digests collide sit side by side in the index: each is found with its own fingerprint;
    a key that is not there is not found."""
    real = state._digest
    monkeypatch.setattr(state, "_digest", lambda text: 7 if text in ("x.png", "y.png") else real(text))
    index = state._Index()
    index.add(["x.png", "z.png"], ["fp-x", "fp-z"])
    index.add(["y.png", "w.png"], ["fp-y", None])  # w.png has no fingerprint: never done
    index.seal()
    assert len(index) == 3
    assert index.holds("x.png", "fp-x") and index.holds("y.png", "fp-y") and index.holds("z.png", "fp-z")
    assert not index.holds("w.png", "fp-w") and not index.holds("q.png", "fp-x")


def test_a_run_that_ends_with_many_state_files_merges_them_and_a_crash_mid_merge_counts_nothing_twice(tmp_path):
    root = str(tmp_path)
    for i in range(state.MERGE_AT):
        w = state.StateWriter(root, f"run{i}", None)
        w.add(_row(f"im{i}.png", f"fp{i}", at=i))
        w.add(_row("same.png", f"fp-same-{i}", at=i))
        w.close()
        assert w.merged is None
    files = storage.list_files(state.state_dir(root))
    assert len(files) == state.MERGE_AT

    last = state.StateWriter(root, "run-last", None)
    last.add(_row("same.png", "fp-same-last", at=100))
    last.close()
    assert last.merged == state.MERGE_AT + 1
    (merged,) = storage.list_files(state.state_dir(root))
    assert merged.endswith("merged-run-last.parquet")
    table = pq.read_table(merged.removeprefix("file://"))
    assert table.num_rows == state.MERGE_AT + 1  # one row per key: the latest
    expected = {f"im{i}.png": f"fp{i}" for i in range(state.MERGE_AT)} | {"same.png": "fp-same-last"}

    def answers(done: state.DoneState) -> bool:
        return len(done) == len(expected) and all(done.is_done("d", "c", k, fp) for k, fp in expected.items())

    assert answers(state.DoneState.load(root, None, [("d", "c")]))

    # A crash after the merged file was written, before the files it replaces were deleted: both are read, and
    # the latest row per key still answers.
    old = state.StateWriter(root, "run-old", None)
    old.add(_row("same.png", "fp-same-0", at=0))
    old.flush()
    assert answers(state.DoneState.load(root, None, [("d", "c")]))


# ------------------------------------------------------------------------------------------------ flows, resume


def _files(root: str, so: dict | None) -> dict[str, tuple]:
    """Every file under `root` with what changes when it is rewritten (mtime on local files, ETag on S3)."""
    fs, path = storage.filesystem(root, so)
    fs.invalidate_cache()
    found = fs.find(path, detail=True)
    return {p: (i.get("size"), i.get("mtime") or i.get("ETag") or i.get("LastModified")) for p, i in found.items()}


@contextlib.contextmanager
def _reads(monkeypatch):
    """The URLs of inputs (under a ``src`` folder) read through `storage`, whole or their header, inside the block."""
    seen: list[str] = []
    read_bytes, read_head = storage.read_bytes, storage.read_head

    def spy_bytes(uri, *args, **kwargs):
        seen.extend([uri] if "/src/" in uri else [])
        return read_bytes(uri, *args, **kwargs)

    def spy_head(uri, *args, **kwargs):
        seen.extend([uri] if "/src/" in uri else [])
        return read_head(uri, *args, **kwargs)

    monkeypatch.setattr(storage, "read_bytes", spy_bytes)
    monkeypatch.setattr(storage, "read_head", spy_head)
    try:
        yield seen
    finally:
        monkeypatch.setattr(storage, "read_bytes", read_bytes)
        monkeypatch.setattr(storage, "read_head", read_head)


def _restore(src: str, out: str, so: dict | None):
    from pipelines import flows

    with flows.storage_credentials(so):
        return flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution={"executor": "inline"})


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_with_nothing_new_reads_no_input_and_writes_its_summary_and_page(where, write_images, monkeypatch):
    root, so = where
    src, out = f"{root}/src", f"{root}/out"
    keys = ["a.png", "b.png", "sub/c.png", "sub/deeper/d.png"]
    write_images(src, keys, size=16, storage_options=so)
    first = _restore(src, out, so)
    assert (first["ok"], first["error"], first["skipped"]) == (4, 0, 0)

    before = _files(out, so)
    with _reads(monkeypatch) as read:
        second = _restore(src, out, so)
    assert (second["ok"], second["error"], second["skipped"], second["done_earlier"]) == (0, 0, 4, 4)
    assert read == []  # nothing read: neither an input nor a header
    after = _files(out, so)
    written = sorted(p.rpartition("/out/")[2] for p in after if before.get(p) != after[p])
    run = f"run_id={second['run_id']}"
    # Besides its page and runs row, a run leaves only its released lease: the next generation of the chain.
    assert [p for p in written if not p.startswith("_dipflow/lease/")] == [
        f"html/{run}/index.html",
        f"runs/{run}/summary.parquet",
    ]
    assert len(written) == 3
    assert reports.read_report(out, so, run_id=second["run_id"]).num_rows == 0  # no row per image done earlier
    (summary,) = runs.read_runs(out, so, run_id=second["run_id"]).to_pylist()
    assert summary["outcome"] == "finished" and summary["flow_run_id"] == second["flow_run_id"]
    assert (summary["listed"], summary["ok"], summary["errors"], summary["done_earlier"]) == (4, 0, 0, 4)
    assert summary["seconds_to_first_dispatch"] is None and summary["seconds_listing"] is not None
    assert summary["report_version"] == reports.REPORT_VERSION

    # One new image and one changed: only they are read (the new one's header, then both by the fit) and restored.
    write_images(src, ["new.png"], size=16, storage_options=so)
    changed = f"{src}/sub/c.png"
    data = storage.read_bytes(changed, so)
    time.sleep(0.01)  # another mtime on local files; another ETag on S3
    storage.write_bytes_atomic(changed, data[:-8] + bytes(reversed(data[-8:])), so)
    with _reads(monkeypatch) as read:
        third = _restore(src, out, so)
    assert (third["ok"], third["done_earlier"]) == (2, 3)
    assert {u.rpartition("/src/")[2] for u in read} == {"new.png", "sub/c.png"}
    rows = reports.read_report(out, so, run_id=third["run_id"]).to_pylist()
    assert sorted(r["image_key"] for r in rows) == ["new.png", "sub/c.png"]
    assert all(r["input_fingerprint"] and len(r["input_sha256"]) == 64 for r in rows)
    assert [r["run_id"] for r in runs.read_runs(out, so).to_pylist()] == [r["run_id"] for r in (first, second, third)]


@pytest.mark.usefixtures("prefect_harness")
def test_an_output_root_written_before_the_state_is_resumed_by_content_once(where, write_images, monkeypatch):
    root, so = where
    src, out = f"{root}/src", f"{root}/out"
    write_images(src, ["a.png", "b.png", "c.png"], size=16, storage_options=so)
    first = _restore(src, out, so)
    assert first["ok"] == 3
    # What an earlier dipflow left: report rows with content hashes, no fingerprints, and no state.
    for uri in storage.list_files(state.state_dir(out), so):
        storage.remove_file(uri, so)
    time.sleep(0.01)
    b = f"{src}/b.png"
    storage.write_bytes_atomic(b, storage.read_bytes(b, so), so)  # rewritten with the same bytes
    write_images(src, ["c.png"], size=24, storage_options=so)  # c.png really changed

    with _reads(monkeypatch) as read:
        second = _restore(src, out, so)
    assert (second["ok"], second["done_earlier"]) == (1, 2)
    (summary,) = runs.read_runs(out, so, run_id=second["run_id"]).to_pylist()
    assert summary["verified_by_content"] == 2
    assert [u.rpartition("/")[2] for u in read].count("a.png") == 1  # read once, to compare

    with _reads(monkeypatch) as read:
        third = _restore(src, out, so)
    assert (third["ok"], third["done_earlier"], read) == (0, 3, [])  # the state answers alone now


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_run_still_writes_its_summary_row(tmp_path, write_images, monkeypatch):
    from pipelines.execution import restorer

    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    write_images(src, ["a.png", "b.png"], size=16)

    def boom(*args, **kwargs):
        raise RuntimeError("the machine caught fire")

    monkeypatch.setattr(restorer.Restorer, "run_batch", boom)
    with pytest.raises(RuntimeError, match="caught fire"):
        _restore(src, out, None)
    (summary,) = runs.read_runs(out).to_pylist()
    assert (summary["outcome"], summary["listed"], summary["ok"]) == ("failed", 2, 0)
    assert "caught fire" in summary["error"]
