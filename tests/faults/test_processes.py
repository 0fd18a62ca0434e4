"""Processes that die, and the processes a run starts, seen from outside: a private Ray listens on loopback only;
SIGINT, SIGTERM and SIGKILL of `dipflow restore` end it cleanly (130, 143, and nothing it started outlives it:
`pipelines.watchdog`) and a rerun finishes the rest; a Ray actor killed mid-fit costs one attempt and no row.

Real `dipflow restore` processes in sessions of their own, with Prefect's ephemeral server and a private Ray, started
without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, as users run it. Processes and sockets are read from /proc (Linux)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from invariants import (
    Outcome,
    check_not_redone,
    check_outputs,
    check_processes,
    check_rows,
    check_unchanged,
    restore_workers,
    snapshot,
)

from pipelines.reporting import reports

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--task", "denoise", "--preset", "fast", "--iterations", "2", "--channels", "8", "--quiet", "--workers", "1"]

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads processes and sockets from /proc")


# --------------------------------------------------------------------------------------------- /proc, read plainly


def _stat(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].decode().split()  # state, ppid, …; field 22 (start time) is [19]


def _alive(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start


def _descendants(root: int) -> dict[int, str]:
    """``{pid: start time}`` of every live process under `root`, `root` included."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[0] != "Z":
            parents[int(entry)] = (int(fields[1]), fields[19])
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in parents and pid not in found:
            found[pid] = parents[pid][1]
            frontier += [child for child, (parent, _) in parents.items() if parent == pid]
    return found


def _kill_left(proc: subprocess.Popen, seen: dict[int, str]) -> None:
    """SIGKILL the command's process group and every process seen under it that still lives, then reap it: what a
    test leaves behind, whatever it asserted."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid, start in seen.items():
        if _alive(pid, start):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))  # four host-order words


def _listening() -> dict[str, tuple[str, int]]:
    """``{socket inode: (address, port)}`` of every listening TCP socket (IPv4 and IPv6)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    address, port = fields[1].split(":")
                    found[fields[9]] = (str(_address(address)), int(port, 16))
    return found


