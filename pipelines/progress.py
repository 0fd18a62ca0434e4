"""Progress of a dataset run, for whoever is watching: the CLI's rich bar on stderr, or nobody.

Flows report through `started` / `advanced` / `finished`, which go to the sink installed with `reporting(...)` in
the current context (a ``ContextVar``, so concurrent runs in other contexts do not see each other's sink) and do
nothing when none is installed; `running` tells it the fits under way (`RunningFit`: each image's iteration, its
rate and ETA, and the run's ETA derived from them). Prefect's own progress artifact is updated by the flow itself.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

__all__ = [
    "ProgressSink",
    "RichProgress",
    "RunningFit",
    "StatusCounts",
    "advanced",
    "clock",
    "finished",
    "listed",
    "markdown",
    "note",
    "reporting",
    "run_eta",
    "running",
    "started",
]


class ProgressSink(Protocol):
    def started(self, total: int | None, title: str) -> None: ...

    def advanced(self, row: Mapping[str, Any]) -> None: ...

    def listed(self, total: int, earlier: int) -> None: ...

    def finished(self) -> None: ...


_SINK: ContextVar[ProgressSink | None] = ContextVar("dipflow_progress", default=None)
_TABLED = 50  # running images listed at most in the artifact's table


@dataclass(frozen=True)
class RunningFit:
    """One image's fit under way, as its worker last saw it (`pipelines.execution.live`): the fits of a batch share
    one count; ``iterations`` 0 while it is not known yet. ``rate`` is iterations per second since its phase began
    (None until it has two readings); ``phase`` names a fit in phases (self-validation: "search", then "refit", each
    with its own count)."""

    dataset: str
    key: str
    iteration: int
    iterations: int
    rate: float | None = None
    phase: str | None = None

    @property
    def eta(self) -> float | None:
        """Seconds until this phase's last iteration at the rate so far (an early stop ends it sooner)."""
        return (self.iterations - self.iteration) / self.rate if self.rate else None

    @property
    def fraction(self) -> float:
        return min(1.0, self.iteration / self.iterations) if self.iterations else 0.0


def run_eta(fits: Sequence[RunningFit], waiting: int) -> float | None:
    """Seconds until the run ends, from its running fits: what they have left, plus `waiting` images more at their
    mean seconds per image, shared among as many fits at once as run now. None until every running fit has a rate."""
    if not fits or any(not f.rate for f in fits):
        return None
    per_image = sum(f.iterations / f.rate for f in fits) / len(fits)  # type: ignore[operator]
    left = sum(f.eta for f in fits) + max(0, waiting) * per_image  # type: ignore[misc]
    return left / len(fits)


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


def clock(seconds: float | None) -> str:
    """``0:01:05`` for 65 s; ``-:--:--`` when not known."""
    if seconds is None:
        return "-:--:--"
    return str(timedelta(seconds=max(0, round(seconds))))


def markdown(fits: Sequence[RunningFit], finished: int, total: int, eta: float | None) -> str:
    """The running fits as a Markdown table under one line of counts and the run's ETA (Prefect's artifact)."""
    head = f"{finished} of {total} images finished, {len(fits)} running; the run ends in about {clock(eta)}"
    lines = [head, "", "| image | iteration | it/s | ETA |", "|---|---:|---:|---:|"]
    for f in sorted(fits, key=lambda f: (f.dataset, f.key))[:_TABLED]:
        name = f.key.replace("|", "\\|")
        count = f"{f.iteration} / {f.iterations or '?'}" + (f" ({f.phase})" if f.phase else "")
        lines.append(f"| {name} | {count} | {f'{f.rate:.3g}' if f.rate else '–'} | {clock(f.eta)} |")
    if len(fits) > _TABLED:
        lines.append(f"| … {len(fits) - _TABLED} more | | | |")
    return "\n".join(lines)


def running(fits: Sequence[RunningFit], eta: float | None) -> None:
    """The fits under way now (those not in `fits` are not running any more) and the run's ETA (`run_eta`)."""
    if (sink := _SINK.get()) is not None and hasattr(sink, "running"):
        sink.running(fits, eta)


