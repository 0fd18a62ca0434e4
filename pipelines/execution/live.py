"""The fits running in a worker, as their own callbacks report them: what the driver asks a worker for while it
waits (`pipelines.execution.workers`: ``RestoreWorker.progress``, a call beside the fit's; in-process, a thread of
the driver's), never anything the fit waits for.

dipcore hands a fit's callback one ``StepRecord`` per iteration at the loop's sync points, where it reads the
device anyway (every iteration on a CPU, every 25 on CUDA): the callback here stores the iteration and the time in
one tuple and returns, so a fit pays no host read and no lock for being watched. Fits of a batch share one count
(stacked fits are one loop; fits side by side report the first still running), so each of a batch's jobs shows it.
Ray-free, stdlib only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipelines.jobs import Job
from pipelines.progress import RunningFit

__all__ = ["LiveFits"]


class _Watch:
    """One fit (or batch) being watched: its latest reading, replaced whole by each record."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        # (phase, iteration and time where the phase's rate starts, iteration, iterations, time): one tuple, so a
        # reader on another thread never sees half an update.
        self.state: tuple[str | None, int, float, int, int, float] | None = None

    def record(self, rec: Any) -> None:
        """dipcore's callback: returns None, so the fit goes on."""
        now, last = self.clock(), self.state
        if last is None or rec.phase != last[0] or rec.iteration < last[3]:  # a new phase or run counts afresh
            self.state = (rec.phase, rec.iteration, now, rec.iteration, rec.iterations, now)
        else:
            self.state = (rec.phase, last[1], last[2], rec.iteration, rec.iterations, now)

    def reading(self) -> tuple[int, int, float | None, str | None]:
        """(iteration, iterations, iterations per second since the phase began or None, phase); (0, 0, None, None)
        before the first record."""
        if (state := self.state) is None:
            return 0, 0, None, None
        phase, it0, t0, it, n, t = state
        rate = (it - it0) / (t - t0) if it > it0 and t > t0 else None
        return it, n, rate, phase


class LiveFits:
    """The fits this worker runs now, by job: `watching` gives a fit its callback, `snapshot` reads them all."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()  # taken to add, remove and list jobs, never by a callback
        self._watched: dict[tuple[str, str], tuple[Job, _Watch]] = {}

    @contextlib.contextmanager
    def watching(self, jobs: Iterable[Job]) -> Iterator[Callable[[Any], None]]:
        """The callback of one fit (or one batch) of `jobs`; they count as running for the length of the block."""
        watch = _Watch(self.clock)
        keys = {(job.dataset, job.key): (job, watch) for job in jobs}
        with self._lock:
            self._watched.update(keys)
        try:
            yield watch.record
        finally:
            with self._lock:
                for key in keys:
                    if self._watched.get(key, (None, None))[1] is watch:
                        del self._watched[key]

    def snapshot(self) -> list[RunningFit]:
        """Every job running now, with its fit's latest reading (iteration 0: its fit has not reported yet)."""
        with self._lock:
            watched = list(self._watched.values())
        fits = []
        for job, watch in watched:
            it, n, rate, phase = watch.reading()
            total = n or job.preset.iterations
            fits.append(RunningFit(job.dataset, job.key, it, total, rate, phase))
        return fits
