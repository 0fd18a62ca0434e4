"""Packing: which waiting jobs run together as one batch (``dipcore.restore_batch``), and how many fit a GPU.

- `PackQueue` hands out the oldest waiting job with up to K − 1 more of its pack key (`jobs.pack_key`: same config,
  task and kind of side inputs, observations of one canvas bucket — ``dipcore.canvas_bucket`` — and channel count),
  so jobs of different shapes within one bucket are grouped: a GPU worker stacks them on one shared canvas (the
  waste is under 1.57× a fit's pixels), a CPU worker runs them side by side, each on its own canvas. With
  ``canvas="own"`` only jobs of one shape are grouped (as before shared canvases; the GPU suite compares the two).
- `pack_for_memory` is the "auto" size of a group on a GPU: as many fits as ``dipcore.estimate_peak_bytes`` puts
  within dipcore's budget of the card (``dipcore.memory.device_budget``, which the engine checks the batch against),
  at most `AUTO_PACK_CAP`.

A batch runs the way the device runs it best. On a GPU its fits are stacked in one grouped net, which pays where one
small fit leaves the card idle (at 256² on an H200, K = 8 fits took 3.49 ms per iteration each against 4.53 for one
fit with CUDA graphs, 3.65 against 12.45 eager). On a CPU grouped convolutions are slower than plain ones, so the
fits run side by side instead, one torch thread each (``dipcore.concurrent``): with ``pack="auto"`` a CPU worker
packs one job per thread (1.19× over one fit at a time at 256² on 2 threads, 1.03× at 128²), and a one-CPU worker
packs none. Figures: benchmarks/RESULTS.md. Pure Python and dipcore: the Ray driver, the in-process runner and the
GPU benchmarks share it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.jobs import Job, pack_key

if TYPE_CHECKING:
    from dipcore.tasks import TaskPreset

__all__ = ["AUTO_PACK_CAP", "PackQueue", "pack_for_memory"]

AUTO_PACK_CAP = 8  # the largest K measured (benchmarks/RESULTS.md): per-fit time had nearly flattened out by then


@dataclass
class _Entry:
    job: Job
    attempt: int
    key: tuple | None
    taken: bool = False


class PackQueue:
    """Jobs waiting to run, each with its attempt number, in order; ``take(k)`` removes the oldest and up to k − 1
    more with its pack key, in queue order.

    A job on a retry (attempt > 1) runs alone: when a batch dies with its actor, any of its jobs may be the cause,
    and alone it cannot take the others down again. ``canvas`` is `jobs.pack_key`'s: "shared" groups jobs of one
    canvas bucket, "own" only jobs of one shape.

    `jobs` may be a stream (a generator planning as the listing arrives): the queue draws from it only as far as it
    must — one job to say whether any is left, `LOOKAHEAD` × k to form a batch of k (at most `window`) — so the
    first call goes out as soon as the first job is planned, a run of 10⁶ images holds a window of them, and batches
    form among the jobs drawn.
    """

    WINDOW = 256
    LOOKAHEAD = 4

    def __init__(self, jobs: Iterable[Job] = (), *, canvas: str = "shared", window: int = WINDOW) -> None:
        self.canvas = canvas
        self.window = max(1, window)
        self._source: Iterator[Job] | None = iter(jobs)
        self._order: deque[_Entry] = deque()
        self._by_key: dict[tuple, deque[_Entry]] = {}  # entries taken through _order stay until skipped here
        self._size = 0

    def __len__(self) -> int:
        self._fill(1)
        return self._size

    def _fill(self, wanted: int) -> None:
        """Draw from the stream until `wanted` jobs (at most `window`) wait, or it ends."""
        while self._source is not None and self._size < min(wanted, self.window):
            job = next(self._source, None)
            if job is None:
                self._source = None
                return
            self._add(job, 1, front=False)

    def append(self, job: Job, attempt: int = 1) -> None:
        self._add(job, attempt, front=False)

    def push_front(self, items: list[tuple[Job, int]]) -> None:
        """Put (job, attempt) pairs back at the head, in their order (retries first thing)."""
        for job, attempt in reversed(items):
            self._add(job, attempt, front=True)

    def take(self, k: int) -> list[tuple[Job, int]]:
        """The oldest waiting job and up to ``k - 1`` more of its pack key: [(job, attempt), …], [] when empty."""
        self._fill(self.LOOKAHEAD * k if k > 1 else 1)
        head = self._pop(self._order)
        if head is None:
            return []
        group = [head]
        bucket = self._by_key.get(head.key) if head.key is not None else None
        while bucket is not None and len(group) < k:
            entry = self._pop(bucket)
            if entry is None:
                break
            group.append(entry)
        if bucket is not None and not bucket:
            del self._by_key[head.key]
        return [(e.job, e.attempt) for e in group]

    def _add(self, job: Job, attempt: int, *, front: bool) -> None:
        key = pack_key(job, canvas=self.canvas) if attempt == 1 else None
        entry = _Entry(job, attempt, key)
        queues = [self._order] + ([self._by_key.setdefault(key, deque())] if key is not None else [])
        for q in queues:
            q.appendleft(entry) if front else q.append(entry)
        self._size += 1

    def _pop(self, q: deque[_Entry]) -> _Entry | None:
        while q:
            entry = q.popleft()
            if not entry.taken:
                entry.taken = True
                self._size -= 1
                return entry
        return None


def pack_for_memory(
    p: TaskPreset, height: int, width: int, *, channels: int, budget: int, cap: int = AUTO_PACK_CAP
) -> int:
    """The largest K ≤ `cap` whose K stacked fits of preset `p` on a `height` × `width` output (estimated by
    ``dipcore.estimate_peak_bytes``) fit `budget` bytes — the card's, as ``dipcore.memory.device_budget`` gives it,
    the one the engine checks the batch against; at least 1 (whether a single fit fits is for the fit to find out)."""
    from dipcore import estimate_peak_bytes

    per_fit = estimate_peak_bytes(p, height, width, out_channels=channels, fits=1)
    k = max(1, min(cap, int(budget // max(per_fit, 1))))
    while k > 1 and estimate_peak_bytes(p, height, width, out_channels=channels, fits=k) > budget:
        k -= 1  # the estimate is linear in K today; this keeps the answer right should it stop being so
    return k
