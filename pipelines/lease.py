"""One writer per output root: the lease a run holds on its output root while it runs.

The lease is a chain of small JSON objects, ``<output>/_dipflow/lease/<generation>.json`` (12 digits): each says who
held that generation (host, pid, run id, flow run id, a random token), when the run started, and a heartbeat the
holder rewrites every `heartbeat` seconds from a daemon thread. The lease is the highest generation there. A run
takes generation n+1 by creating its object exclusively (`storage.create_exclusive`), and only when generation n
is free (released by its holder, or none yet), stale (no heartbeat for `stale_after` seconds), its holder's process
on this machine is gone (a ``kill -9``), or with ``break_lease=True`` (``--break-lease``); anything else is refused
at once (`LeaseHeldError`, naming the holder). So of any number of runs that saw generation n and contend for it,
exactly one creates n+1 — where creation is atomic — and the rest read the winner's fresh lease and are refused.
A name is never created twice while the chain lasts (a released lease stays, marked ``released_at``, and the next
run takes the next generation), so a late writer cannot mistake a newer holder's object for its own; the winner
deletes the generations below its own. A takeover calls `warn` once, naming the previous holder and the age of its
heartbeat.

A holder is the holder while its generation is the highest and holds its token. The heartbeat checks that before
each refresh; once it is not (taken over), `lost` is set, the heartbeat stops, and `check` raises `LeaseLostError`
naming the new holder: the run calls it before each write and in its driver loop, and stops. Between a takeover and
the old holder's next heartbeat (`heartbeat` seconds, 30 by default) the old holder may still write: a takeover is
meant for a holder that is dead or stuck, whose heartbeat is `stale_after` (600 s) old.

What each store gives (`storage.create_exclusive`):

- local files and POSIX shared filesystems: a hard link that fails when the name exists — atomic (NFS: a
  retransmitted link that says "exists" after it succeeded is recognised by the token read back);
- S3: a PUT with ``If-None-Match: *`` (s3fs ``mode="create"``), atomic on AWS S3 (a PUT racing another for the
  name may get 409 ConditionalRequestConflict: it lost); the moto server honours it (tested with racing processes);
  an S3-compatible store that ignores the header lets the last writer win, and the read-back of the token then
  refuses the others unless both read before either wrote;
- memory://: a check then a write, in one process;
- elsewhere (GCS, Azure, sftp …): a best effort — a check, a write, and the read-back.

Staleness compares the holder's heartbeat clock with the reader's: clocks must agree to well within `stale_after`.
Pure Python over `pipelines.storage`: no Prefect, no Ray.
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
from pipelines.errors import LeaseHeldError, LeaseLostError
from pipelines.settings import DEFAULT_STALE_AFTER

__all__ = [
    "DEFAULT_STALE_AFTER",
    "LEASE_FOLDER",
    "Lease",
    "LeaseHeldError",
    "LeaseLostError",
    "hold",
    "lease_uri",
    "read_lease",
]

LEASE_FOLDER = "_dipflow/lease"
"""Where the lease's generations lie under an output root. ``_dipflow/`` is a dipflow folder
(`storage.DIPFLOW_FOLDERS`): never an output, a report part nor an input (a listing leaves an output root inside its
source out)."""

_log = logging.getLogger("dipflow.lease")


def lease_uri(output: str, generation: int) -> str:
    """The object of the lease's `generation` on `output`."""
    return storage.join(output, LEASE_FOLDER, f"{generation:012d}.json")


def _now() -> datetime:
    return datetime.now(UTC)


def _generations(output: str, storage_options: dict | None) -> list[int]:
    """The generations claimed on `output`, lowest first (a fresh listing)."""
    found = []
    for uri in storage.list_files(storage.join(output, LEASE_FOLDER), storage_options, suffix=".json"):
        name = uri.rpartition("/")[2].removesuffix(".json")
        if name.isdigit():
            found.append(int(name))
    return sorted(found)


def _read(uri: str, storage_options: dict | None) -> dict[str, Any] | None:
    """The lease object at `uri` (None: not there; ``{}``: not a readable lease)."""
    try:
        data = storage.read_bytes(uri, storage_options)
    except storage.StorageNotFoundError:
        return None
    try:
        lease = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return lease if isinstance(lease, dict) else {}


def _current(output: str, storage_options: dict | None) -> tuple[int, dict[str, Any] | None]:
    """The highest generation on `output` (0: none) and its object as `_read` gives it."""
    generations = _generations(output, storage_options)
    if not generations:
        return 0, None
    top = generations[-1]
    return top, _read(lease_uri(output, top), storage_options)


