"""Real `dipflow restore` runs stopped by SIGTERM or SIGINT at chosen moments, and what each must end in: 143 or 130,
one line on stderr, no lease left, the runs table's row `interrupted` where the run wrote one (or `finished` when
every image was done before the signal), no temporary file, every output whole, nothing it started still running.

Used by `test_signals.py` (a seeded handful of moments) and, run as a script, as a stress test of as many moments as
asked, spread over a run's whole length (start-up, Prefect's server, listing, Ray, fits, writing, compaction, the
process's end)::

    python tests/faults/signal_runs.py --moments 60 --seed 7 --parallel 2
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: its neighbours

from invariants import Outcome
from test_processes import _alive, _descendants, _env, _kill_left

ROOT = Path(__file__).resolve().parents[2]
# Short fits (a few seconds in all), so that a run's whole length is ~20-30 s on 2 busy cores.
ARGS = ["--task", "denoise", "--iterations", "40", "--channels", "4", "--workers", "1", "--quiet"]
LINES = {
    signal.SIGTERM: "dipflow: terminated (SIGTERM); run the same command again to resume",
    signal.SIGINT: "dipflow: interrupted; run the same command again to resume",
}


def write_dataset(folder: Path, count: int = 4, size: int = 16, seed: int = 0) -> list[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = [f"img{i}.png" for i in range(count)]
    for key in keys:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / key)
    return keys


# What a moment is counted from, each seen from outside (polled every 20 ms), and how far after it moments are drawn:
# the start (start-up, Prefect's server, the flow's start), the output's _dipflow/ folder (the lease taken: listing,
# Ray's start), the first output (fits inside ray.wait, writing), the runs table's folder (the run's row written:
# compaction, the HTML page, the flow's end, Prefect's server stopped, the process's end).
ANCHORS = {"start": 12.0, "lease": 4.0, "output": 3.0, "runs": 0.8}  # the end comes 0.8-1.6 s after the row


def _anchor_seen(anchor: str, out: Path) -> bool:
    if anchor == "start":
        return True
    if anchor == "lease":
        return (out / "_dipflow").exists()
    if anchor == "output":
        return any(out.glob("*.png"))
    return (out / "runs").exists()


def moments(count: int, *, seed: int, anchor: str = "start") -> list[tuple[str, float]]:
    """`count` moments after `anchor`, one drawn at random in each of `count` equal slices of its span: every
    phase gets its share."""
    rng = random.Random(f"{seed}-{anchor}")
    width = ANCHORS[anchor] / count
    return [(anchor, round(width * (i + rng.random()), 2)) for i in range(count)]


@dataclass
class Stopped:
    moment: tuple[str, float]
    signum: int
    code: int | None
    stderr: str
    out: Path
    survivors: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    sent: bool = True
    twice: bool = False

    @property
    def name(self) -> str:
        anchor, delay = self.moment
        return f"{signal.Signals(self.signum).name}{' twice' if self.twice else ''} {delay:.2f} s after {anchor}"


def stop_at(
    src: Path,
    out: Path,
    home: Path,
    moment: tuple[str, float],
    signum: int,
    *,
    again: float | None = None,
    timeout: float = 240.0,
) -> Stopped:
    """`dipflow restore src -o out` in a session of its own, sent `signum` at `moment` (seconds after an anchor);
    its descendants watched until it ends, and those still alive 30 s later returned. A run that ends before the
    moment is sent nothing (`Stopped.sent` is False); with `again`, the signal is sent a second time that many
    seconds after the first."""
    env = {**_env(home), "PREFECT_HOME": str(home / "prefect-home")}
    argv = [sys.executable, "-m", "pipelines.cli", "restore", str(src), "-o", str(out), *ARGS]
    with tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        seen: dict[int, str] = {}
        try:
            anchor, delay = moment
            while not _anchor_seen(anchor, out) and proc.poll() is None and time.monotonic() - started < timeout:
                seen.update(_descendants(proc.pid))
                time.sleep(0.02)
            at = time.monotonic() + delay
            while time.monotonic() < at and proc.poll() is None:
                seen.update(_descendants(proc.pid))
                time.sleep(min(0.02, max(0.0, at - time.monotonic())))
            sent = proc.poll() is None and not _exiting(proc.pid)
            if sent:
                proc.send_signal(signum)
            if sent and again is not None:  # a second signal while the first unwinds
                time.sleep(again)
                if proc.poll() is None:
                    proc.send_signal(signum)
            while proc.poll() is None and time.monotonic() - started < 2 * timeout:
                seen.update(_descendants(proc.pid))
                time.sleep(0.1)
            code = proc.poll()
            deadline = time.monotonic() + 30
            while (
                left := {p for p, s in seen.items() if p != proc.pid and _alive(p, s)}
            ) and time.monotonic() < deadline:
                time.sleep(0.5)
            survivors = {pid: _command(pid) for pid in left}
        finally:
            _kill_left(proc, seen)
        err.seek(0)
        seconds = time.monotonic() - started
        return Stopped(moment, signum, code, err.read(), out, survivors, seconds, sent, again is not None)


def _exiting(pid: int) -> bool:
    """Whether the process has called exit already (the kernel's PF_EXITING flag, /proc/PID/stat's 9th field): its
    status is set, and a signal now changes nothing. Tearing down a process of 3 GB and 30 threads takes a while."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & 0x4)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def check_stopped(outcome: Outcome, run: Stopped, keys: list[str]) -> str:
    """Hold one stopped run to the invariants (failures counted in `outcome`); returns what the run got to."""
    from pipelines import lease, storage
    from pipelines.reporting import reports, runs

    expected = 128 + run.signum
    if not run.sent:
        outcome.notes.append(f"{run.name}: the run ended (exit {run.code}) before the moment")
        return "ended before the moment"
    if run.code is None:
        outcome.fail("processes_left", f"{run.name}: still running {run.seconds:.0f} s after the start")
    elif run.code == -run.signum and not run.stderr.strip() and not run.out.exists():
        # before the interpreter reached dipflow's handler (a loaded machine's start-up): killed as the OS kills,
        # which a shell reports as 128 + n, with nothing written
        outcome.notes.append(f"{run.name}: killed by the signal before dipflow's code ran; nothing written")
    elif run.code != expected or run.stderr.strip().splitlines() != [LINES[run.signum]]:
        outcome.fail("unreadable_errors", f"{run.name}: exit {run.code}, stderr {run.stderr.strip()[-300:]!r}")
    for pid, command in run.survivors.items():
        outcome.fail("processes_left", f"{run.name}: pid {pid} ({command}) alive 30 s after the end")
    out = str(run.out)
    if not run.out.exists():
        return "before the output"
    if lease.read_lease(out) is not None:
        outcome.fail("processes_left", f"{run.name}: the lease is left: {lease.read_lease(out)}")
    ok = set()
    with contextlib.suppress(Exception):  # no report yet
        ok = {r["image_key"] for r in reports.read_report(out).to_pylist() if r["status"] == "ok"}
    for url in storage.list_files(out):
        name = url.rsplit("/", 1)[-1]
        if name.endswith(".tmp") or (".tmp" in name and name.startswith(".")):
            outcome.fail("partial_files", f"{run.name}: temporary file left: {url}")
        elif name.endswith(".png") and "/_dipflow/" not in url and "/html/" not in url:
            import dipcore

            try:
                dipcore.decode_image(storage.read_bytes(url))
            except dipcore.DipcoreError as exc:
                outcome.fail("outputs_corrupt", f"{run.name}: {url} does not decode: {exc}")
    table = runs.read_runs(out)
    if table.num_rows == 0:
        return f"output made, no runs row ({len(ok)} ok)"
    outcomes = table.column("outcome").to_pylist()
    for got in outcomes:
        if got != "interrupted" and not (got == "finished" and ok >= set(keys)):
            outcome.fail("expected_missed", f"{run.name}: the runs table says {got!r} with {len(ok)} of {len(keys)} ok")
    return f"runs row {outcomes[0]!r} ({len(ok)} ok)"


