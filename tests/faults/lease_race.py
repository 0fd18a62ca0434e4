"""Runs racing for one output root's lease, each in a process of its own (spawned: they share nothing but the store),
released together by a barrier so that they read, decide and create within the same moment.

``with Contenders(6, storage_options) as race: race(output)`` runs one trial: every contender calls
`lease.Lease.acquire` on `output` and keeps what it won (no release, no heartbeat), and the trial returns what each
got: ``("holds", token, warnings)`` or ``("refused", message, warnings)``. The pool lives across trials, so a trial
costs the race, not the start of six interpreters.
"""

from __future__ import annotations

import importlib
import multiprocessing
import time
from typing import Any

_BARRIER: Any = None
_MODULE = "pipelines.lease"


def _start(barrier: Any, module: str, warm: str, storage_options: dict | None) -> None:
    """Each contender, once: the barrier, the lease module (another one for a comparison) and the store's client
    made before any race, so that a race measures the store, not imports."""
    global _BARRIER, _MODULE
    _BARRIER, _MODULE = barrier, module
    from pipelines import storage

    importlib.import_module(module)
    storage.exists(warm, storage_options)


def _contend(output: str, storage_options: dict | None, name: str, stale_after: float) -> tuple[str, str, list[str]]:
    from pipelines.errors import LeaseHeldError

    lease = importlib.import_module(_MODULE)
    said: list[str] = []
    _BARRIER.wait(timeout=60)
    try:
        held = lease.Lease.acquire(output, storage_options, run_id=name, stale_after=stale_after, warn=said.append)
    except LeaseHeldError as exc:
        return "refused", str(exc), said
    return "holds", held.token, said


class Contenders:
    """`n` processes that race for a lease whenever the instance is called with an output root."""

    def __init__(self, n: int, storage_options: dict | None, *, warm: str, module: str = _MODULE) -> None:
        self.n, self.storage_options, self.warm, self.module = n, storage_options, warm, module
        self.pool: Any = None

    def __enter__(self) -> Contenders:
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(self.n)
        self.pool = ctx.Pool(
            self.n, initializer=_start, initargs=(barrier, self.module, self.warm, self.storage_options)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.terminate()
        self.pool.join()

    def __call__(self, output: str, *, stale_after: float = 60.0) -> list[tuple[str, str, list[str]]]:
        """One trial: each contender (one per process: the barrier holds them until all `n` wait) takes the lease."""
        t0 = time.monotonic()
        args = [(output, self.storage_options, f"contender-{i}", stale_after) for i in range(self.n)]
        results = self.pool.starmap(_contend, args, chunksize=1)
        self.seconds = time.monotonic() - t0
        return results
