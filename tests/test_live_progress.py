"""The live progress of each running image: the CLI's rows on a (fake) terminal moving during a real fit on a Ray
actor, Prefect's progress artifact describing the running image before it ends (Ray and in-process runs), the run's
ETA derived from the fits, and nothing more on a console that is no terminal, nor with --quiet."""

from __future__ import annotations

import io
import re

import pytest

from pipelines import progress

ITERATIONS = 400  # a fit of a second or two on a CPU: several readings at the test's cadence, none timed
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


@pytest.fixture
def often(monkeypatch):
    """The driver asks the actors every 0.2 s (2 s in a run) and updates the artifact every 0.5 s (3 s): a fit of a
    second or two then shows several readings. (Prefect's server shares the 2 cores with the fit: updated on every
    reading, it slowed the in-process fit several times over.)"""
    from pipelines import run_tracker
    from pipelines.execution.workers import driver

    monkeypatch.setattr(driver, "PROGRESS_EVERY", 0.2)  # read by run_jobs and run_inline alike
    monkeypatch.setattr(run_tracker, "LIVE_EVERY", 0.5)


@pytest.fixture
def artifact_updates(monkeypatch):
    """Prefect's progress-artifact updates, each (share, description, whether an output existed when it was sent),
    passed on to the real server."""
    import prefect.artifacts

    real, seen = prefect.artifacts.update_progress_artifact, []

    def spy(artifact_id, share, description=None, **kw):
        seen.append((share, description or "", any(spy.out.glob("*.png"))))
        return real(artifact_id, share, description=description, **kw)

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", spy)
    spy.seen = seen
    return spy


def _live_rows(updates: list, key: str) -> list[int]:
    """The iterations the artifact's table gave for image `key` while no output had been written yet."""
    found = []
    for _share, description, ended in updates:
        m = re.search(rf"^\| {re.escape(key)} \| (\d+) / {ITERATIONS} \|", description, re.M)
        if m and not ended:
            found.append(int(m.group(1)))
    return found


def test_the_cli_shows_the_running_image_moving_and_prefect_sees_it_before_it_ends(
    ray_local, prefect_harness, tmp_path, write_images, capsys, monkeypatch, often, artifact_updates
):
    from prefect.artifacts import Artifact

    from pipelines import cli

    src, out = tmp_path / "src", tmp_path / "out"
    write_images(str(src), ["a.png"], size=16)
    artifact_updates.out = out
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich's console on stderr takes pytest's capture for a terminal
    monkeypatch.setenv("COLUMNS", "120")
    fit = ["--task", "sr", "--scale", "2", "--preset", "fast", "--iterations", str(ITERATIONS), "--channels", "4"]
    code = cli.main(["restore", str(src), "-o", str(out), *fit])
    assert code == 0
    err = _ANSI.sub("", capsys.readouterr().err)
    # The image's own row, redrawn as its fit goes: its iteration of its total, its rate and its ETA.
    shown = [int(m.group(1)) for m in re.finditer(rf"a\.png[^\n\r]*?\s(\d+)/{ITERATIONS}\s+[\d.]+ it/s", err)]
    moving = sorted({n for n in shown if 0 < n < ITERATIONS})
    assert len(moving) >= 2, err[-3000:]
    assert shown == sorted(shown)  # never backwards within the fit
    # Prefect's artifact described the running image, counts moving, before its output was written …
    live = _live_rows(artifact_updates.seen, "a.png")
    assert live and live == sorted(live), artifact_updates.seen
    assert any(0 < share < 100 for share, _d, ended in artifact_updates.seen if not ended)
    # … and says the run finished once it has.
    final = Artifact.get("restore-dataset-progress")
    assert final.data == 100.0 and final.description == "images finished"


def test_an_in_process_run_reports_its_running_fit_too(
    prefect_harness, tmp_path, write_images, often, artifact_updates
):
    """executor=inline: the fit holds the driver's thread, so a thread of the driver's reads the restorer's fits, in
    the run's context (the sink, Prefect's run)."""
    from pipelines import flows

    src, out = tmp_path / "src", tmp_path / "out"
    write_images(str(src), ["b.png"], size=16)
    artifact_updates.out = out

    class Sink:
        def __init__(self):
            self.readings: list[tuple[str, int]] = []

        def started(self, total, title): ...
        def advanced(self, row): ...
        def listed(self, total, earlier): ...
        def finished(self): ...

        def running(self, fits, eta):
            self.readings += [(f.key, f.iteration) for f in fits]

    sink = Sink()
    with progress.reporting(sink):
        result = flows.restore_dataset(
            str(src),
            str(out),
            {"task": "sr", "scale": 2, "preset": "fast", "iterations": ITERATIONS, "channels": 4},
            execution={"executor": "inline"},
        )
    assert result["ok"] == 1
    counts = [n for key, n in sink.readings if key == "b.png"]
    assert len({n for n in counts if 0 < n < ITERATIONS}) >= 2 and counts == sorted(counts), sink.readings
    assert _live_rows(artifact_updates.seen, "b.png"), artifact_updates.seen  # sent from that thread


def test_the_runs_eta_comes_from_its_running_fits():
    fits = [progress.RunningFit("d", "a", 100, 400, rate=50.0), progress.RunningFit("d", "b", 300, 400, rate=100.0)]
    assert [f.eta for f in fits] == [6.0, 1.0]
    # Left: 6 s + 1 s of theirs, and 2 images more at their mean 6 s an image, shared by 2 fits at once.
    assert progress.run_eta(fits, waiting=2) == pytest.approx((6 + 1 + 2 * 6) / 2)
    assert progress.run_eta([*fits, progress.RunningFit("d", "c", 0, 400)], waiting=0) is None  # c has no rate yet
    assert progress.run_eta([], waiting=3) is None


@pytest.mark.parametrize("terminal", [False, True])
def test_quiet_and_non_terminals_show_no_running_rows(terminal):
    """--quiet (the sink disabled) writes nothing at all; a console that is no terminal gets only the bar's last
    state when the run ends (as before the running rows), never a running image."""
    from rich.console import Console

    fit = progress.RunningFit("d", "running.png", 120, 400, rate=30.0)
    for enabled in (False, True):
        buffer = io.StringIO()
        sink = progress.RichProgress(enabled=enabled, console=Console(file=buffer, force_terminal=terminal))
        sink.started(2, "restoring")
        sink.running([fit], 10.0)
        if terminal and enabled:
            sink._progress.refresh()  # a terminal shows the row while it runs
            assert "running.png" in buffer.getvalue() and "120/400" in buffer.getvalue()
        sink.advanced({"dataset": "d", "image_key": "running.png", "status": "ok"})
        sink.finished()
        text = _ANSI.sub("", buffer.getvalue())
        if not enabled:
            assert text == ""
        elif not terminal:
            assert "running.png" not in text and text.count("\n") == 1 and "1/2" in text
