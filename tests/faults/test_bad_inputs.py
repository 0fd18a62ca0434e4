"""Every kind of hostile input (`bad_files.BAD_FILES`) and every hostile name (`bad_files.HOSTILE_NAMES`) in one
dataset, restored on Ray actors from a local folder and from the moto S3 server, then run again: each case is held to
the invariants of `invariants.py`."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from bad_files import BAD_FILES, HOSTILE_NAMES, SYMLINKS, _png
from invariants import (
    Outcome,
    check_not_redone,
    check_outputs,
    check_processes,
    check_rows,
    check_secret,
    check_unchanged,
    done_keys,
    local_tree,
    restore_workers,
    snapshot,
)
from whole_plan import listing as listing_of

from pipelines import storage
from pipelines.reporting import reports

FAST = {"preset": "fast", "iterations": 2, "channels": 8}

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _dataset() -> dict[str, tuple[bytes, str]]:
    """``{key: (bytes, expected)}``: the bad files, and a valid PNG under each hostile name."""
    files = {b.name: (b.build(), b.expect) for b in BAD_FILES}
    files.update({name: (_png(), expect) for name, expect in HOSTILE_NAMES})
    return files


def _store(backend: str, tmp_path: Path, s3_server) -> tuple[str, str, dict | None, str]:
    """(source root, output root, storage options, the run's secret) on `backend`."""
    secret = f"fault-suite-secret-{uuid.uuid4().hex}"
    if backend == "local":
        return str(tmp_path / "src"), str(tmp_path / "out"), None, secret
    root = s3_server.url(uuid.uuid4().hex)
    options = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url}, "key": "fault-suite", "secret": secret}
    return f"{root}/src", f"{root}/out", options, secret


def _prefect_home() -> Path:
    return Path(os.environ["PREFECT_HOME"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_every_bad_input_and_hostile_name_ends_in_one_readable_row(backend, ray_local, tmp_path, s3_server, ledger):
    from pipelines import flows

    source, output, options, secret = _store(backend, tmp_path, s3_server)
    files = _dataset()
    for key, (data, _) in files.items():
        storage.write_bytes_atomic(f"{source}/{key}", data, options)
    if backend == "local":  # object stores have no links
        (tmp_path / "outside.png").write_bytes(_png())
        (tmp_path / "src" / "folder").mkdir()
        (tmp_path / "src" / "folder" / "inner.png").write_bytes(_png())
        (tmp_path / "src" / "bmp-target.png").write_bytes(_png())
        files["folder/inner.png"] = files["bmp-target.png"] = (_png(), "ok")
        for _, name, target, expect in SYMLINKS:
            (tmp_path / "src" / name).symlink_to(target)
            files[name] = (b"", expect)
    inputs = snapshot(source, options)
    elsewhere = local_tree(tmp_path, skip=(tmp_path / "out",))
    listing = listing_of(source, storage_options=options)
    listed = {entry.key for entry in listing.images} | {key for key, _ in listing.excluded}

    first = flows.restore_dataset(source, output, {"task": "denoise", **FAST}, storage_options=options)
    second = flows.restore_dataset(source, output, {"task": "denoise", **FAST}, storage_options=options)
    rows = reports.read_report(output, storage_options=options).to_pylist()
    first_rows = [r for r in rows if r["run_id"] == first["run_id"]]
    second_rows = [r for r in rows if r["run_id"] == second["run_id"]]

    cases = [(b.case, b.name, b.what, "bad input") for b in BAD_FILES]
    cases += [(f"name: {n[:40]}", n, f"a valid PNG named {n[:60]!r}", "hostile name") for n, _ in HOSTILE_NAMES]
    if backend == "local":
        cases += [(case, name, f"{name} → {target}", "symbolic link") for case, name, target, _ in SYMLINKS]
    whole = Outcome(f"the whole dataset ({len(files)} files)", "bad input", backend, "one run, then a rerun")
    check_rows(whole, listed, first_rows, expect={k: e for k, (_, e) in files.items()})
    check_rows(whole, listed, second_rows, done=done_keys(first_rows), done_earlier=second["done_earlier"])
    check_outputs(whole, output, first_rows + second_rows, options)
    check_not_redone(whole, first_rows, second_rows)
    check_unchanged(whole, inputs, snapshot(source, options), "inputs")
    check_unchanged(whole, elsewhere, local_tree(tmp_path, skip=(tmp_path / "out",)), "outside the root")
    check_processes(whole, restore_workers())
    check_secret(whole, secret, [tmp_path, _prefect_home()])
    if options:
        for url in storage.list_files(output, options):
            if secret.encode() in storage.read_bytes(url, options):
                whole.fail("secrets_at_rest", f"the secret is in {url}")
    assert whole.listed == len(files), f"listed {whole.listed} of {len(files)}: {sorted(set(files) - listed)}"

    # One ledger line per case: its own file's part of the invariants.
    for case, name, what, group in cases:
        outcome = Outcome(case, group, backend, what)
        check_rows(outcome, {name}, [r for r in first_rows if r["image_key"] == name], expect={name: files[name][1]})
        mine_first = [r for r in first_rows if r["image_key"] == name]
        check_rows(outcome, {name}, [r for r in second_rows if r["image_key"] == name], done=done_keys(mine_first))
        ok = [r for r in first_rows + second_rows if r["image_key"] == name]
        check_outputs_of(outcome, output, ok, options)
        check_not_redone(outcome, [r for r in first_rows if r["image_key"] == name], ok[1:])
        if outcome.passed and ok and ok[0]["status"] == "error":
            outcome.notes.append(ok[0]["error"])
        ledger(outcome)
    ledger(whole)


def check_outputs_of(outcome: Outcome, output: str, rows: list[dict], options: dict | None) -> None:
    """The output of one input's ok row exists and decodes."""
    import dipcore

    for row in rows:
        if row["status"] == "ok":
            try:
                dipcore.decode_image(storage.read_bytes(row["output_uri"], options))
            except Exception as exc:  # noqa: BLE001 - any failure to read it back is the finding
                outcome.fail("outputs_corrupt", f"{row['image_key']!r}: {exc}")
