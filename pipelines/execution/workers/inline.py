"""`run_inline`: jobs in this process on one `Restorer`, packed as `run_jobs` packs them, without Ray (process-local
storage such as ``memory://``, debugging); the restorer's running fits read from a thread of the driver's."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from pipelines.execution.options import Pack
from pipelines.execution.packing import PackQueue
from pipelines.execution.restorer import JobOutcome, Restorer
from pipelines.execution.workers import driver
from pipelines.execution.workers.driver import RunStats, check_pack
from pipelines.jobs import Job
from pipelines.progress import RunningFit


def run_inline(
    jobs: Iterable[Job],
    *,
    restorer: Restorer,
    on_result: Callable[[JobOutcome], None],
    pack: Pack = "auto",
    check: Callable[[], None] | None = None,
    on_progress: Callable[[list[RunningFit]], None] | None = None,
    progress_every: float | None = None,
) -> RunStats:
    """Run `jobs` in this process, up to `pack` compatible ones at a time as one batch ("auto": the
    restorer's own bound, its thread count on a CPU), for process-local storage such as ``memory://``, and debugging.
    `check` is called before each batch, as `run_jobs` calls it on every turn. `on_progress`, when given, is handed
    the restorer's running fits every `progress_every` seconds from a thread of its own (the fits hold this one),
    run in a copy of this thread's context (the progress sink, Prefect's run)."""
    check_pack(pack)
    stats, started = RunStats(), time.monotonic()
    queue = PackQueue(jobs)
    limit = pack if isinstance(pack, int) else restorer.pack_limit
    with _reporting(restorer, on_progress, driver.PROGRESS_EVERY if progress_every is None else progress_every):
        while queue:
            if check is not None:
                check()
            batch = [job for job, _ in queue.take(limit)]
            stats.first_dispatch = stats.first_dispatch or time.monotonic()
            for outcome in restorer.run_batch(batch, pack):
                outcome.row["attempts"] = 1
                stats.count(outcome, batch=len(batch))
                on_result(outcome)
    stats.seconds = time.monotonic() - started
    return stats


@contextlib.contextmanager
def _reporting(
    restorer: Restorer, on_progress: Callable[[list[RunningFit]], None] | None, every: float
) -> Iterator[None]:
    """While the block runs, `on_progress(restorer.progress())` every `every` seconds on a daemon thread; stopped
    (and waited for, at most a few seconds) when the block ends."""
    if on_progress is None:
        yield
        return
    stop = threading.Event()
    context = contextvars.copy_context()

    def pump() -> None:
        while not stop.wait(every):
            try:
                on_progress(restorer.progress())
            except Exception as exc:  # noqa: BLE001 - a display that fails must not end the run
                logging.getLogger("dipflow.workers").debug("progress not shown: %s", exc)

    thread = threading.Thread(target=context.run, args=(pump,), name="dipflow-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5.0)
