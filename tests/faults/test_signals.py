"""SIGTERM (what systemd, Kubernetes and `kill` send) and SIGINT at random moments of real `dipflow restore` runs:
every one ends 143 or 130 with one line, no lease left, the runs table's row `interrupted`, no half-written file and
nothing left running (`signal_runs.py`; run it as a script for more moments).

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
    terms = {"start": 8, "lease": 4, "output": 4, "runs": 4}  # 20 SIGTERM moments
    plan = [(m, signal.SIGTERM) for anchor, n in terms.items() for m in moments(n, seed=SEED, anchor=anchor)]
    plan += [(rng.choice(moments(4, seed=SEED + 1, anchor=a)), signal.SIGINT) for a in ("start", "output", "runs")]
    print(f"seed {SEED}: " + ", ".join(f"{signal.Signals(s).name} {d:.2f} s after {a}" for (a, d), s in plan))
    outcome, results = run_moments(tmp_path, plan, parallel=2)
    outcome.what = f"{len(plan)} SIGTERM/SIGINT moments (seed {SEED}) over `dipflow restore`'s whole length"
    sent = [got for run, got in results if run.sent]
    assert len(sent) >= len(plan) - 2, f"too many runs ended before their moment: {len(sent)} of {len(plan)} sent"
    assert any(got.startswith("runs row") for got in sent), "no moment reached the run's end"
    ledger(outcome)
