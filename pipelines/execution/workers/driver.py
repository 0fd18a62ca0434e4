"""`run_jobs`: the ``ray.wait`` loop that feeds a `WorkerPool` — bounded calls in flight, results in completion order,
every wait with a timeout, the jobs of a dead or timed-out actor requeued, each busy actor asked how its fits go —
and `RunStats`, the counts of a run (`run_inline` counts the same)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, NodeDiedError, RayActorError, RayError, WorkerCrashedError

from pipelines import jobs as jobs_mod
from pipelines.errors import WorkerStartError
from pipelines.execution.options import Pack
from pipelines.execution.packing import PackQueue
from pipelines.execution.restorer import JobOutcome
from pipelines.execution.workers.messages import first_line
from pipelines.execution.workers.pool import Slot, WorkerPool
from pipelines.jobs import Job
from pipelines.progress import RunningFit

# A worker process that vanished: the actor (and what it ran) is gone, the job itself may be fine elsewhere.
_WORKER_LOST = (RayActorError, WorkerCrashedError, NodeDiedError)  # RayActorError covers ActorDiedError
_SETTLE_SECONDS = 10.0  # how long the calls of a dead actor may take to resolve before we judge them
PROGRESS_EVERY = 2.0  # seconds between two questions to a busy actor about its running fits


@dataclass
class RunStats:
    """Counts of one `run_jobs` call."""

    ok: int = 0
    errors: int = 0
    failed_attempts: int = 0  # attempts lost to dead workers or Ray errors (each retried or ended as an error row)
    restarts: int = 0  # actors replaced
    packed: int = 0  # jobs delivered from calls of more than one job (batched fits)
    seconds: float = 0.0
    first_dispatch: float | None = None  # time.monotonic() when the first job was handed to a worker

    def count(self, outcome: JobOutcome, *, batch: int = 1) -> None:
        """One job delivered, from a call of `batch` jobs (both runners count here)."""
        if outcome.row.get("status") == "ok":
            self.ok += 1
        else:
            self.errors += 1
        self.packed += batch > 1


@dataclass
class _Call:
    ref: Any
    items: list[tuple[Job, int]]  # (job, attempt number) of each job in the call
    slot: Slot
    generation: int
    seq: int


class _Driver:
    """The state of one `run_jobs` call; each method is one step of the loop."""

    def __init__(
        self,
        jobs: Iterable[Job],
        pool: WorkerPool,
        on_result: Callable[[JobOutcome], None],
        *,
        max_in_flight: int | None,
        max_attempts: int,
        timeout: float | None,
        poll: float,
        startup_timeout: float,
        pack: Pack,
        log: Callable[[str], None],
        check: Callable[[], None] | None = None,
        on_progress: Callable[[list[RunningFit]], None] | None = None,
        progress_every: float | None = None,
    ) -> None:
        check_pack(pack)
        self.check = check or (lambda: None)
        self.on_progress = on_progress
        self.progress_every = PROGRESS_EVERY if progress_every is None else progress_every
        self.asked: dict[Any, tuple[Slot, int]] = {}  # progress questions not answered yet → (slot, generation)
        self.answers: dict[int, list[RunningFit]] = {}  # slot index → its actor's last answer
        self.last_asked = -math.inf
        self.queue = PackQueue(jobs)
        self.pool, self.on_result, self.log, self.pack = pool, on_result, log, pack
        self.max_in_flight = max_in_flight or 2 * len(pool.slots)  # 2 per actor: the next job waits in its queue
        self.per_actor = max(1, math.ceil(self.max_in_flight / len(pool.slots)))
        self.max_attempts, self.timeout, self.poll = max(1, max_attempts), timeout, poll
        self.startup_timeout = startup_timeout
        self.startup_deadline = time.monotonic() + startup_timeout  # moved on whenever an actor is replaced
        self.calls: dict[Any, _Call] = {}
        self.pings: dict[Any, tuple[Slot, int]] = {}
        self.seq = 0
        self.stats = RunStats()

    def run(self) -> RunStats:
        started = time.monotonic()
        for slot in self.pool.slots:
            self._ping(slot)
        while self.queue or self.calls:
            self.check()
            self._submit()
            refs = [*self.calls, *self.pings]
            if not refs:
                raise WorkerStartError("no worker is left to run the remaining jobs: " + self._retired_reasons())
            ready, rest = ray.wait(refs, num_returns=1, timeout=self._wait_seconds())
            if ready and rest:  # drain everything else that is ready too, without waiting
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                if ref in self.pings:
                    self._on_ping(ref)
                elif ref in self.calls:  # else: already settled when its actor was found dead
                    self._on_call(self.calls.pop(ref))
            self._check_timeouts()
            self._check_startup()
            self._watch()
        self.stats.restarts = self.pool.restarts
        self.stats.seconds = time.monotonic() - started
        return self.stats

    # -- submitting

    def _ping(self, slot: Slot) -> None:
        self.pings[slot.actor.info.remote()] = (slot, slot.generation)

    def _submit(self) -> None:
        while self.queue and len(self.calls) < self.max_in_flight:
            free = [s for s in self.pool.slots if s.ready and not s.retired and s.in_flight < self.per_actor]
            if not free:
                return
            slot = min(free, key=lambda s: s.in_flight)
            items = self.queue.take(self._pack_limit(slot))
            ref = slot.actor.run_batch.remote([job for job, _ in items], self.pack)
            self.stats.first_dispatch = self.stats.first_dispatch or time.monotonic()
            self.seq += 1
            self.calls[ref] = _Call(ref, items, slot, slot.generation, self.seq)
            slot.in_flight += 1
            slot.busy_since = slot.busy_since or time.monotonic()

    def _pack_limit(self, slot: Slot) -> int:
        """Jobs per call: `pack` when it is a number; for "auto" the bound the actor gave in its probe."""
        return self.pack if isinstance(self.pack, int) else int((slot.info or {}).get("pack_limit", 1))

    # -- results

    def _on_ping(self, ref: Any) -> None:
        slot, generation = self.pings.pop(ref)
        if generation != slot.generation:
            return
        try:
            slot.info = ray.get(ref, timeout=self.poll)
            slot.ready, slot.start_failures = True, 0
        except RayError as exc:
            slot.start_failures += 1
            if slot.start_failures >= 3:  # a constructor that keeps failing will not start to work
                slot.retired = first_line(exc)
                self.log(f"worker {slot.index} could not start ({slot.retired}); giving it up")
            else:
                self._replace(slot)

    def _replace(self, slot: Slot) -> None:
        self.asked = {ref: asked for ref, asked in self.asked.items() if asked[0] is not slot}  # never to be read
        self.answers.pop(slot.index, None)
        self.pool.replace(slot)
        self._ping(slot)
        self.startup_deadline = time.monotonic() + self.startup_timeout

    def _on_call(self, call: _Call) -> None:
        try:
            outcomes = ray.get(call.ref, timeout=self.poll)
        except _WORKER_LOST as exc:
            self.calls[call.ref] = call  # settled with the rest of its actor's calls
            self._lose_slot(call.slot, call.generation, f"worker lost: {first_line(exc)}")
            return
        except (RayError, GetTimeoutError) as exc:
            self._slot_done(call)
            self.queue.push_front(self._failed(call, f"Ray error: {first_line(exc)}"))
            return
        self._slot_done(call)
        self._deliver(call, outcomes)

    def _deliver(self, call: _Call, outcomes: list[JobOutcome]) -> None:
        for (_job, attempt), outcome in zip(call.items, outcomes, strict=True):
            outcome.row["attempts"] = attempt
            self.stats.count(outcome, batch=len(call.items))
            self.on_result(outcome)

    def _slot_done(self, call: _Call) -> None:
        slot = call.slot
        if call.generation == slot.generation:
            slot.in_flight -= 1
            slot.busy_since = time.monotonic() if slot.in_flight else None  # the next queued call starts now

    def _failed(self, call: _Call, reason: str) -> list[tuple[Job, int]]:
        """One attempt lost for every job of the call: those with attempts left are returned, to retry first
        thing (each alone: see PackQueue); the others end as error rows."""
        retry = []
        for job, attempt in call.items:
            self.stats.failed_attempts += 1
            self.log(f"{job.key}: attempt {attempt} of {self.max_attempts} failed: {reason}")
            if attempt < self.max_attempts:
                retry.append((job, attempt + 1))
                continue
            message = f"failed after {attempt} attempt(s); last: {reason}"
            outcome = JobOutcome(job, jobs_mod.error_row(job, message, attempts=attempt))
            self.stats.count(outcome)
            self.on_result(outcome)
        return retry

    def _lose_slot(self, slot: Slot, generation: int, reason: str, *, kill: bool = False) -> None:
        """The actor of `slot` is dead (or is killed now, for a timeout): settle all its calls, then replace it.

        A sync actor runs calls in submission order, so the oldest call that did not complete was the one running:
        each of its jobs loses an attempt; the calls queued behind it never started and their jobs go back to the
        queue as they were. Ray
        resolves every call of a dead actor (a reply already on its way still counts as done), so we wait for all
        of them to settle before judging; a call that completed is delivered as usual.
        """
        if kill:
            ray.kill(slot.actor, no_restart=True)
        mine = sorted(
            (c for c in self.calls.values() if c.slot is slot and c.generation == generation), key=lambda c: c.seq
        )
        for c in mine:
            del self.calls[c.ref]
        if mine:
            ray.wait([c.ref for c in mine], num_returns=len(mine), timeout=_SETTLE_SECONDS)
        head_failed = False
        back: list[tuple[Job, int]] = []  # to the head of the queue, in this order
        for c in mine:
            try:
                if ray.wait([c.ref], timeout=0)[0]:
                    self._deliver(c, ray.get(c.ref, timeout=self.poll))
                    continue
            except (RayError, GetTimeoutError):
                pass
            if not head_failed:
                head_failed = True
                back += self._failed(c, reason)  # a batch loses one attempt for each of its jobs
            else:
                back += c.items
        self.queue.push_front(back)
        if generation == slot.generation and not slot.retired:
            self._replace(slot)

    # -- progress of the running fits

    def _wait_seconds(self) -> float:
        """How long one ``ray.wait`` may block: `poll`, or less when the next progress question is due sooner."""
        if self.on_progress is None:
            return self.poll
        return max(0.0, min(self.poll, self.last_asked + self.progress_every - time.monotonic()))

    def _watch(self) -> None:
        """Read the progress answers that have arrived (never waiting: a slow or dead actor is the loop's business,
        judged by its calls), hand the fits still in flight to `on_progress`, and ask each busy actor again every
        `progress_every` seconds, one question outstanding per actor."""
        if self.on_progress is None:
            return
        if self.asked:
            answered = ray.wait(list(self.asked), num_returns=len(self.asked), timeout=0)[0]
            for ref in answered:
                slot, generation = self.asked.pop(ref)
                try:
                    fits = ray.get(ref, timeout=0)
                except (RayError, GetTimeoutError):
                    continue
                if generation == slot.generation:
                    self.answers[slot.index] = fits
            if answered:
                self.on_progress(self._running())
        if time.monotonic() - self.last_asked < self.progress_every:
            return
        self.last_asked = time.monotonic()
        waiting = {slot.index for slot, _ in self.asked.values()}
        for slot in self.pool.slots:
            if slot.ready and slot.in_flight and not slot.retired and slot.index not in waiting:
                self.asked[slot.actor.progress.remote()] = (slot, slot.generation)

    def _running(self) -> list[RunningFit]:
        """The fits of the actors' last answers whose jobs are still in flight on that actor (a job delivered since
        is not running any more)."""
        flying = {
            (slot.index, job.dataset, job.key)
            for c in self.calls.values()
            if c.generation == (slot := c.slot).generation
            for job, _ in c.items
        }
        return [f for i, fits in self.answers.items() for f in fits if (i, f.dataset, f.key) in flying]

    # -- watchdogs

    def _check_timeouts(self) -> None:
        if self.timeout is None:
            return
        now = time.monotonic()
        for slot in self.pool.slots:
            if not slot.in_flight or slot.busy_since is None:
                continue
            running = min(
                (c for c in self.calls.values() if c.slot is slot and c.generation == slot.generation),
                key=lambda c: c.seq,
                default=None,
            )
            limit = self.timeout * (len(running.items) if running else 1)  # the timeout is per job of the call
            if now - slot.busy_since > limit:
                self._lose_slot(slot, slot.generation, f"timed out after {limit:g} s", kill=True)

    def _check_startup(self) -> None:
        if any(s.ready for s in self.pool.slots) or time.monotonic() < self.startup_deadline:
            return
        opts = {k: v for k, v in self.pool.options.items() if k != "scheduling_strategy"}
        raise WorkerStartError(
            f"no worker started in time: each asks for {opts}; the cluster has {ray.cluster_resources()}"
            + (f" ({self._retired_reasons()})" if any(s.retired for s in self.pool.slots) else "")
        )

    def _retired_reasons(self) -> str:
        """Why the workers were given up, each reason once: "workers 0, 1: ModuleNotFoundError: …"."""
        by_reason: dict[str, list[str]] = {}
        for slot in self.pool.slots:
            if slot.retired:
                by_reason.setdefault(slot.retired, []).append(str(slot.index))
        return (
            "; ".join(f"worker{'s' if len(ids) > 1 else ''} {', '.join(ids)}: {why}" for why, ids in by_reason.items())
            or "none started"
        )


def check_pack(pack: Pack) -> None:
    if pack != "auto" and (isinstance(pack, bool) or not isinstance(pack, int) or pack < 1):
        raise ValueError(f"pack must be a positive integer or 'auto', not {pack!r}")


def run_jobs(
    jobs: Iterable[Job],
    *,
    workers: WorkerPool,
    on_result: Callable[[JobOutcome], None],
    max_in_flight: int | None = None,
    max_attempts: int = 3,
    timeout: float | None = None,
    poll: float = 1.0,
    startup_timeout: float = 600.0,
    pack: Pack = "auto",
    log: Callable[[str], None] | None = None,
    check: Callable[[], None] | None = None,
    on_progress: Callable[[list[RunningFit]], None] | None = None,
    progress_every: float | None = None,
) -> RunStats:
    """Run `jobs` on the actors of `workers`, calling `on_result` on the driver for each finished job, in
    completion order, exactly once per job (an ``ok`` or ``error`` row).

    Each call to an actor takes up to `pack` jobs of one pack key (``"auto"``: up to the actor's own bound, its
    thread count on a CPU); the actor runs them as one batch. At most `max_in_flight` calls are outstanding
    (default: two per actor, so none idles between calls). An attempt that dies with its actor, or runs past
    `timeout` seconds per job of its call, is retried on a live or restarted actor until `max_attempts` — a batch
    loses an attempt for each of its jobs, and each retries alone; then the job ends as an error row and the run
    goes on. Every ``ray.wait`` returns within `poll` seconds. Raises `WorkerStartError` when no actor is ready within
    `startup_timeout` seconds. `check` is called on every turn of the loop: what it raises (the run's lease lost)
    stops the run within `poll` seconds. `on_progress`, when given, is handed the fits running on the actors
    (`pipelines.progress.RunningFit`) whenever an actor has answered the question the loop asks each busy one every
    `progress_every` seconds (default `PROGRESS_EVERY`); the answers are read when they are there, never waited for.
    """
    driver = _Driver(
        jobs,
        workers,
        on_result,
        max_in_flight=max_in_flight,
        max_attempts=max_attempts,
        timeout=timeout,
        poll=poll,
        startup_timeout=startup_timeout,
        pack=pack,
        log=log or logging.getLogger("dipflow.workers").warning,
        check=check,
        on_progress=on_progress,
        progress_every=progress_every,
    )
    return driver.run()
