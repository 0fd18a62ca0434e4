"""Two writers on one output root (issue 25, item 4). Runs racing for one lease — six processes at once, twenty times,
on local files and on the moto S3 server, the lease before them stale, its holder's process gone, released or none
— end with exactly one holder, and every other is refused naming it; a takeover says so once, naming the previous
holder and its heartbeat's age. A run whose lease another run takes over mid-run writes nothing more (no row, no
state, no runs-table row, no further output) and `dipflow restore` exits 4 with one line naming the new holder; once
that holder is gone, a rerun finishes every image."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from invariants import Outcome, check_outputs, check_rows, readable
from lease_race import Contenders

from pipelines import lease, storage
from pipelines.reporting import reports, runs

CONTENDERS, TRIALS = 6, 20
BEFORE = ("stale", "dead", "released", "none")  # what the runs find: a lease stale, of a gone process, released, none
KEYS = ("a.png", "b.png", "c.png")
FAST = ["--task", "denoise", "--preset", "fast", "--iterations", "2", "--channels", "4", "--quiet", "--pack", "1"]


def _leave(before: str, out: str, so: dict | None) -> None:
    """What the last run left on `out`: a lease whose heartbeat is 61 s old (stale after 60), one whose process on
    this machine is gone, a released one, or nothing."""
    if before == "none":
        return
    held = lease.Lease.acquire(out, so, run_id="previous-run", stale_after=60)
    if before == "released":
        held.release()
        return
    payload = dict(held.payload)
    if before == "stale":
        payload["heartbeat_at"] = (datetime.now(UTC) - timedelta(seconds=61)).isoformat()
    else:  # a process that has ended: its pid (maybe reused since) with a start time no process has
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        namespace = os.stat("/proc/self/ns/pid").st_ino
        payload["owner"] = {**payload["owner"], "pid": int(gone.stdout), "process": f"{namespace}:1"}
    storage.write_bytes_atomic(held.uri, json.dumps(payload).encode(), so)


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="a gone holder is told from /proc (Linux)")
def test_runs_racing_for_one_lease_end_with_one_holder(where, request, ledger):
    root, so = where
    backend = request.node.callspec.id
    outcome = Outcome(
        f"lease raced by {CONTENDERS} runs",
        "two writers",
        backend,
        f"{CONTENDERS} processes take one output root's lease at once, {TRIALS} times (before them: a stale lease, "
        "one whose process is gone, a released one, none)",
    )
    started = time.monotonic()
    with Contenders(CONTENDERS, so, warm=root) as race:
        for trial in range(TRIALS):
            before, out = BEFORE[trial % len(BEFORE)], f"{root}/trial-{trial}"
            _leave(before, out, so)
            got = race(out)
            holders = [i for i, (what, _, _) in enumerate(got) if what == "holds"]
            if len(holders) != 1:
                outcome.fail("expected_missed", f"trial {trial} ({before}): {len(holders)} holders")
                continue
            winner = f"run contender-{holders[0]}"
            held = lease.read_lease(out, so) or {}
            if held.get("token") != got[holders[0]][1]:
                outcome.fail("expected_missed", f"trial {trial} ({before}): the lease is not the winner's")
            for what, said, _ in got:
                if what == "refused" and not readable(said):
                    outcome.fail("unreadable_errors", f"trial {trial}: {said!r}")
                elif what == "refused" and winner not in said:
                    outcome.fail("expected_missed", f"trial {trial} ({before}): refused without naming {winner}")
            warned = [w for _, _, warnings in got for w in warnings]
            wanted = 1 if before in ("stale", "dead") else 0
            if len(warned) != wanted or any("previous-run" not in w or "last heartbeat" not in w for w in warned):
                outcome.fail("expected_missed", f"trial {trial} ({before}): {len(warned)} takeover lines: {warned}")
    outcome.notes.append(f"{TRIALS} trials in {time.monotonic() - started:.0f} s")
    ledger(outcome)


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_whose_lease_is_taken_over_stops_writing_and_says_who_took_it(write_images, capsys, monkeypatch, ledger):
    from pipelines import cli
    from pipelines.execution import workers

    root = f"memory://lease-{uuid.uuid4().hex}"
    src, out = f"{root}/src", f"{root}/out"
    write_images(src, list(KEYS), size=16)
    outcome = Outcome(
        "lease taken over mid-run",
        "two writers",
        "memory:// + Prefect",
        "a stale lease taken over by `dipflow restore`, whose lease another run then breaks after its first image",
    )
    _leave("stale", out, None)
    batches: list[list[str]] = []
    usurper: dict = {}
    noticed = threading.Event()
    real, real_refresh = workers.Restorer.run_batch, lease.Lease.refresh

    def refresh(self):  # the heartbeat, telling the test when it found the lease taken
        mine = real_refresh(self)
        if not mine:
            noticed.set()
        return mine

    def run_batch(self, batch, pack):  # the first image done, its row not yet recorded: another run takes over
        outcomes = real(self, batch, pack)
        batches.append([job.key for job in batch])
        if len(batches) == 1:
            usurper["lease"] = lease.Lease.acquire(out, run_id="usurper", break_lease=True, warn=lambda m: None)
            noticed.wait(30)  # the holder's heartbeat (every 0.1 s) finds it
        return outcomes

    monkeypatch.setattr(workers.Restorer, "run_batch", run_batch)
    monkeypatch.setattr(lease.Lease, "refresh", refresh)
    capsys.readouterr()
    code = cli.main(["restore", src, "-o", out, *FAST, "--lease-stale-after", "0.4"])
    err = capsys.readouterr().err.strip().splitlines()
    if code != 4:
        outcome.fail("expected_missed", f"exit {code}, not 4: {err}")
    takeover = [line for line in err if line.startswith("dipflow: warning: taking over the lease")]
    said_who = len(takeover) == 1 and "previous-run" in takeover[0]
    if not said_who or not re.search(r"last heartbeat 6\d s ago", takeover[0]):
        outcome.fail("expected_missed", f"the takeover is not one line naming previous-run and its heartbeat: {err}")
    lost = [line for line in err if line.startswith("dipflow: error:")]
    if len(lost) != 1 or "taken over by run usurper" not in lost[0] or len(err) != 2:
        outcome.fail("expected_missed", f"the stop is not one line naming the usurper: {err}")
    if len(batches) != 1:
        outcome.fail("expected_missed", f"jobs went on after the takeover: {batches}")
    if reports.read_report(out).num_rows or storage.list_files(f"{out}/_dipflow/state") or runs.read_runs(out).num_rows:
        outcome.fail("expected_missed", "the stopped run wrote rows, state or its runs-table row after the takeover")
    outputs = [u for u in storage.list_files(out) if u.endswith(".png")]
    if len(outputs) > 1:
        outcome.fail("outputs_corrupt", f"outputs written after the takeover: {outputs}")
    if (lease.read_lease(out) or {}).get("token") != usurper["lease"].token:
        outcome.fail("expected_missed", "the usurper's lease did not survive the stopped run")

    usurper["lease"].release()  # the other run ends: a rerun finishes everything, the first image's output included
    monkeypatch.setattr(workers.Restorer, "run_batch", real)
    code = cli.main(["restore", src, "-o", out, *FAST, "--json"])
    if code != 0:
        outcome.fail("expected_missed", f"the rerun exited {code}: {capsys.readouterr().err}")
    rows = reports.read_report(out).to_pylist()
    check_rows(outcome, set(KEYS), rows, expect=dict.fromkeys(KEYS, "ok"))
    check_outputs(outcome, out, rows)
    ledger(outcome)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "ray_local")
def test_a_ray_run_whose_lease_is_taken_over_stops_within_a_turn_of_its_loop(tmp_path, write_images, ledger):
    """The same on Ray: the driver's ``ray.wait`` loop checks the lease on every turn (1 s), so the jobs still queued
    never start and nothing more is recorded."""
    from pipelines import flows
    from pipelines.errors import LeaseLostError

    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    keys = [f"img{i}.png" for i in range(8)]
    write_images(src, keys, size=16)
    outcome = Outcome(
        "lease taken over mid-run",
        "two writers",
        "local + Ray + Prefect",
        "another run breaks the lease of a run on Ray once its first output is written",
    )
    usurper: dict = {}

    def usurp() -> None:  # once the first image is written, another run takes the output root over
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(u.endswith(".png") for u in storage.list_files(out)):
            time.sleep(0.05)
        usurper["lease"] = lease.Lease.acquire(out, run_id="usurper", break_lease=True, warn=lambda m: None)

    thread = threading.Thread(target=usurp)
    thread.start()
    settings = {"task": "denoise", "preset": "fast", "iterations": 300, "channels": 4}
    stale = {"lease_stale_after": 0.4}
    try:
        flows.restore_dataset(src, out, settings, execution={"num_workers": 1, "pack": 1}, options=stale)
        outcome.fail("expected_missed", "the run finished although its lease was taken over")
    except LeaseLostError as exc:
        if "taken over by run usurper" not in str(exc) or not readable(str(exc)):
            outcome.fail("unreadable_errors", f"the stop does not name the usurper in one line: {exc}")
    thread.join()
    outputs = [u for u in storage.list_files(out) if u.endswith(".png")]
    if len(outputs) >= len(keys):
        outcome.fail("expected_missed", f"every job ran although the lease was taken over: {len(outputs)} outputs")
    if reports.read_report(out).num_rows or storage.list_files(f"{out}/_dipflow/state") or runs.read_runs(out).num_rows:
        outcome.fail("expected_missed", "the stopped run wrote rows, state or its runs-table row after the takeover")
    outcome.notes.append(f"{len(outputs)} of {len(keys)} outputs written before it stopped")

    usurper["lease"].release()
    flows.restore_dataset(src, out, {**settings, "iterations": 2}, execution={"num_workers": 1}, options=stale)
    rows = reports.read_report(out).to_pylist()
    check_rows(outcome, set(keys), rows, expect=dict.fromkeys(keys, "ok"))
    check_outputs(outcome, out, rows)
    ledger(outcome)