def finished() -> None:
    if (sink := _SINK.get()) is not None:
        sink.finished()


def note(message: str) -> None:
    """A warning the person watching must see, once (a lease taken over): the sink shows it if it can."""
    if (sink := _SINK.get()) is not None and hasattr(sink, "note"):
        sink.note(message)


_SHOWN = 8  # running images shown at most, one row each (a GPU cluster runs dozens at once)


class RichProgress:
    """A rich progress bar on stderr: images done of the total, with ok / error / skipped counts and the run's ETA;
    below it one row per running image: its iteration of its total, iterations per second and its own ETA. The
    run's ETA is derived from the running fits once they have rates (`run_eta`), rich's estimate from finished
    images until then. Disabled (``--quiet``) it shows nothing; on a console that is no terminal rich draws no live
    rows, only the bar's last state when the run ends."""

    def __init__(self, *, enabled: bool = True, console: Any = None) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=True)
        self.enabled = enabled
        self.counts = StatusCounts()
        self._progress: Any = None
        self._task: Any = None
        self._rows: dict[tuple[str, str], Any] = {}  # (dataset, key) of a running image → its row's task
        self._hidden = 0  # running images beyond the rows shown

    def started(self, total: int | None, title: str) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            _eta_column(),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(title, total=total, counts=self._label(), eta=None)

    def advanced(self, row: Mapping[str, Any]) -> None:
        self.counts.add(row)
        if self._progress is not None:
            self._drop((str(row.get("dataset")), str(row.get("image_key"))))
            self._progress.update(self._task, advance=1, counts=self._label())

    def listed(self, total: int, earlier: int) -> None:
        self.counts["skipped"] += earlier
        if self._progress is not None:
            self._progress.update(self._task, total=total, advance=earlier, counts=self._label())

    def running(self, fits: Sequence[RunningFit], eta: float | None) -> None:
        if self._progress is None:
            return
        from rich.markup import escape

        shown = sorted(fits, key=lambda f: (f.dataset, f.key))[:_SHOWN]
        for gone in set(self._rows) - {(f.dataset, f.key) for f in shown}:
            self._drop(gone)
        for f in shown:
            rate = f"{f.rate:.3g} it/s" if f.rate else "starting"
            fields = {"completed": f.iteration, "total": f.iterations or None, "eta": f.eta, "own": True}
            fields["counts"] = f"[dim]{escape(f.phase)}[/] {rate}" if f.phase else rate
            if (row := self._rows.get((f.dataset, f.key))) is None:
                self._rows[f.dataset, f.key] = self._progress.add_task(escape(f"  {f.key}"), **fields)
            else:
                self._progress.update(row, **fields)
        self._hidden = len(fits) - len(shown)
        self._progress.update(self._task, eta=eta, counts=self._label())

    def finished(self) -> None:
        if self._progress is not None:
            for key in list(self._rows):  # the bar's last state, drawn when it stops, is the run's alone
                self._drop(key)
            self._progress.stop()
            self._progress = None

    def note(self, message: str) -> None:
        """One line on stderr, ``dipflow: warning: …``, above the bar if one runs, shown with --quiet too."""
        self.console.print(f"dipflow: warning: {message}", markup=False, highlight=False, soft_wrap=True)

    def _drop(self, key: tuple[str, str]) -> None:
        if (row := self._rows.pop(key, None)) is not None:
            self._progress.remove_task(row)

    def _label(self) -> str:
        c = self.counts
        more = f" [dim]+{self._hidden} running[/]" if self._hidden else ""
        return f"[green]{c['ok']} ok[/] [red]{c['error']} failed[/] [dim]{c['skipped']} skipped[/]{more}"


def _eta_column() -> Any:
    """The ETA a row carries (its ``eta`` field: an image's, or the run's derived from them); for the run's row
    without one, rich's estimate from the images finished."""
    from rich.progress import TimeRemainingColumn
    from rich.text import Text

    class EtaColumn(TimeRemainingColumn):
        def render(self, task: Any) -> Text:
            eta = task.fields.get("eta")
            if eta is None and not task.fields.get("own"):
                return super().render(task)
            return Text(clock(eta), style="progress.remaining")

    return EtaColumn()
