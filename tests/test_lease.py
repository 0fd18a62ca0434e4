"""One writer per output root (issue 12, item 5), on local files and the moto S3 server: the lease is taken
atomically, a second run is refused naming the holder while the first goes on, a stale lease is taken over, the
lease is released however a run ends."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from pipelines import lease, storage
from pipelines.errors import LeaseHeldError, LeaseLostError
from pipelines.reporting import reports

FAST = {"preset": "fast", "iterations": 2, "channels": 8}
INLINE = {"executor": "inline"}


def test_create_exclusive_creates_once(where):
    root, so = where
    uri = f"{root}/x/lease.json"
    assert storage.create_exclusive(uri, b"first", so) is True
    assert storage.create_exclusive(uri, b"second", so) is False
    assert storage.read_bytes(uri, so) == b"first"
    storage.remove_file(uri, so)
    storage.remove_file(uri, so)  # not there: no error
    assert storage.create_exclusive(uri, b"third", so) is True
    memory = f"memory://lease-{uuid.uuid4().hex}/l.json"
    assert storage.create_exclusive(memory, b"1") is True
    assert storage.create_exclusive(memory, b"2") is False


def test_a_second_holder_is_refused_and_the_first_keeps_it(where):
    root, so = where
    out = f"{root}/out"
    first = lease.Lease.acquire(out, so, run_id="run-1", flow_run_id="fr-1")
    with pytest.raises(LeaseHeldError) as refused:
        lease.Lease.acquire(out, so, run_id="run-2")
    message = str(refused.value)
    assert "run run-1, flow run fr-1 on host" in message and "--break-lease" in message and "600 s" in message
    assert first.refresh() is True and lease.read_lease(out, so)["owner"]["run_id"] == "run-1"
    first.release()
    assert lease.read_lease(out, so) is None
    second = lease.Lease.acquire(out, so, run_id="run-2")  # free again
    second.release()


def test_the_heartbeat_refreshes_and_a_stale_lease_is_taken_over(where):
    root, so = where
    out = f"{root}/out"
    with lease.hold(out, so, run_id="run-1", stale_after=60, heartbeat=0.05) as held:
        beat = held.payload["started_at"]
        deadline = time.monotonic() + 10
        while lease.read_lease(out, so)["heartbeat_at"] == beat and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.read_lease(out, so)["heartbeat_at"] > beat
    assert lease.read_lease(out, so) is None

    dead = lease.Lease.acquire(out, so, run_id="dead-run", stale_after=60)  # its process died: no more heartbeats
    old = (datetime.now(UTC) - timedelta(seconds=61)).isoformat()
    storage.write_bytes_atomic(dead.uri, json.dumps({**dead.payload, "heartbeat_at": old}).encode(), so)
    warnings: list[str] = []
    taker = lease.Lease.acquire(out, so, run_id="run-3", warn=warnings.append)
    assert len(warnings) == 1 and "no heartbeat for 61 s" in warnings[0] and "dead-run" in warnings[0]
    assert lease.read_lease(out, so)["owner"]["run_id"] == "run-3"
    assert dead.refresh() is False and dead.lost  # the old holder, if it were alive, sees it lost the lease
    dead.release()  # does not delete the new holder's lease
    assert lease.read_lease(out, so)["owner"]["run_id"] == "run-3"
    taker.release()


def test_break_lease_and_an_unreadable_lease(where):
    root, so = where
    out = f"{root}/out"
    held = lease.Lease.acquire(out, so, run_id="run-1")
    warnings: list[str] = []
    breaker = lease.Lease.acquire(out, so, run_id="run-2", break_lease=True, warn=warnings.append)
    assert "break" in warnings[0] and "run-1" in warnings[0]
    assert held.refresh() is False
    breaker.release()
    storage.write_bytes_atomic(lease.lease_uri(out, breaker.generation), b"\x00garbage", so)
    with pytest.raises(LeaseHeldError, match="an unreadable lease"):
        lease.Lease.acquire(out, so, run_id="run-3")
    lease.Lease.acquire(out, so, run_id="run-3", break_lease=True, warn=warnings.append).release()


def test_hold_releases_on_error_and_interrupt(where):
    root, so = where
    out = f"{root}/out"
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), lease.hold(out, so, run_id="r"):
            assert lease.read_lease(out, so)["owner"]["run_id"] == "r"
            raise exc
        assert lease.read_lease(out, so) is None


@pytest.mark.usefixtures("prefect_harness")
def test_two_runs_into_one_output_root(where, write_images, monkeypatch):
    """The second run, started while the first restores, is refused at once and writes nothing; the first
    finishes unaffected and releases the lease; a failed run releases it too."""
    from pipelines import flows
    from pipelines.execution import workers

    root, so = where
    src, out = f"{root}/src", f"{root}/out"
    write_images(src, ["a.png", "b.png"], size=16, storage_options=so)
    second: dict = {}
    real = workers.run_inline

    def run_inline(todo, **kw):  # the first run, mid-way: a second run into the same output
        def other() -> None:
            try:
                second["summary"] = flows.restore_dataset(
                    src, out, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so
                )
            except Exception as exc:  # noqa: BLE001
                second["error"] = exc

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=300)
        assert not thread.is_alive()
        return real(todo, **kw)

    monkeypatch.setattr(workers, "run_inline", run_inline)
    first = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so)
    assert (first["ok"], first["error"]) == (2, 0), first["failures"]
    assert isinstance(second.get("error"), LeaseHeldError), second
    assert f"run {first['run_id']}" in str(second["error"]) and "--break-lease" in str(second["error"])
    assert set(reports.read_report(out, so).column("run_id").to_pylist()) == {first["run_id"]}  # one run's rows
    assert lease.read_lease(out, so) is None  # released at the end

    def fail(todo, **kw):
        raise RuntimeError("the workers fell over")

    monkeypatch.setattr(workers, "run_inline", fail)
    with pytest.raises(RuntimeError, match="fell over"):
        flows.restore_dataset(
            src, out, {"task": "denoise", **FAST}, execution=INLINE, options={"resume": False}, storage_options=so
        )
    assert lease.read_lease(out, so) is None  # released on error

    stale = lease.Lease.acquire(out, so, run_id="killed-run", stale_after=60)  # a run that is gone (SIGKILL)
    with pytest.raises(LeaseHeldError, match="killed-run"):
        flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so)
    monkeypatch.setattr(workers, "run_inline", real)
    taken = flows.restore_dataset(
        src, out, {"task": "denoise", **FAST}, execution=INLINE, options={"break_lease": True}, storage_options=so
    )
    assert taken["skipped"] == 2 and lease.read_lease(out, so) is None
    assert stale.refresh() is False


def test_cli_names_the_holder_and_the_override(tmp_path, write_images, capsys, monkeypatch):
    from pipelines import cli, flows

    seen: dict = {}
    monkeypatch.setattr(flows, "restore_dataset", lambda **params: seen.update(params) or {"failures": [], "error": 0})
    argv = ["restore", "src", "-o", "out", "--task", "denoise", "--json", "--quiet"]
    assert cli.main([*argv, "--break-lease", "--lease-stale-after", "120"]) == 0
    assert (seen["options"].break_lease, seen["options"].lease_stale_after) == (True, 120.0)
    seen.clear()
    assert cli.main(argv) == 0 and seen["options"].model_fields_set == set()  # the flow's defaults

    def held(**params):
        raise LeaseHeldError("the output out is in use: run r1 … or at once with --break-lease")

    monkeypatch.setattr(flows, "restore_dataset", held)
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("dipflow: error: the output out is in use") and "--break-lease" in err


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="reads process identities from /proc (Linux)")
def test_a_lease_whose_process_on_this_machine_is_gone_is_taken_over_at_once(tmp_path):
    """A `kill -9` leaves the lease behind; on the machine that held it, the rerun sees its process gone (pid and
    start time) and need not wait for the heartbeat to go stale. A live holder is still refused."""
    import subprocess
    import sys

    out = str(tmp_path / "out")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held = lease.Lease.acquire(out, run_id="killed-run", stale_after=600)
    namespace = os.stat("/proc/self/ns/pid").st_ino  # this machine's, as the dead holder's was
    payload = {**held.payload, "owner": {**held.payload["owner"], "pid": int(gone.stdout), "process": f"{namespace}:1"}}
    storage.write_bytes_atomic(held.uri, json.dumps(payload).encode())
    warnings: list[str] = []
    taken = lease.Lease.acquire(out, run_id="rerun", stale_after=600, warn=warnings.append)
    assert len(warnings) == 1 and "its process on this machine is gone" in warnings[0] and "killed-run" in warnings[0]
    with pytest.raises(LeaseHeldError, match="rerun"):  # this process is alive: its lease holds
        lease.Lease.acquire(out, run_id="third", stale_after=600)
    taken.release()


def test_the_chain_takes_the_next_generation_and_a_holder_taken_over_stops(where):
    """Each take creates the next generation; a released lease stays as the chain's last, so its name is never
    created again; the winner deletes the generations below it; a holder taken over raises `LeaseLostError`
    naming the new holder once its heartbeat has seen it, and leaves the new holder's lease alone."""
    root, so = where
    out = f"{root}/out"
    first = lease.Lease.acquire(out, so, run_id="run-1")
    first.release()
    assert lease.read_lease(out, so) is None  # released: free
    second = lease.Lease.acquire(out, so, run_id="run-2", stale_after=60)
    assert (first.generation, second.generation) == (1, 2)
    assert [u.rpartition("/")[2] for u in storage.list_files(f"{out}/{lease.LEASE_FOLDER}", so)] == [
        "000000000002.json"
    ]
    second.check()  # still its own: nothing raised
    breaker = lease.Lease.acquire(out, so, run_id="run-3", break_lease=True, warn=lambda m: None)
    assert breaker.generation == 3
    assert second.refresh() is False and second.lost
    with pytest.raises(LeaseLostError, match=r"taken over by run run-3 on host .*stopped"):
        second.check()
    assert LeaseLostError.exit_code == 4
    second.release()
    assert lease.read_lease(out, so)["token"] == breaker.token
    breaker.release()


def test_a_conditional_put_that_lost_a_race_409_is_refused_naming_the_winner(tmp_path, monkeypatch):
    """AWS S3 answers a conditional PUT racing another for the same name with 409 ConditionalRequestConflict: that
    run lost the race, and is refused naming the winner (not failed with a storage error)."""
    out = str(tmp_path / "out")
    real = storage.create_exclusive

    def racing(uri, data, so=None):  # the other run's PUT lands first; ours gets 409
        monkeypatch.setattr(storage, "create_exclusive", real)
        lease.Lease.acquire(out, run_id="winner")
        raise storage.StorageError(f"writing {uri} failed: ConditionalRequestConflict (HTTP 409)")

    monkeypatch.setattr(storage, "create_exclusive", racing)
    with pytest.raises(LeaseHeldError, match="run winner"):
        lease.Lease.acquire(out, run_id="loser")
