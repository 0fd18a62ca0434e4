"""The only Ray user: actors that run dipcore on one job — or one pack of compatible jobs — at a time, and the driver
loop that feeds them.

- `RestoreWorker` (`pool.py`) is `pipelines.execution.restorer.Restorer` (per job: read → decode → restore → encode
  → write → one row; jobs of one pack key handed over together as one batch: ``dipcore.restore_batch``) as a Ray
  actor.
- `WorkerPool` (`pool.py`) places one actor per GPU by default (fractions pack small images), or CPU actors on a
  cluster with no GPUs, and replaces dead actors.
- `run_jobs` (`driver.py`) is a plain ``ray.wait`` loop: bounded calls in flight, results in completion order, every
  wait with a timeout, jobs of a dead actor requeued to a live one. Each call takes up to `pack` compatible jobs from
  a `pipelines.execution.packing.PackQueue`; with ``pack="auto"`` the bound is the actor's own (its readiness probe
  says: its thread count on a CPU, 8 on a GPU), and a GPU actor sizes each stacked fit to its free memory. Every
  few seconds the loop asks each busy actor how its fits go (``progress``, answered beside the running call) and
  reads the answers as they come, never waiting for one.
- `run_inline` (`inline.py`) runs the same jobs in this process, without Ray.
- `start_ray`, `ray_session`, `check_cluster` and `check_run_cluster` (`session.py`): a private Ray on loopback, or a
  cluster joined, and what a run asks of that cluster before it writes anything.

Why not ``ray.util.ActorPool``: Ray 2.60's pool no longer hands new calls to a dead actor, but (from its source,
``python/ray/util/actor_pool.py``) an actor there runs one call at a time and the next waits on the driver, so it
idles for a round trip (two are queued here); ``submit`` fixes a call's jobs before the pool picks the actor, while a
pack's size depends on the actor that takes it and retries must go first; a failed call's error does not say which
jobs it carried, and a dead actor is dropped, never replaced (only ``ActorDiedError`` counts as death: after an
``ActorUnavailableError`` the actor goes back to the idle set); and a timed-out call is abandoned while its actor,
still running it, goes back to the idle set (a TODO of Ray's there). Requeueing, replacement and timeouts need the
per-call bookkeeping of `driver.py` either way.
"""

from __future__ import annotations

from pipelines.errors import RayConnectError, WorkerStartError
from pipelines.execution.restorer import JobOutcome, Restorer
from pipelines.execution.workers.driver import RunStats, run_jobs
from pipelines.execution.workers.inline import run_inline
from pipelines.execution.workers.pool import RestoreWorker, WorkerPool
from pipelines.execution.workers.session import check_cluster, check_run_cluster, ray_session, start_ray

__all__ = [
    "JobOutcome",
    "RayConnectError",
    "RestoreWorker",
    "Restorer",
    "RunStats",
    "WorkerPool",
    "WorkerStartError",
    "check_cluster",
    "check_run_cluster",
    "ray_session",
    "run_inline",
    "run_jobs",
    "start_ray",
]
