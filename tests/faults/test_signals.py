"""SIGTERM (what systemd, Kubernetes and `kill` send) and SIGINT at random moments of real `dipflow restore` runs:
every one ends 143 or 130 with one line, no lease left, the runs table's row `interrupted`, no half-written file and
nothing left running (`signal_runs.py`; run it as a script for more moments); every third run gets a second signal
while it stops. And SIGTERM at fixed moments of ``ray.init`` reaches the caller's handler, not Ray's.

The moments are seeded (``DIPFLOW_SIGNAL_SEED``) and printed; one is drawn in each slice of a run's length, so that
start-up, Prefect's server, listing, Ray's start, fits inside ``ray.wait``, writing, compaction and the process's end
each get their share. Two runs at a time: each loads the CPU for the other."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
from signal_runs import moments, run_moments

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads processes from /proc")

SEED = int(os.environ.get("DIPFLOW_SIGNAL_SEED", "25"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_and_sigint_at_random_moments_end_143_and_130_with_nothing_left(tmp_path, ledger):
    rng = random.Random(SEED)
    # 21 SIGTERM moments (a few may come after the end). Those counted from the start end the run within seconds;
    # the later ones wait for a whole start-up and fits (~40 s on 2 busy cores), so they are fewer.
    terms = {"start": 12, "lease": 3, "output": 3, "runs": 3}
    plan = [(m, signal.SIGTERM) for anchor, n in terms.items() for m in moments(n, seed=SEED, anchor=anchor)]
    plan += [(rng.choice(moments(4, seed=SEED + 1, anchor=a)), signal.SIGINT) for a in ("start", "output", "runs")]
    print(f"seed {SEED}: " + ", ".join(f"{signal.Signals(s).name} {d:.2f} s after {a}" for (a, d), s in plan))
    outcome, results = run_moments(tmp_path, plan, parallel=2)
    outcome.what = f"{len(plan)} SIGTERM/SIGINT moments (seed {SEED}) over `dipflow restore`'s whole length"
    sent = [got for run, got in results if run.sent]
    assert len(sent) >= 20, f"too many runs ended before their moment: {len(sent)} of {len(plan)} sent"
    assert any(got.startswith("runs row") for got in sent), "no moment reached the run's end"
    ledger(outcome)


RAY_INIT = """
import os, signal, sys, threading, time
from pipelines import signals
from pipelines.execution import workers
threading.Timer(float(sys.argv[1]), os.kill, (os.getpid(), signal.SIGTERM)).start()
try:
    with signals.sigterm_as_interrupt(forward=False):
        workers.start_ray(num_cpus=1, object_store_memory=80 * 1024 * 1024)
        time.sleep(60)
except KeyboardInterrupt:
    import ray
    ray.shutdown()
    sys.exit(43)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0, 3.5])
def test_sigterm_during_ray_init_reaches_the_callers_handler(delay, tmp_path):
    """While `start_ray` runs ``ray.init``, Ray installs no SIGTERM handler of its own (``sys.exit(15)``, the head
    node's exit 1, absl's abort with a native dump): a SIGTERM at any moment of it reaches the caller's handler."""
    import subprocess
    import sys

    from test_processes import ROOT, _env

    done = subprocess.run(
        [sys.executable, "-c", RAY_INIT, str(delay)],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert done.returncode == 43, (done.returncode, done.stderr[-2000:])
    assert "SIGTERM received" not in done.stderr, done.stderr[-2000:]