def run_moments(
    work: Path, plan: list[tuple[tuple[str, float], int]], *, parallel: int = 2, log=print
) -> tuple[Outcome, list[tuple[Stopped, str]]]:
    """Every (moment, signal) of `plan` on a fresh output of one dataset, `parallel` runs at a time (each lane its
    own Prefect home), held to the invariants."""
    keys = write_dataset(work / "src")
    outcome = Outcome("signals at random moments", "process fault", "local + Ray + Prefect", "")
    lanes = [work / f"lane{i}" for i in range(parallel)]
    for folder in lanes:
        folder.mkdir(parents=True, exist_ok=True)
    results: list[tuple[Stopped, str]] = []

    def lane(index: int) -> None:
        for i in range(index, len(plan), parallel):
            moment, signum = plan[i]
            again = 0.3 if i % 3 == 2 else None  # every third run: a second signal while the first unwinds
            run = stop_at(work / "src", work / f"out{i:03d}", lanes[index], moment, signum, again=again)
            got = check_stopped(outcome, run, keys)
            results.append((run, got))
            log(f"{run.name:>18}: exit {run.code}, {got}, {run.seconds:.1f} s")

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lane, range(parallel)))
    outcome.listed = len(plan)
    return outcome, results


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--moments", type=int, default=40)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--sigint", type=float, default=0.2, help="share of the moments that send SIGINT")
    a = p.parse_args()
    rng = random.Random(a.seed)
    share = {"start": 0.3, "lease": 0.2, "output": 0.25, "runs": 0.25}
    drawn = [
        m for anchor, f in share.items() for m in moments(max(1, round(a.moments * f)), seed=a.seed, anchor=anchor)
    ]
    plan = [(m, signal.SIGINT if rng.random() < a.sigint else signal.SIGTERM) for m in drawn]
    print(f"seed {a.seed}: {len(plan)} moments")
    with tempfile.TemporaryDirectory() as work:
        outcome, _ = run_moments(Path(work), plan, parallel=a.parallel)
    for note in outcome.notes:
        print("note:", note)
    print("passed" if outcome.passed else f"{len(outcome.notes)} failure(s)")
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