def read_lease(output: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The lease held on `output` (None: none, or released; ``{}``: an object that is not a readable lease)."""
    _, held = _current(output, storage_options)
    return None if held is None or held.get("released_at") else held


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


def _describe(lease: dict[str, Any] | None) -> str:
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
    """A held lease: `refresh` it (the heartbeat thread does), `check` it before writing, `release` it when the
    run ends."""

    def __init__(self, output: str, storage_options: dict | None, payload: dict[str, Any], *, heartbeat: float) -> None:
        self.output, self.storage_options, self.payload = output, storage_options, payload
        self.generation: int = payload["generation"]
        self.uri = lease_uri(output, self.generation)
        self.token: str = payload["token"]
        self.heartbeat = heartbeat
        self.lost = False  # taken over by another run while this one held it
        self.taken_by: dict[str, Any] | None = None  # the lease that took it over, as read when that was seen
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
        for `stale_after` seconds), one whose process on this machine is gone, or any with `break_lease`, is taken
        over, and `warn` says once from whom. The heartbeat thread is not started: `start` (or `hold`) does."""
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
        beat = heartbeat or min(30.0, stale_after / 4)
        for attempt in range(3):
            top, held = _current(output, storage_options)
            why = None
            if held is not None and not held.get("released_at"):
                age = _age(held)
                stale = age is not None and age > float(held.get("stale_after_s") or stale_after)
                # Only what was seen first is taken over: a lease a contender took meanwhile is fresh and held.
                if attempt > 0 or not (break_lease or stale or _holder_is_dead(held)):
                    raise LeaseHeldError(
                        f"the output {storage.redact(output)} is in use: {_describe(held)}. One run writes to an "
                        f"output root at a time; wait for that run to end, or write elsewhere. If it is dead, its "
                        f"lease ({storage.redact(lease_uri(output, top))}) is taken over once it has had no heartbeat "
                        f"for {float(held.get('stale_after_s') or stale_after):.0f} s, or at once with --break-lease "
                        "(flow parameter break_lease=True)"
                    )
                why = (
                    "--break-lease / break_lease=True"
                    if break_lease
                    else f"no heartbeat for {age:.0f} s"
                    if stale
                    else "its process on this machine is gone"
                )
            lease = cls(output, storage_options, {**payload, "generation": top + 1}, heartbeat=beat)
            # Read back: a store that ignored the condition, or a best-effort one, keeps the last writer's; on NFS a
            # retransmitted link may say "exists" although it was ours.
            try:
                storage.create_exclusive(lease.uri, lease._encode(), storage_options)
            except storage.StorageError as exc:  # S3's 409: a conditional PUT racing another for the name
                if "ConditionalRequestConflict" not in str(exc):
                    raise
            if lease._mine():
                if why is not None:
                    warn(f"taking over the lease on {storage.redact(output)} ({why}) from {_describe(held)}")
                lease._forget_older()
                return lease
        raise LeaseHeldError(f"could not take the lease on {storage.redact(output)}: other runs keep taking it")

    def _encode(self) -> bytes:
        return json.dumps(self.payload, indent=1).encode("utf-8")

    def _mine(self) -> bool:
        """Whether this generation is the highest on the output and holds this run's token."""
        top, held = _current(self.output, self.storage_options)
        return top == self.generation and bool(held) and held.get("token") == self.token

    def _forget_older(self) -> None:
        """Delete the generations below this one (best effort: any left behind are below the lease, hence inert)."""
        with contextlib.suppress(Exception):
            for generation in _generations(self.output, self.storage_options):
                if generation < self.generation:
                    storage.remove_file(lease_uri(self.output, generation), self.storage_options)

    def refresh(self) -> bool:
        """One heartbeat: False (and `lost` set) when the lease is no longer this run's."""
        if self.lost:
            return False
        if not self._mine():
            self.taken_by = read_lease(self.output, self.storage_options)
            self.lost = True
            _log.error(
                "the lease on %s was taken over by %s: this run stops writing to its output root",
                storage.redact(self.output),
                _describe(self.taken_by) if self.taken_by is not None else "another run (released since)",
            )
            return False
        self.payload["heartbeat_at"] = _now().isoformat()
        storage.write_bytes_atomic(self.uri, self._encode(), self.storage_options)
        return True

    def check(self) -> None:
        """Raise `LeaseLostError`, naming the new holder, once the heartbeat has found the lease taken over."""
        if self.lost:
            holder = _describe(self.taken_by) if self.taken_by is not None else "another run (released since)"
            raise LeaseLostError(
                f"the lease on the output {storage.redact(self.output)} was taken over by {holder}: this run "
                "stopped and writes nothing more there (what it had not recorded is that run's to restore)"
            )

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
        """Stop the heartbeat and mark the lease released if it is still this run's. It stays, as the chain's last
        generation: the next run takes the next one, so no name is ever created twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with contextlib.suppress(Exception):  # best effort: a lease left behind goes stale
            if not self.lost and self._mine():
                self.payload["released_at"] = _now().isoformat()
                storage.write_bytes_atomic(self.uri, self._encode(), self.storage_options)
                self._forget_older()


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
