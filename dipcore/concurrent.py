"""Independent fits run side by side on CPU threads: the CPU's batched multi-fit.

Stacking K fits into one net (``dipcore.batched``) pays on a GPU, where one small fit leaves most of the chip idle.
On a CPU the stacked net's grouped convolutions are slower than K plain ones, and one fit cannot keep several cores
busy either: its convolutions are too small to split well across threads. Running the fits at once, each on its
share of the cores, gets more images per hour out of the same CPU (measured in ``benchmarks/RESULTS.md``).

Each fit is the plain loop with its own generator, so the results are those of the fits run one by one with the
same number of threads per fit. PyTorch's operators release the GIL while they compute, so Python threads suffice.

Threads start with their parent's CPU affinity. Where the caller is pinned to fewer CPUs than fits would run at once
(OpenMP's ``OMP_PROC_BIND`` pins the main thread to one core; ``taskset``), the fits would share those CPUs: measured
1.8× slower per fit than one by one (``benchmarks/RESULTS.md``, thread placement), so they then run one by one.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from .fit import FitProblem, FitResult, FitSettings, StepRecord, fit, settings_for_fit

__all__ = ["concurrent_workers", "fit_concurrently"]


def concurrent_workers(fits: int, threads: int | None = None) -> int:
    """How many of ``fits`` fits run at once on ``threads`` CPU threads (default: torch's): one thread each at
    least; the rest wait for a free worker."""
    threads = threads or torch.get_num_threads()
    return max(1, min(fits, threads))


def fit_concurrently(
    problems: list[FitProblem],
    settings: FitSettings,
    *,
    generators: list[torch.Generator],
    callback: Callable[[StepRecord], bool | None] | None = None,
) -> list[FitResult]:
    """Run the fits on a pool of worker threads that share torch's CPU threads between them (torch's thread count
    is set for the duration and restored after). Results come back in the order of ``problems``.

    The callback sees one fit at a time — the first one still running — so its iterations keep increasing within
    a fit, as with fits run one by one; a True from it stops every fit at its next iteration.
    """
    if len(problems) != len(generators):
        raise ValueError(f"{len(problems)} problems need {len(generators)} generators")
    total = torch.get_num_threads()
    workers = concurrent_workers(len(problems), total)
    cpus = _cpus_of_this_thread()
    if workers > 1 and cpus is not None and cpus < workers:
        warnings.warn(
            f"this thread may run on {cpus} CPU(s) only (OMP_PROC_BIND, taskset?) and the threads of fits side by "
            f"side would inherit that, so the {len(problems)} fits run one by one; unset OMP_PROC_BIND to run them "
            f"side by side",
            RuntimeWarning,
            stacklevel=2,
        )
        workers = 1
    relay = _Relay(callback, len(problems))
    if workers == 1:
        return [
            fit(p, settings_for_fit(settings, i), generator=g, callback=relay.for_fit(i))
            for i, (p, g) in enumerate(zip(problems, generators, strict=True))
        ]
    per_fit = max(1, total // workers)

    def run(i: int) -> FitResult:
        torch.set_num_threads(per_fit)  # for this thread's own OpenMP pool too
        try:
            return fit(problems[i], settings_for_fit(settings, i), generator=generators[i], callback=relay.for_fit(i))
        except BaseException:
            relay.stop()  # the others end early: the batch fails as a whole
            raise
        finally:
            relay.finished(i)

    torch.set_num_threads(per_fit)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dip-fit") as pool:
            return list(pool.map(run, range(len(problems))))
    finally:
        torch.set_num_threads(total)


def _cpus_of_this_thread() -> int | None:
    """How many CPUs the calling thread may run on (the threads it starts inherit them); None where the OS does not
    say."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


class _Relay:
    """Hands the callback the records of the lowest-numbered running fit, and a stop to every fit."""

    def __init__(self, callback: Callable[[StepRecord], bool | None] | None, fits: int) -> None:
        self.callback = callback
        self.running = set(range(fits))
        self.stopped = False
        self.lock = threading.Lock()

    def for_fit(self, i: int) -> Callable[[StepRecord], bool]:
        if self.callback is None:
            return lambda record: self.stopped
        return lambda record: self._record(i, record)

    def _record(self, i: int, record: StepRecord) -> bool:
        with self.lock:
            if not self.stopped and i == min(self.running) and self.callback(record):
                self.stopped = True
            return self.stopped

    def stop(self) -> None:
        self.stopped = True

    def finished(self, i: int) -> None:
        with self.lock:
            self.running.discard(i)
