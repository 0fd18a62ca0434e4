"""Any file at an output's place that is not the run's (issue 25, item 1), in nested folders, on local files,
memory:// and the moto S3 server: a user's own file and another output root's output are kept byte for byte and
their images get readable error rows, before any fit; what a crash left between writing outputs and recording them
is the root's own and is replaced; ``overwrite`` replaces the others; afterwards nothing is redone."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from invariants import Outcome, check_outputs, check_rows, check_unchanged, readable

import dipcore
from pipelines import ownership, storage
from pipelines.reporting import reports

FAST = {"preset": "fast", "iterations": 2, "channels": 4}
INLINE = {"executor": "inline"}
KEYS = ["a.png", "sub/b.png", "sub/deeper/c.png", "d.jpg", "sub/deeper/e.png"]
FOREIGN = {  # output path → what stands there before the first run
    "a.png": "a file of the user's",
    "sub/deeper/c.png": "another output root's output (marked with that root's id)",
}

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _store(backend: str, tmp_path, request) -> tuple[str, dict | None]:
    if backend == "local":
        return str(tmp_path), None
    if backend == "memory":
        return f"memory://foreign-{uuid.uuid4().hex}", None
    server = request.getfixturevalue("s3_server")
    return server.url(uuid.uuid4().hex), server.storage_options


def _png(seed: int) -> bytes:
    return dipcore.encode_png(np.random.default_rng(seed).random((16, 16, 3)).astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "memory", "s3"])
def test_a_file_that_is_not_the_runs_is_never_replaced(backend, tmp_path, request, ledger):
    from pipelines import flows

    root, so = _store(backend, tmp_path, request)
    src, out = f"{root}/src", f"{root}/out"
    for i, key in enumerate(KEYS):
        storage.write_bytes_atomic(f"{src}/{key}", _png(i), so)
    foreign = {
        "a.png": _png(100),
        "sub/deeper/c.png": ownership.mark(_png(101), json.dumps({"root": "elsewhere", "output": "sub/deeper/c.png"})),
    }
    for rel, data in foreign.items():
        storage.write_bytes_atomic(f"{out}/{rel}", data, so)
    theirs = {f"{out}/{rel}": storage.sha256_hex(data) for rel, data in foreign.items()}
    inputs = {u: storage.sha256_hex(storage.read_bytes(u, so)) for u in storage.list_files(src, so)}
    listed = set(KEYS)
    outcome = Outcome(
        "a file at an output's place that is not the run's",
        "not the run's",
        backend,
        "; ".join(f"{rel}: {what}" for rel, what in FOREIGN.items()) + "; nested folders; a crash's leftover",
    )

    def kept_as_they_were(when: str) -> None:
        now = {u: storage.sha256_hex(storage.read_bytes(u, so)) for u in theirs}
        check_unchanged(outcome, theirs, now, f"files not the run's, {when}")

    first = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so)
    rows = reports.read_report(out, so, run_id=first["run_id"]).to_pylist()
    expect = {k: ("error" if k.rpartition(".")[0] + ".png" in FOREIGN else "ok") for k in KEYS}
    check_rows(outcome, listed, rows, expect=expect)
    for row in rows:
        if row["status"] == "error" and ("--overwrite" not in row["error"] or row["iterations_run"] is not None):
            outcome.fail("expected_missed", f"{row['image_key']}: a fit ran, or no word of --overwrite: {row['error']}")
    check_outputs(outcome, out, rows, so, kept=frozenset(FOREIGN))
    kept_as_they_were("after the first run")

    # A crash right after the outputs were written: no report row, no state row. The next run finds its own files.
    for folder in ("report", "curves", "runs", "_dipflow/state"):
        for uri in storage.list_files(f"{out}/{folder}", so):
            storage.remove_file(uri, so)
    second = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so)
    rows = reports.read_report(out, so, run_id=second["run_id"]).to_pylist()
    check_rows(outcome, listed, rows, expect=expect)
    check_outputs(outcome, out, rows, so, kept=frozenset(FOREIGN))
    kept_as_they_were("after a run over a crash's leftovers")

    third = flows.restore_dataset(
        src, out, {"task": "denoise", **FAST}, execution=INLINE, options={"overwrite": True}, storage_options=so
    )
    rows = reports.read_report(out, so, run_id=third["run_id"]).to_pylist()
    replaced = {k for k, e in expect.items() if e == "error"}
    check_rows(outcome, listed, rows, expect=dict.fromkeys(KEYS, "ok"), done=set(KEYS) - replaced)
    check_outputs(outcome, out, reports.read_report(out, so).to_pylist(), so)
    for uri in theirs:
        if storage.sha256_hex(storage.read_bytes(uri, so)) == theirs[uri]:
            outcome.fail("expected_missed", f"--overwrite left {uri} as it was")

    fourth = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so)
    rows = reports.read_report(out, so, run_id=fourth["run_id"]).to_pylist()
    check_rows(outcome, listed, rows, done=listed, done_earlier=fourth["done_earlier"])
    check_unchanged(outcome, inputs, {u: storage.sha256_hex(storage.read_bytes(u, so)) for u in inputs}, "inputs")
    errors = [r["error"] for r in reports.read_report(out, so).to_pylist() if r["status"] == "error"]
    if errors and all(readable(e) for e in errors):
        outcome.notes.append(errors[0])
    ledger(outcome)
