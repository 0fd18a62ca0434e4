"""Progress of a dataset run, for whoever is watching: the CLI's rich bar on stderr, or nobody.

Flows report through `started` / `advanced` / `finished`, which go to the sink installed with `reporting(...)` in
the current context (a ``ContextVar``, so concurrent runs in other contexts do not see each other's sink) and do
nothing when none is installed. Prefect's own progress artifact is updated by the flow itself.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = [
    "ProgressSink",
    "RichProgress",
    "StatusCounts",
    "advanced",
    "finished",
    "listed",
    "note",
    "reporting",
    "started",
]


class ProgressSink(Protocol):
    def started(self, total: int | None, title: str) -> None: ...

    def advanced(self, row: Mapping[str, Any]) -> None: ...

    def listed(self, total: int, earlier: int) -> None: ...

    def finished(self) -> None: ...


_SINK: ContextVar[ProgressSink | None] = ContextVar("dipflow_progress", default=None)


class StatusCounts(Counter):
    """A run's report rows by status, as they arrive: the one tally behind the progress bar, the flow's summary and
    its last log line. Missing statuses count 0."""

    def add(self, row: Mapping[str, Any]) -> None:
        self[str(row.get("status"))] += 1

    def __str__(self) -> str:
        return f"{self['ok']} ok, {self['error']} failed, {self['skipped']} skipped"


@contextlib.contextmanager
def reporting(sink: ProgressSink | None) -> Iterator[None]:
    """Send the progress of runs started inside this block to `sink`."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def started(total: int | None, title: str) -> None:
    """A run started; `total` None: not known yet (the listing streams, `listed` tells as it goes)."""
    if (sink := _SINK.get()) is not None:
        sink.started(total, title)


def listed(total: int, earlier: int) -> None:
    """The listing has found `total` images so far; `earlier` more of them were done by earlier runs (no rows)."""
    if (sink := _SINK.get()) is not None and hasattr(sink, "listed"):
        sink.listed(total, earlier)


def advanced(row: Mapping[str, Any]) -> None:
    """One image finished (ok, error or skipped): `row` is its report row."""
    if (sink := _SINK.get()) is not None:
        sink.advanced(row)


def finished() -> None:
    if (sink := _SINK.get()) is not None:
        sink.finished()


def note(message: str) -> None:
    """A warning the person watching must see, once (a lease taken over): the sink shows it if it can."""
    if (sink := _SINK.get()) is not None and hasattr(sink, "note"):
        sink.note(message)


class RichProgress:
    """A rich progress bar on stderr: images done of the total, with ok / error / skipped counts and the ETA."""

    def __init__(self, *, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled
        self.counts = StatusCounts()
        self._progress: Any = None
        self._task: Any = None

    def started(self, total: int | None, title: str) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(title, total=total, counts=self._label())

    def advanced(self, row: Mapping[str, Any]) -> None:
        self.counts.add(row)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, counts=self._label())

    def listed(self, total: int, earlier: int) -> None:
        self.counts["skipped"] += earlier
        if self._progress is not None:
            self._progress.update(self._task, total=total, advance=earlier, counts=self._label())

    def finished(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def note(self, message: str) -> None:
        """One line on stderr, ``dipflow: warning: …``, above the bar if one runs, shown with --quiet too."""
        self.console.print(f"dipflow: warning: {message}", markup=False, highlight=False, soft_wrap=True)

    def _label(self) -> str:
        c = self.counts
        return f"[green]{c['ok']} ok[/] [red]{c['error']} failed[/] [dim]{c['skipped']} skipped[/]"
