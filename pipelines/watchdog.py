"""Nothing a ``dipflow`` command starts outlives it, however the command ends — SIGKILL included.

`guard()` (called by the CLI before it starts Prefect or Ray) marks the command's environment with a random token
(``DIPFLOW_RUN_TOKEN``), so every process started under it carries the token, whoever its parent is by then:
Prefect's ephemeral API server (``python -m uvicorn``), Ray's GCS server, raylet, monitor, agents and workers. It
also starts this module as a script, a watchdog in a session of its own (the terminal's Ctrl-C does not reach it),
which waits for the command to end and then stops every process of the same user that carries the token, every
descendant of the command it saw while waiting (twice a second), and any child of one: SIGTERM, then SIGKILL after
`GRACE_SECONDS`. After a clean exit there is nothing left to stop.

Why a watchdog (measured with Prefect 3.9 and Ray 2.60 on Linux):

- Prefect 3 has no in-process ephemeral API: ``SubprocessASGIServer`` starts uvicorn with a bare ``Popen`` (no hook
  for ``prctl(PR_SET_PDEATHSIG)``) from whichever thread first needs the API — and that signal follows the
  spawning *thread*, not the process. Its only cleanup is an ``atexit`` handler, which SIGKILL skips: the server
  kept listening for more than 16 minutes after a killed run.
- Ray fate-shares its GCS server and raylet with the driver, but the dashboard and runtime-env agents that raylet
  starts outlived a SIGKILLed driver by more than 20 seconds.
- A process group or session of the command's own would take it out of the terminal's foreground group (Ctrl-C, job
  control), and stopping the caller's group would stop the caller.

The token says what to stop more surely than snapshots of the process tree: a process started an instant before the
kill, or re-parented to init before a snapshot saw it, still carries it; the snapshots add a child that replaced its
environment. Linux only (``/proc``); elsewhere `guard` does nothing. Standard library only:
the watchdog runs as ``python -I …/watchdog.py`` without importing dipflow.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time

__all__ = ["ENV", "descendants", "guard", "marked_processes", "stop_marked"]

ENV = "DIPFLOW_RUN_TOKEN"
POLL_SECONDS = 0.5  # how often the watchdog looks whether the command still runs
GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL
GIVE_UP_SECONDS = 30.0  # the watchdog never outlives the command by more than about this

_watchdog: subprocess.Popen | None = None  # this process's watchdog, once started


def guard() -> None:
    """Mark this process's environment and start its watchdog (once per process; Linux only)."""
    global _watchdog
    if _watchdog is not None or not os.path.isdir("/proc/self"):
        return
    token = secrets.token_hex(16)
    pid = os.getpid()
    env = {k: v for k, v in os.environ.items() if k != ENV}  # the watchdog itself is not marked
    _watchdog = subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), str(pid), str(_start_time(pid)), token],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # holding the command's stdout would keep a reader of its pipe waiting
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    os.environ[ENV] = token


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].decode().split()


def _start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22: start time in clock ticks since boot


def _running(pid: int, start: int | None) -> bool:
    """`pid` is still the process that started at `start`, and not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and (start is None or int(fields[19]) == start)


def _processes() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, start time)}`` of every live process but this one (zombies left out)."""
    found = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and (fields := _stat(int(entry))) and fields[0] != "Z":
            found[int(entry)] = (int(fields[1]), int(fields[19]))
    return found


def descendants(pid: int) -> dict[int, int]:
    """``{pid: start time}`` of the live children, grandchildren … of `pid`."""
    processes = _processes()
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, start) in processes.items():
            if ppid == parent and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def marked_processes(token: str, known: dict[int, int] | None = None) -> dict[int, int]:
    """``{pid: start time}`` of the live processes (other than this one) whose environment carries `token` or that
    are in `known` (the same pid and start time), and of their children, grandchildren …. Processes of other users
    cannot be read, and are included only through `known`."""
    needle = f"{ENV}={token}".encode()
    processes = _processes()
    marked = {pid: start for pid, start in (known or {}).items() if processes.get(pid, (0, None))[1] == start}
    for pid, (_, start) in processes.items():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        if needle in environ:
            marked[pid] = start
    grown = True
    while grown:  # children of marked processes (one that replaced its environment is still ours)
        grown = False
        for pid, (parent, start) in processes.items():
            if parent in marked and pid not in marked:
                marked[pid], grown = start, True
    return marked


def _signal_all(processes: dict[int, int], signum: int) -> None:
    for pid, start in processes.items():
        if _running(pid, start):  # the same process, not a reused pid
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, signum)


def stop_marked(
    token: str, known: dict[int, int] | None = None, *, grace: float = GRACE_SECONDS, give_up: float = GIVE_UP_SECONDS
) -> None:
    """SIGTERM every marked process (`marked_processes`), SIGKILL what is left after `grace`, until none is left or
    `give_up` passes."""
    deadline = time.monotonic() + give_up
    while (processes := marked_processes(token, known)) and time.monotonic() < deadline:
        _signal_all(processes, signal.SIGTERM)
        until = min(deadline, time.monotonic() + grace)
        while time.monotonic() < until and any(_running(p, s) for p, s in processes.items()):
            time.sleep(0.1)
        _signal_all(processes, signal.SIGKILL)
        time.sleep(0.1)


def _watch(pid: int, start: int | None, token: str) -> None:
    """Wait for the command (`pid`, started at `start`) to end, then stop what it left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the command's end ends the watch
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    known: dict[int, int] = {}  # the command's descendants seen so far: a child that scrubbed its environment
    while _running(pid, start):
        known.update(descendants(pid))
        time.sleep(POLL_SECONDS)
    stop_marked(token, known)


if __name__ == "__main__":  # python -I watchdog.py PID START_TIME TOKEN
    _pid, _start, _token = sys.argv[1:4]
    _watch(int(_pid), int(_start) if _start != "None" else None, _token)
