"""What a run counts as it goes: its rows by status and dataset, the images done earlier, the fits running now, the
progress bar and Prefect's progress artifact fed from them (`Tracker`), and the run's clock."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pipelines import jobs, progress
from pipelines.jobs import Plan


class ProgressArtifact(Protocol):
    """Where the finished share goes besides the progress bar (the flows' Prefect artifact)."""

    def update(self, share: float, description: str) -> None: ...


class Clock:
    """Seconds since the run started (monotonic), and its start in UTC."""

    def __init__(self) -> None:
        self.started_at, self.t0 = jobs.utcnow(), time.monotonic()

    def since(self, t: float | None = None) -> float:
        return (time.monotonic() if t is None else t) - self.t0


LIVE_EVERY = 3.0  # seconds between two updates of the progress artifact as running fits move


class Tracker:
    """Counts of the run's rows by status (and by dataset), images done earlier, the fits running now, and the progress
    `artifact` when there is one (updated at most once a second as rows arrive, every `LIVE_EVERY` seconds as fits move:
    the share finished, running fits counted by their iterations, and a table of them in its description) against the
    images listed so far — the total grows with the listing, and is read from the plans whenever a row arrives: a
    folder's images count as listed as soon as its planning starts, before any of its rows, so the finished share never
    passes 100 %. Rows arrive on the driver's thread, running fits on it or (in-process runs) on a thread of their own:
    a lock keeps the two apart."""

    def __init__(self, plans: Sequence[Plan] = (), *, artifact: ProgressArtifact | None = None) -> None:
        self.counts, self.by_dataset = progress.StatusCounts(), Counter()
        self.plans = plans
        self.total = self.done = self.earlier = 0
        self.fits: list[progress.RunningFit] = []
        self.artifact, self.last = artifact, 0.0
        self._lock = threading.Lock()

    def advance(self, row: Mapping[str, Any]) -> None:
        with self._lock:
            self.done += 1
            self.counts.add(row)
            self.by_dataset[row["dataset"], row["status"]] += 1
            self.fits = [f for f in self.fits if (f.dataset, f.key) != (row["dataset"], row.get("image_key"))]
            self._catch_up()
            progress.advanced(row)
            self._maybe_update(1.0)

    def listed(self) -> None:
        """The listing moved on: images listed so far, and those found done by earlier runs."""
        with self._lock:
            self._catch_up()
            self._maybe_update(1.0)

    def running(self, fits: list[progress.RunningFit]) -> None:
        """The fits running now, as the workers last told (`workers.run_jobs`' ``on_progress``)."""
        with self._lock:
            self.fits = fits
            progress.running(fits, self._eta())
            self._maybe_update(LIVE_EVERY)

    def _eta(self) -> float | None:
        return progress.run_eta(self.fits, self.total - self.done - self.earlier - len(self.fits))

    def _catch_up(self) -> None:
        """The plans' counts as they stand, told to the progress bar when they moved."""
        total = sum(p.listed for p in self.plans)
        earlier = sum(p.done_earlier for p in self.plans)
        if (total, earlier) != (self.total, self.earlier):
            progress.listed(total, earlier - self.earlier)
            self.total, self.earlier = total, earlier

    def _maybe_update(self, every: float) -> None:
        if self.artifact is not None and time.monotonic() - self.last >= every:
            self._update()

    def _update(self) -> None:
        finished = self.done + self.earlier
        share = 100.0 * min(1.0, (finished + sum(f.fraction for f in self.fits)) / self.total) if self.total else 100.0
        described = progress.markdown(self.fits, finished, self.total, self._eta()) if self.fits else "images finished"
        self.artifact.update(share, described)
        self.last = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self.fits = []
            if self.artifact is not None:
                self._update()
