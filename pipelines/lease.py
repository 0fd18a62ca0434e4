"""One writer per output root: the lease a run holds on its output root while it runs.

The lease is one small JSON object, ``<output>/_dipflow/lease.json``: who holds it (host, pid, run id, flow run id,
a random token), when the run started, and a heartbeat the holder refreshes every `heartbeat` seconds from a daemon
thread. A run takes it before it lists or plans anything, and a second run into the same output root is refused at
once (`LeaseHeldError`, naming the holder). The holder deletes it when the run ends — done, failed or interrupted
(Ctrl-C, SIGTERM); a run killed outright (SIGKILL, a lost machine) leaves it behind, and once its heartbeat is older
than `stale_after` seconds the next run takes it over with a warning. ``break_lease=True`` (``--break-lease``) takes
over a lease that is not stale yet: for a holder known to be dead, sooner.

Taken atomically where the store allows it (`storage.create_exclusive`): local files by a hard link that fails when
the name exists, S3 by a conditional PUT (``If-None-Match: *``), memory:// in one process; elsewhere a check, a write
and a read-back, which two runs starting within the same moment can both pass. Every take is read back, and the
heartbeat reads before it writes: a holder whose lease was taken over stops refreshing it and logs that it is no
longer the only writer. Staleness compares the holder's heartbeat clock with the reader's: clocks must agree to well
within `stale_after`. Pure Python over `pipelines.storage`: no Prefect, no Ray.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pipelines import storage
from pipelines.errors import LeaseHeldError

__all__ = ["DEFAULT_STALE_AFTER", "LEASE_KEY", "Lease", "LeaseHeldError", "hold", "lease_uri", "read_lease"]

LEASE_KEY = "_dipflow/lease.json"
"""Where the lease lies under an output root. ``_dipflow/`` is a dipflow folder (`storage.DIPFLOW_FOLDERS`): never
an output, a report part nor an input (a listing leaves an output root inside its source out)."""

DEFAULT_STALE_AFTER = 600.0
"""Seconds without a heartbeat after which a lease is stale: taken over by the next run, with a warning."""

_log = logging.getLogger("dipflow.lease")


def lease_uri(output: str) -> str:
    return storage.join(output, LEASE_KEY)


def _now() -> datetime:
    return datetime.now(UTC)


def read_lease(output: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The lease on `output` as written (None: no lease; ``{}``: an object that is not a readable lease)."""
    try:
        data = storage.read_bytes(lease_uri(output), storage_options)
    except storage.StorageNotFoundError:
        return None
    try:
        lease = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return lease if isinstance(lease, dict) else {}


