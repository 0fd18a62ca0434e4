"""Storage faults injected by ``faulty://`` (`faulty_fs.py`) into runs over a local folder and over the moto S3
server: connection resets, throttling, server errors, a full disk and refused permissions, on the inputs, the outputs,
the report and the listing.
Each run is followed by a rerun without the fault; both are held to the invariants of `invariants.py`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from invariants import (
    Outcome,
    check_not_redone,
    check_outputs,
    check_rows,
    check_unchanged,
    done_keys,
    local_tree,
    readable,
    snapshot,
)

from pipelines import storage
from pipelines.errors import PipelineError
from pipelines.reporting import reports

FAST = {"preset": "fast", "iterations": 2, "channels": 8}
KEYS = ("a.png", "b.png", "sub/c.png")

pytestmark = pytest.mark.usefixtures("prefect_harness")


@dataclass(frozen=True)
class StorageFault:
    case: str
    what: str
    rules: tuple[dict, ...]
    # What the faulty run must end as: "rows" (it finishes, one row per input; `errors` of them errors), or
    # "refused" (it stops with a readable PipelineError before any row: nothing could be recorded).
    ends: str = "rows"
    errors: tuple[str, ...] = ()


FAULTS = (
    StorageFault(
        "read: connection reset once",
        "one input's read is reset once (retried)",
        ({"op": "read", "path": "*/src/b.png", "error": "reset", "times": 1},),
    ),
    StorageFault(
        "read: connection reset",
        "every read of one input is reset",
        ({"op": "read", "path": "*/src/b.png", "error": "reset"},),
        errors=("b.png",),
    ),
    StorageFault(
        "read: throttled",
        "every read of one input answers 503 SlowDown",
        ({"op": "read", "path": "*/src/b.png", "error": "throttle"},),
        errors=("b.png",),
    ),
    StorageFault(
        "read: server error",
        "every read of one input answers 500",
        ({"op": "read", "path": "*/src/sub/c.png", "error": "server"},),
        errors=("sub/c.png",),
    ),
    StorageFault(
        "write: disk full",
        "one output's write fails with ENOSPC once its bytes are down",
        ({"op": "write", "path": "*/out/b.png", "error": "full"},),
        errors=("b.png",),
    ),
    StorageFault(
        "write: output refused",
        "every write under the output root is refused (an unwritable output)",
        ({"op": "write", "path": "*/out/*", "error": "denied"},),
        ends="refused",
    ),
    StorageFault(
        "write: report part reset once",
        "the first write of a report part is reset",
        ({"op": "write", "path": "*/out/_dipflow/pending/report/*", "error": "reset", "times": 1},),
    ),
    StorageFault(
        "write: curves part throttled once",
        "the first write of a curves part answers 503",
        ({"op": "write", "path": "*/out/_dipflow/pending/curves/*", "error": "throttle", "times": 1},),
    ),
    StorageFault(
        "write: HTML report refused",
        "every write of the HTML report is refused (the run's results stand)",
        ({"op": "write", "path": "*/out/html/*", "error": "denied"},),
    ),
    StorageFault(
        "list: folder refused",
        "listing a sub-folder of the source is refused",
        ({"op": "list", "path": "*/src/sub", "error": "denied"},),
        ends="refused",
    ),
)


def _roots(backend: str, tmp_path: Path, s3_server) -> tuple[str, dict]:
    """(the case's root without protocol, the target's storage options) on `backend`."""
    if backend == "local":
        return str(tmp_path), {"target_protocol": "file"}
    target = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url}, "key": "testing", "secret": "testing"}
    return s3_server.url(uuid.uuid4().hex)[len("s3://") :], {"target_protocol": "s3", "target_options": target}


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize("fault", FAULTS, ids=[f.case for f in FAULTS])
def test_a_storage_fault_costs_only_its_images_and_a_rerun_finishes(
    fault, backend, tmp_path, s3_server, write_images, ledger, monkeypatch
):
    from pipelines import flows

    monkeypatch.setattr(storage.backend, "RETRY_PAUSES", (0.01, 0.01, 0.01))  # the same retries, no waiting
    root, target = _roots(backend, tmp_path, s3_server)
    plain = {"file": lambda p: p, "s3": lambda p: f"s3://{p}"}[target["target_protocol"]]
    plain_options = target.get("target_options")
    write_images(plain(f"{root}/src"), KEYS, size=16, storage_options=plain_options)
    source, output = f"faulty://{root}/src", f"faulty://{root}/out"
    inputs = snapshot(plain(f"{root}/src"), plain_options)
    around = _around(backend, tmp_path, plain(root), plain_options)
    outcome = Outcome(fault.case, "storage fault", f"{backend} + faulty://", fault.what)
    faulty = {**target, "faults": [dict(rule) for rule in fault.rules]}  # a fresh instance: the counts start anew
    inline = {"executor": "inline"}  # faulty:// is registered in this process only
    settings = {"task": "denoise", **FAST}

    if fault.ends == "refused":
        with pytest.raises(PipelineError) as refused:
            flows.restore_dataset(source, output, settings, execution=inline, storage_options=faulty)
        if not readable(str(refused.value)):
            outcome.fail("unreadable_errors", f"the run stopped with {refused.value!r}")
        outcome.notes.append(f"refused: {refused.value}")
        first_rows = []
    else:
        first = flows.restore_dataset(source, output, settings, execution=inline, storage_options=faulty)
        first_rows = reports.read_report(output, storage_options=target, run_id=first["run_id"]).to_pylist()
        expect = {k: "error" if k in fault.errors else "ok" for k in KEYS}
        check_rows(outcome, set(KEYS), first_rows, expect=expect)
        outcome.notes += [row["error"] for row in first_rows if row["status"] == "error"]

    second = flows.restore_dataset(source, output, settings, execution=inline, storage_options=target)
    second_rows = reports.read_report(output, storage_options=target, run_id=second["run_id"]).to_pylist()
    check_rows(
        outcome,
        set(KEYS),
        second_rows,
        expect=dict.fromkeys(KEYS, "ok" if not first_rows else "either"),
        done=done_keys(first_rows),
        done_earlier=second["done_earlier"],
    )
    check_not_redone(outcome, first_rows, second_rows)
    check_outputs(outcome, output, first_rows + second_rows, target)
    check_unchanged(outcome, inputs, snapshot(plain(f"{root}/src"), plain_options), "inputs")
    check_unchanged(outcome, around, _around(backend, tmp_path, plain(root), plain_options), "outside the root")
    ledger(outcome)


def _around(backend: str, tmp_path: Path, root: str, options: dict | None) -> dict:
    """What lies beside the source and the output root: in the test's folder, or under its S3 prefix."""
    if backend == "local":
        return local_tree(tmp_path, skip=(tmp_path / "out",))
    return {u: 1 for u in storage.list_files(root, options) if "/out/" not in u and "/src/" not in u}