def _listeners(pids: dict[int, str]) -> dict[tuple[str, int], str]:
    """``{(address, port): command line}`` of the listening sockets that `pids` hold."""
    sockets, held = _listening(), {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and (inode := link[8:-1]) in sockets:
                    held[sockets[inode]] = command[:160]
    return held


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


# ------------------------------------------------------------------------------------------------- a real run


def _env(tmp_path: Path) -> dict[str, str]:
    """A plain user's environment: no Prefect server (the ephemeral one starts), no Ray loopback switch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DIPFLOW_"))}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


class Run:
    """`dipflow restore` in a session of its own, watched: its descendants and their listening sockets, polled."""

    def __init__(self, src: Path, out: Path, env: dict[str, str], logs: Path) -> None:
        self.out, self.logs = out, logs
        argv = [sys.executable, "-m", "pipelines.cli", "restore", str(src), "-o", str(out), *FAST]
        with open(logs / "stdout", "w") as stdout, open(logs / "stderr", "w") as stderr:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True
            )
        self.seen: dict[int, str] = {}
        self.commands: dict[int, str] = {}
        self.listeners: dict[tuple[str, int], str] = {}

    def poll(self) -> None:
        found = _descendants(self.proc.pid)
        for pid in found:  # read again each time: a process seen between fork and exec shows its parent's
            with contextlib.suppress(OSError):
                self.commands[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
        self.seen.update(found)
        self.listeners.update(_listeners(found))

    def watch_until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out; stderr: {self.stderr()}"
            self.poll()
            time.sleep(0.2)

    def outputs_written(self) -> int:
        return len(list(self.out.glob("*.png"))) if self.out.exists() else 0

    def running_jobs(self) -> bool:
        """Images being restored (the first output is written; its row may still be in the report writer's
        buffer), and the run not over."""
        assert self.proc.poll() is None, f"the run ended early ({self.proc.returncode}): {self.stderr()}"
        return self.outputs_written() > 0

    def stderr(self) -> str:
        return (self.logs / "stderr").read_text()

    def survivors(self) -> dict[int, str]:
        return {pid: self.commands.get(pid, "?") for pid, start in self.seen.items() if _alive(pid, start)}

    def wait_for_no_survivors(self, timeout: float) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while (left := self.survivors()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def clean_up(self) -> None:
        """Whatever still runs (after a failed assertion) is killed, by pid and start time."""
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid, start in self.seen.items():
            if _alive(pid, start):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


@pytest.fixture
def dataset(tmp_path, write_images):
    keys = [f"im{i:02d}.png" for i in range(30)]  # enough that the run is still busy when the signal lands
    write_images(str(tmp_path / "src"), keys, size=16)
    (tmp_path / "logs").mkdir()
    return tmp_path / "src", keys


def _assert_loopback_only(listeners: dict[tuple[str, int], str]) -> None:
    exposed = {addr: cmd for addr, cmd in listeners.items() if not _loopback(addr[0])}
    assert not exposed, f"listening beyond loopback: {exposed}"
    commands = " ".join(listeners.values())
    assert "gcs_server" in commands and "raylet" in commands and "uvicorn" in commands, listeners


# ----------------------------------------------------------------------------------------------------- the tests


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_private_ray_listens_on_loopback_only_whatever_the_environment(tmp_path):
    """RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 asks Ray for the host's routable address; `start_ray` still binds every
    listener of its private instance (GCS, raylet, agents, workers, driver) to loopback."""
    script = (
        "import os, sys\n"
        "from pipelines.execution import workers\n"
        "import ray\n"
        "workers.start_ray(num_cpus=1, object_store_memory=80 * 1024 * 1024)\n"
        "print(ray.get(ray.remote(lambda: os.getpid()).remote(), timeout=120), flush=True)\n"
        "sys.stdin.read()\n"
        "ray.shutdown()\n"
    )
    env = {**_env(tmp_path), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    seen: dict[int, str] = {}
    try:
        worker = int(proc.stdout.readline())  # a worker process ran a task: the whole node is up
        listeners: dict[tuple[str, int], str] = {}
        for _ in range(15):  # agents open their ports a little later
            seen.update(_descendants(proc.pid))
            listeners.update(_listeners(seen))
            time.sleep(0.2)
        assert worker in seen
        exposed = {addr: cmd for addr, cmd in listeners.items() if not _loopback(addr[0])}
        assert not exposed, f"listening beyond loopback: {exposed}"
        commands = " ".join(listeners.values())
        assert "gcs_server" in commands and "raylet" in commands, listeners
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        _kill_left(proc, seen)


# What each signal must end in: the exit a shell reports, and the one line on stderr (None: no chance to print).
SIGNALS = {
    "SIGINT": (signal.SIGINT, 128 + signal.SIGINT, "dipflow: interrupted; run the same command again to resume"),
    "SIGTERM": (
        signal.SIGTERM,
        128 + signal.SIGTERM,
        "dipflow: terminated (SIGTERM); run the same command again to resume",
    ),
    "SIGKILL": (signal.SIGKILL, -signal.SIGKILL, None),
}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_driver_stopped_mid_run_leaves_nothing_behind_and_a_rerun_finishes_the_rest(name, tmp_path, dataset, ledger):
    """A plain user's `dipflow restore` (its own ephemeral Prefect, a private Ray, no loopback switch) stopped by
    `name` once it writes outputs: the exit and the one line expected, every listener on loopback, nothing it
    started alive 30 s later (SIGKILL: the watchdog's work), and a rerun that restores exactly what was left (after
    SIGKILL, also the images whose rows were still in the report writer's buffer)."""
    sig, code, line = SIGNALS[name]
    src, keys = dataset
    out, env = tmp_path / "out", _env(tmp_path)
    inputs = snapshot(str(src))
    outcome = Outcome(f"driver {name}", "process fault", "local + Ray + Prefect", f"{name} to `dipflow restore`")
    run = Run(src, out, env, tmp_path / "logs")
    try:
        run.watch_until(run.running_jobs, timeout=240)
        if name == "SIGKILL":
            started = " ".join(run.commands.values())
            assert "uvicorn" in started and "raylet" in started and "watchdog" in started, run.commands
        run.proc.send_signal(sig)
        run.watch_until(lambda: run.proc.poll() is not None, timeout=120)
        if run.proc.returncode != code:
            outcome.fail("unreadable_errors", f"exit {run.proc.returncode}, expected {code}: {run.stderr()[-400:]!r}")
        if line is not None and run.stderr().strip().splitlines() != [line]:
            outcome.fail("unreadable_errors", f"stderr was {run.stderr()[-400:]!r}")
        _assert_loopback_only(run.listeners)  # a plain run, without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
        for pid, command in run.wait_for_no_survivors(30).items():
            outcome.fail("processes_left", f"pid {pid} ({command}) alive 30 s after {name}")
    finally:
        run.clean_up()
    first = reports.read_report(str(out)).to_pylist()
    done_first = {r["image_key"] for r in first if r["status"] == "ok"}
    assert len(done_first) < len(keys), "the run was over before the signal: the case did not run"

    rerun = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "restore", str(src), "-o", str(out), *FAST],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    rows = reports.read_report(str(out)).to_pylist()
    second = [r for r in rows if r["run_id"] not in {r["run_id"] for r in first}]
    check_rows(outcome, set(keys), second, expect=dict.fromkeys(keys, "ok"), done=done_first)
    check_not_redone(outcome, first, second)
    # SIGKILL can land inside a write: its hidden temporary file stays, which no reader lists (pyarrow skips
    # names starting with "."); it is counted only where a run had the chance to clean up.
    check_outputs(outcome, str(out), rows, hidden_temporaries_allowed=name == "SIGKILL")
    check_unchanged(outcome, inputs, snapshot(str(src)), "inputs")
    ledger(outcome)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_actor_killed_mid_fit_costs_one_attempt_and_no_row(
    ray_local, prefect_harness, tmp_path, write_images, ledger
):
    """The kernel's OOM killer, played by SIGKILL: one busy actor's process dies inside a fit; its job is retried on
    a replacement and every image ends with one ok row."""
    from pipelines import flows

    keys = [f"img{i}.png" for i in range(6)]
    write_images(str(tmp_path / "src"), keys, size=32)
    inputs = snapshot(str(tmp_path / "src"))
    outcome = Outcome("actor killed mid-fit", "process fault", "local + Ray", "SIGKILL of a busy actor's process")
    killed: list[int] = []

    def kill_one_busy_actor() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if list((tmp_path / "out").glob("*.png")):  # the actors are warm, and inside their next fits
                for pid in sorted(restore_workers())[:1]:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_busy_actor, daemon=True)
    killer.start()
    # 150 iterations: a second or more per image on a CPU, so that the kill lands inside a fit.
    slow_fits = {"task": "denoise", "preset": "fast", "iterations": 150, "channels": 8}
    first = flows.restore_dataset(str(tmp_path / "src"), str(tmp_path / "out"), slow_fits)
    killer.join(timeout=10)
    assert killed, "no actor was seen busy: the case did not run"
    rows = reports.read_report(str(tmp_path / "out"), run_id=first["run_id"]).to_pylist()
    check_rows(outcome, set(keys), rows, expect=dict.fromkeys(keys, "ok"))
    if not any(r["attempts"] == 2 for r in rows):
        outcome.notes.append("the kill landed between two jobs: none needed a second attempt")
    check_outputs(outcome, str(tmp_path / "out"), rows)
    check_unchanged(outcome, inputs, snapshot(str(tmp_path / "src")), "inputs")
    check_processes(outcome, restore_workers())
    ledger(outcome)


