"""Crash points of a run's reports: a run killed at each write and delete of its report parts, their commit into
``report/``, its done-state files and their merge, and its runs-table row — every one of them in turn —, then read by
outside readers as docs/reports.md says (DuckDB ``read_parquet('<out>/report/**/*.parquet', hive_partitioning=true)``
and ``pyarrow.dataset`` with hive partitioning) and by dipflow's own, then resumed by the next run.

Held to, at every crash point: outside readers see no row twice and none that dipflow's readers do not; dipflow's
readers see every row flushed, each once. After the next run: every reader sees every row of both runs once, each
input's latest row is ``ok``, nothing pending or replaced stays, no temporary file either, and a crash from the
commit on (every report row flushed, the done-state after it) redoes no image.

A crash is played in this process: from the k-th write or delete under the report's folders on, the store takes
nothing more (that call and every later write, delete and exclusive creation fail), which leaves what a kill -9
there leaves. One case kills a real ``dipflow restore`` with SIGKILL inside its commit."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from invariants import Outcome, check_outputs, check_outside_readers, check_unchanged, snapshot

from pipelines import storage
from pipelines.execution.options import Execution
from pipelines.reporting import reports, state
from pipelines.settings import RestoreSettings, RunOptions

ROOT = Path(__file__).resolve().parents[2]
FAST = RestoreSettings(task="denoise", preset="fast", iterations=2, channels=4)
KEYS = ("a.png", "b.png", "c.png")
WATCHED = ("/report/", "/curves/", "/_dipflow/pending/", "/_dipflow/state/", "/runs/")

# What a run of KEYS writes and deletes under WATCHED, in order, with a part every two rows, compacted files of at
# most three rows and a state merge at its end: the first two images' report part, curves part and done-state file;
# when the run ends, the third image's (its state before the commit: a crash there costs no redo); the commit of the
# report (parts 0-1 in one file: the file first, then its parts) and of the curves (4 and 2 rows: a file each); the
# state merge (the merged file, then the files it replaces); the runs-table row. A census test checks that a run
# does exactly this.
FLUSH = [("write", "report part"), ("write", "curves part"), ("write", "state file")]
COMMIT = [("write", "compacted file"), ("delete", "pending part"), ("delete", "pending part")]
COMMIT += [("write", "compacted file"), ("delete", "pending part")] * 2
STEPS = [*FLUSH, *FLUSH, *COMMIT, ("write", "merged state"), ("delete", "state file"), ("delete", "state file")]
STEPS += [("write", "runs row")]
CASES = [f"crash at step {k + 1} of {len(STEPS)}: {op} {what}" for k, (op, what) in enumerate(STEPS)]
FIRST_COMMIT = 2 * len(FLUSH)  # from here on every report row is flushed and the state after it

pytestmark = pytest.mark.usefixtures("prefect_harness")


class Killed(Exception):
    """The process is gone: nothing more reaches the store."""


def _what(op: str, uri: str) -> str:
    name = uri.rpartition("/")[2]
    if "/_dipflow/pending/" in uri:
        return f"{uri.split('/_dipflow/pending/')[1].split('/')[0]} part" if op == "write" else "pending part"
    if "/_dipflow/state/" in uri:
        return "merged state" if name.startswith("merged-") else "state file"
    if "/runs/" in uri:
        return "runs row"
    return "compacted file"


class Store:
    """`pipelines.storage` watched: its writes and deletes under WATCHED counted (`steps`); from the `crash_at`-th on
    (1-based) every write, delete and exclusive creation fails, as if the process had been killed there."""

    def __init__(self, monkeypatch, crash_at: int | None = None) -> None:
        self.steps: list[tuple[str, str]] = []
        self.crash_at, self.dead = crash_at, False
        for name, op in (("write_bytes_atomic", "write"), ("remove_file", "delete"), ("create_exclusive", None)):
            monkeypatch.setattr(storage, name, self._watch(getattr(storage, name), op))

    def _watch(self, real, op):
        def call(uri, *args, **kwargs):
            if op is not None and any(folder in uri for folder in WATCHED):
                self.steps.append((op, _what(op, uri)))
                self.dead = self.dead or (self.crash_at is not None and len(self.steps) >= self.crash_at)
            if self.dead:
                raise Killed(f"killed before this {op or 'create'}: {uri}")
            return real(uri, *args, **kwargs)

        return call


@pytest.fixture
def small_files(monkeypatch):
    """Runs that write a part every two rows, compact three rows a file and merge their state when they end: every
    kind of step, in a run of three images."""
    from pipelines import flows

    class Writer(reports.ReportWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "flush_every": 2, "compact_rows": 3})

    class StateWriter(state.StateWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "merge_at": 1})

    monkeypatch.setattr(flows.reports, "ReportWriter", Writer)
    monkeypatch.setattr(flows.state, "StateWriter", StateWriter)


def _restore(src: Path, out: Path, **options) -> dict:
    from pipelines import flows

    execution = Execution(executor="inline", pack=1)  # one image at a time: the steps come in one order
    # .fn skips Prefect's parameter validation: models, not dicts
    return flows.restore_dataset.fn(str(src), str(out), FAST, execution=execution, options=RunOptions(**options))


def _ours(out: Path) -> dict[str, list[tuple]]:
    report = reports.read_report(str(out), columns=["run_id", "image_key"]).to_pylist()
    curves = reports.read_curves(str(out), columns=["run_id", "image_key", "iteration"]).to_pylist()
    return {"report": [tuple(r.values()) for r in report], "curves": [tuple(r.values()) for r in curves]}


def _leftovers(out: Path) -> list[str]:
    """What a finished recovery must not leave: pending parts, state files a merged one replaces, temporaries."""
    found = [str(p.relative_to(out)) for p in (out / "_dipflow" / "pending").rglob("*") if p.is_file()]
    files = {p.name for p in (out / "_dipflow" / "state").glob("*.parquet")}
    for merged in (out / "_dipflow" / "state").glob("merged-*.parquet"):
        replaced = pq.read_schema(merged).metadata.get(b"dipflow.replaces", b"[]")
        found += [f"state {name} (merged)" for name in files & set(json.loads(replaced))]
    for folder in ("report", "curves", "runs", "_dipflow/state"):
        found += [str(p.relative_to(out)) for p in (out / folder).rglob(".*.tmp")]
    return found


def test_a_run_ends_with_the_steps_the_crash_cases_cover(tmp_path, write_images, small_files, monkeypatch):
    write_images(str(tmp_path / "src"), KEYS, size=16)
    store = Store(monkeypatch)
    _restore(tmp_path / "src", tmp_path / "out")
    assert store.steps == STEPS, "\n".join(map(str, store.steps))


@pytest.mark.parametrize("k", range(1, len(STEPS) + 1), ids=CASES)
def test_a_crash_at_any_step_shows_each_row_once_to_every_reader_and_the_next_run_finishes(
    k, tmp_path, write_images, small_files, monkeypatch, ledger
):
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(str(src), KEYS, size=16)
    inputs = snapshot(str(src))
    op, what = STEPS[k - 1]
    outcome = Outcome(CASES[k - 1], "crash point", "local + Prefect", f"killed before the run's {op} of a {what}")
    store = Store(monkeypatch, crash_at=k)
    with contextlib.suppress(Exception):  # the run dies (or, killed at its runs row, ends without it)
        _restore(src, out)
    monkeypatch.undo()  # the store works again; so do the real writers
    assert store.dead, "the crash point was never reached: the case did not run"

    crashed = _ours(out)
    for kind, rows in crashed.items():
        if twice := [key for key, n in Counter(rows).items() if n > 1]:
            outcome.fail("rows_lost", f"dipflow's reader sees {kind} rows twice after the crash: {twice[:3]}")
    check_outside_readers(outcome, str(out), crashed, all_of_it=False)

    rerun = _restore(src, out, break_lease=True)  # the lease of a run killed in this very process looks alive
    rows = reports.read_report(str(out)).to_pylist()
    check_outside_readers(outcome, str(out), _ours(out), all_of_it=True)
    for kind, before in crashed.items():  # nothing the crashed run flushed is lost by the recovery
        if missing := Counter(before) - Counter(_ours(out)[kind]):
            outcome.fail("rows_lost", f"{sum(missing.values())} {kind} row(s) of the crashed run are gone")
    for key in KEYS:
        mine = sorted((r for r in rows if r["image_key"] == key), key=lambda r: r["finished_at"])
        if not mine or mine[-1]["status"] != "ok":
            outcome.fail("rows_lost", f"{key!r} has no ok row after the rerun: {[r['status'] for r in mine]}")
    redone = {r["image_key"] for r in rows if r["run_id"] == rerun["run_id"]}
    redone &= {key for run, key in crashed["report"]}
    if redone and k > FIRST_COMMIT:
        outcome.fail("redone", f"every row was flushed and its state after it, yet the rerun redid {sorted(redone)}")
    elif redone:
        outcome.notes.append(f"redone: {sorted(redone)}, whose done-state the crash came before")
    for left in _leftovers(out):
        outcome.fail("partial_files", f"left after the next run: {left}")
    check_outputs(outcome, str(out), rows)
    check_unchanged(outcome, inputs, snapshot(str(src)), "inputs")
    ledger(outcome)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dipflow_restore_killed_inside_its_commit_shows_each_row_once_and_the_next_run_cleans_up(
    tmp_path, write_images, ledger
):
    """A real `dipflow restore` (its own Prefect, a private Ray) SIGKILLed by itself right after its compacted report
    file is written, before any part is deleted: outside readers see each row once, and the next `dipflow restore`
    deletes the parts, redoes nothing and leaves nothing pending."""
    from test_processes import FAST as CLI_FAST
    from test_processes import _env

    src, out = tmp_path / "src", tmp_path / "out"
    keys = [f"im{i}.png" for i in range(4)]
    write_images(str(src), keys, size=16)
    inputs = snapshot(str(src))
    what = "SIGKILL of `dipflow restore` between its compacted file's write and its parts' deletes"
    outcome = Outcome("dipflow restore SIGKILLed inside its commit", "crash point", "local + Ray + Prefect", what)
    kill_in_commit = (
        "import os, signal, sys\n"
        "from pipelines import storage\n"
        "remove = storage.remove_file\n"
        "def remove_file(uri, *args, **kwargs):\n"
        "    if '/_dipflow/pending/report/' in uri:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return remove(uri, *args, **kwargs)\n"
        "storage.remove_file = remove_file\n"
        "from pipelines.cli import main\n"
        "sys.exit(main())\n"
    )
    env = _env(tmp_path)
    argv = ["restore", str(src), "-o", str(out), *CLI_FAST]
    killed = subprocess.run(
        [sys.executable, "-c", kill_in_commit, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    crashed = _ours(out)
    assert sorted(key for _, key in crashed["report"]) == keys, "the run died before its last rows: no case"
    assert list((out / "_dipflow" / "pending" / "report").rglob("part-*.parquet")), "no part pending: no case"
    check_outside_readers(outcome, str(out), {"report": crashed["report"]}, all_of_it=True)  # committed, once
    check_outside_readers(outcome, str(out), {"curves": crashed["curves"]}, all_of_it=False)  # still pending

    rerun = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "restore", *argv[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows = reports.read_report(str(out)).to_pylist()
    if again := [r["image_key"] for r in rows if r["run_id"] != crashed["report"][0][0]]:
        outcome.fail("redone", f"the rerun redid {again}: the done-state did not follow the report")
    check_outside_readers(outcome, str(out), _ours(out), all_of_it=True)
    for left in _leftovers(out):
        outcome.fail("partial_files", f"left after the next run: {left}")
    check_outputs(outcome, str(out), rows)
    check_unchanged(outcome, inputs, snapshot(str(src)), "inputs")
    ledger(outcome)
