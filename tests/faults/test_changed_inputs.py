"""Inputs that change between two runs (issue 25, items 7 and 8), on local files and the moto S3 server: an input
rewritten in place with its size, mtime and inode kept (local) or uploaded again (S3), or replaced by a rename, is
restored again; one renamed or deleted keeps its output, and the run counts those outputs (one line, the runs table);
the report counts each image once; what did not change is not redone. An output root whose state holds fingerprints
of the format before the ctime redoes none of its images."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from invariants import Outcome, check_outputs, check_rows
from PIL import Image

from pipelines import storage
from pipelines.reporting import reports, runs, state

FAST = {"preset": "fast", "iterations": 2, "channels": 4}
INLINE = {"executor": "inline"}

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _bmp(seed: int) -> bytes:
    """Uncompressed: every picture of one size is a file of one size."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), np.uint8)).save(buf, "BMP")
    return buf.getvalue()


def _in_place(path: str, data: bytes) -> None:
    """Other bytes of the same size into the same inode, the mtime put back (``cp -p`` onto it, ``touch -r``)."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.slow
def test_inputs_changed_between_runs(where, ledger):
    from pipelines import flows

    root, so = where  # conftest: a local folder, then a prefix on the moto S3 server
    backend = "local" if so is None else "s3"
    src, out = f"{root}/src", f"{root}/out"
    keys = ["same.bmp", "in-place.bmp", "sub/renamed.bmp", "sub/deep/deleted.bmp", "replaced.bmp"]
    for i, key in enumerate(keys):
        storage.write_bytes_atomic(f"{src}/{key}", _bmp(i), so)
    flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so)
    gone = {"sub/renamed.png": None, "sub/deep/deleted.png": None}
    for rel in gone:
        gone[rel] = storage.read_bytes(f"{out}/{rel}", so)

    if backend == "local":
        _in_place(f"{src}/in-place.bmp", _bmp(10))
    else:  # an object store has no in-place write: the same size uploaded again
        storage.write_bytes_atomic(f"{src}/in-place.bmp", _bmp(10), so)
    storage.write_bytes_atomic(f"{src}/replaced.bmp", _bmp(11), so)  # a new file renamed over it (a new inode)
    storage.write_bytes_atomic(f"{src}/sub/renamed-now.bmp", storage.read_bytes(f"{src}/sub/renamed.bmp", so), so)
    storage.remove_file(f"{src}/sub/renamed.bmp", so)
    storage.remove_file(f"{src}/sub/deep/deleted.bmp", so)
    listed = {"same.bmp", "in-place.bmp", "replaced.bmp", "sub/renamed-now.bmp"}

    outcome = Outcome(
        "inputs changed, renamed or deleted between runs",
        "changed input",
        backend,
        "rewritten in place (size, mtime, inode kept)" if backend == "local" else "uploaded again, same size",
    )
    second = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so)
    rows = reports.read_report(out, so, run_id=second["run_id"]).to_pylist()
    check_rows(outcome, listed, rows, expect=dict.fromkeys(listed, "ok"), done={"same.bmp"}, done_earlier=1)
    check_outputs(outcome, out, reports.read_report(out, so).to_pylist(), so)
    for rel, data in gone.items():
        if storage.read_bytes(f"{out}/{rel}", so) != data:
            outcome.fail("outside_root", f"the output of a gone input changed: {rel}")
    if second["unlisted_outputs"] != len(gone):
        outcome.fail("expected_missed", f"{second['unlisted_outputs']} unlisted outputs said, not {len(gone)}")
    (row,) = runs.read_runs(out, so, run_id=second["run_id"]).to_pylist()
    if row["unlisted_outputs"] != len(gone):
        outcome.fail("expected_missed", f"the runs table says {row['unlisted_outputs']} unlisted outputs")
    (line,) = reports.summarize(reports.latest_rows(reports.read_report(out, so))).to_pylist()
    if line["images"] != len(keys) + 1:  # five first, and the renamed one under its new key
        outcome.fail("expected_missed", f"the report counts {line['images']} images, not {len(keys) + 1}")
    outcome.notes.append(f"{second['unlisted_outputs']} output(s) of inputs gone, kept and counted")
    ledger(outcome)


@pytest.mark.slow
def test_a_state_from_before_the_ctime_redoes_nothing(tmp_path, ledger):
    from pipelines import flows

    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    keys = [f"f{i}/img{i}.bmp" for i in range(6)]
    for i, key in enumerate(keys):
        storage.write_bytes_atomic(f"{src}/{key}", _bmp(i), None)
    flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE)
    for uri in storage.list_files(state.state_dir(out)):  # as a version before the ctime wrote it
        path = storage.filesystem(uri)[1]
        table = pq.read_table(path)
        old = [storage.without_ctime(f) for f in table.column("input_fingerprint").to_pylist()]
        pq.write_table(table.set_column(3, "input_fingerprint", pc.cast(old, "string")), path)
    outcome = Outcome("an output root whose state predates the ctime", "changed input", "local", "after an upgrade")
    upgraded = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE)
    rows = reports.read_report(out, run_id=upgraded["run_id"]).to_pylist()
    check_rows(outcome, set(keys), rows, done=set(keys), done_earlier=upgraded["done_earlier"])
    _in_place(f"{src}/{keys[0]}", _bmp(99))
    after = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE)
    rows = reports.read_report(out, run_id=after["run_id"]).to_pylist()
    check_rows(outcome, set(keys), rows, done=set(keys[1:]), done_earlier=after["done_earlier"])
    ledger(outcome)