def test_the_watchdog_stops_what_a_killed_command_started_and_nothing_else(tmp_path):
    """`watchdog.guard()` in a stand-in command that starts a grandchild through a shell that exits (so it is
    re-parented away from the command) and a child with a scrubbed environment; after a SIGKILL of the command both
    are stopped, while a process started beside it, unmarked, runs on."""
    script = (
        "import os, subprocess, sys, time\n"
        "from pipelines import watchdog\n"
        "watchdog.guard()\n"
        "subprocess.run(['sh', '-c', 'sleep 300 & echo $!'], stdout=sys.stdout, check=True)\n"  # orphaned grandchild
        "scrubbed = subprocess.Popen(['sleep', '300'], env={'PATH': os.environ['PATH']})\n"  # a child, unmarked
        "print(scrubbed.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIPFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    command = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    pids = []
    try:
        pids = [int(command.stdout.readline()), int(command.stdout.readline())]
        starts = {pid: _stat(pid)[19] for pid in pids}
        time.sleep(2)  # the watchdog looks for the command's descendants twice a second
        command.kill()
        assert command.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while any(_alive(p, s) for p, s in starts.items()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p, s in starts.items() if _alive(p, s)], "the watchdog left them running"
        assert bystander.poll() is None
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        bystander.kill()
        bystander.wait(timeout=30)