def _age(lease: dict[str, Any]) -> float | None:
    """Seconds since the lease's last heartbeat (None: unreadable)."""
    try:
        return (_now() - datetime.fromisoformat(lease["heartbeat_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _process_identity(pid: int) -> str | None:
    """What tells a process apart on this machine beyond its pid (which the kernel reuses): its pid namespace and
    its start time, from /proc (Linux); None elsewhere."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        started = stat[stat.rindex(b")") + 2 :].split()[19].decode()  # field 22: start time in clock ticks
    except (OSError, IndexError, ValueError):
        return None
    return f"{namespace}:{started}"


def _holder_is_dead(lease: dict[str, Any]) -> bool:
    """Whether the holder ran on this machine, in this pid namespace, and that process is gone (a `kill -9`, a
    crash): its lease need not wait out `stale_after`. Unknown (another machine, no /proc): not dead."""
    owner = lease.get("owner") or {}
    identity = owner.get("process")
    if not identity or owner.get("host") != socket.gethostname():
        return False
    if identity.split(":", 1)[0] != str(os.stat("/proc/self/ns/pid").st_ino):
        return False
    return _process_identity(int(owner.get("pid") or 0)) != identity


def _describe(lease: dict[str, Any]) -> str:
    if not lease:
        return "an unreadable lease"
    owner = lease.get("owner") or {}
    age = _age(lease)
    flow_run = f", flow run {owner['flow_run_id']}" if owner.get("flow_run_id") else ""
    beat = f"{age:.0f} s ago" if age is not None else "unknown"
    return (
        f"run {owner.get('run_id')}{flow_run} on host {owner.get('host')} (pid {owner.get('pid')}), "
        f"started {lease.get('started_at')}, last heartbeat {beat}"
    )


class Lease:
    """A held lease: `refresh` it (the heartbeat thread does), `release` it when the run ends."""

    def __init__(self, output: str, storage_options: dict | None, payload: dict[str, Any], *, heartbeat: float) -> None:
        self.output, self.storage_options, self.payload = output, storage_options, payload
        self.uri = lease_uri(output)
        self.token: str = payload["token"]
        self.heartbeat = heartbeat
        self.lost = False  # taken over by another run while this one held it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(
        cls,
        output: str,
        storage_options: dict | None = None,
        *,
        run_id: str,
        flow_run_id: str | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
        heartbeat: float | None = None,
        break_lease: bool = False,
        warn: Callable[[str], None] = _log.warning,
    ) -> Lease:
        """Take the lease on `output`, or raise `LeaseHeldError` naming its holder. A stale lease (no heartbeat
        for `stale_after` seconds), an unreadable one that old, or any with `break_lease`, is taken over (`warn`
        says from whom). The heartbeat thread is not started: `start` (or `hold`) does."""
        now = _now().isoformat()
        payload = {
            "owner": {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "process": _process_identity(os.getpid()),
                "run_id": run_id,
                "flow_run_id": flow_run_id,
            },
            "token": uuid.uuid4().hex,
            "started_at": now,
            "heartbeat_at": now,
            "stale_after_s": stale_after,
        }
        lease = cls(output, storage_options, payload, heartbeat=heartbeat or min(30.0, stale_after / 4))
        for attempt in range(2):
            # Read back: a store that ignored the condition, or a best-effort one, keeps the last writer's.
            if storage.create_exclusive(lease.uri, lease._encode(), storage_options) and lease._mine():
                return lease
            held = read_lease(output, storage_options)
            if held is None:  # released between our try and our read: try again
                continue
            if held.get("token") == lease.token:  # created after all (NFS: a retransmitted link says EEXIST)
                return lease
            age = _age(held)
            stale = age is not None and age > float(held.get("stale_after_s") or stale_after)
            dead = _holder_is_dead(held)
            if attempt == 0 and (break_lease or stale or dead):
                why = (
                    "--break-lease / break_lease=True"
                    if break_lease
                    else f"no heartbeat for {age:.0f} s"
                    if stale
                    else "its process on this machine is gone"
                )
                warn(f"taking over the lease on {storage.redact(output)} ({why}) from {_describe(held)}")
                storage.remove_file(lease.uri, storage_options)
                continue
            raise LeaseHeldError(
                f"the output {storage.redact(output)} is in use: {_describe(held)}. One run writes to an output "
                f"root at a time; wait for that run to end, or write elsewhere. If it is dead, its lease "
                f"({storage.redact(lease.uri)}) is taken over once it has had no heartbeat for "
                f"{float(held.get('stale_after_s') or stale_after):.0f} s, or at once with --break-lease "
                "(flow parameter break_lease=True)"
            )
        raise LeaseHeldError(f"could not take the lease on {storage.redact(output)}: another run keeps taking it")

    def _encode(self) -> bytes:
        return json.dumps(self.payload, indent=1).encode("utf-8")

    def _mine(self) -> bool:
        held = read_lease(self.output, self.storage_options)
        return bool(held) and held.get("token") == self.token

    def refresh(self) -> bool:
        """One heartbeat: False (and `lost` set) when the lease is no longer this run's."""
        if self.lost:
            return False
        if not self._mine():
            self.lost = True
            _log.error(
                "the lease on %s was taken over by another run: this run is no longer the only writer of its "
                "output root",
                storage.redact(self.output),
            )
            return False
        self.payload["heartbeat_at"] = _now().isoformat()
        storage.write_bytes_atomic(self.uri, self._encode(), self.storage_options)
        return True

    def start(self) -> None:
        """Refresh the heartbeat every `heartbeat` seconds on a daemon thread until `release`."""

        def beat() -> None:
            while not self._stop.wait(self.heartbeat):
                try:
                    if not self.refresh():
                        return
                except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried; the run goes on
                    _log.warning("lease heartbeat on %s failed: %s", storage.redact(self.output), exc)

        self._thread = threading.Thread(target=beat, name="dipflow-lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with contextlib.suppress(Exception):  # best effort: a lease left behind goes stale
            if not self.lost and self._mine():
                storage.remove_file(self.uri, self.storage_options)


@contextlib.contextmanager
def hold(output: str, storage_options: dict | None = None, **acquire: Any) -> Iterator[Lease]:
    """``with hold(output, run_id=…):`` the lease on `output`, its heartbeat running, released however the block
    ends (an error, KeyboardInterrupt and SIGTERM included)."""
    lease = Lease.acquire(output, storage_options, **acquire)
    try:
        lease.start()
        yield lease
    finally:
        lease.release()
