"""Ray actors that run dipcore on one job — or one pack of compatible jobs — at a time, and the driver loop that
feeds them.

- `RestoreWorker` is `pipelines.execution.restorer.Restorer` (per job: read → decode → restore → encode → write →
  one row; jobs of one pack key handed over together as one batch: ``dipcore.restore_batch``) as a Ray actor.
- `WorkerPool` places one actor per GPU by default (fractions pack small images), or CPU actors on a cluster with no
  GPUs, and replaces dead actors.
- `run_jobs` is a plain ``ray.wait`` loop: bounded calls in flight, results in completion order, every wait with a
  timeout, jobs of a dead actor requeued to a live one. Each call takes up to `pack` compatible jobs from a
  `pipelines.execution.packing.PackQueue`; with ``pack="auto"`` the bound is the actor's own (its readiness probe
  says: its thread count on a CPU, 8 on a GPU), and a GPU actor sizes each stacked fit to its free memory. Every
  few seconds the loop asks each busy actor how its fits go (``progress``, answered beside the running call) and
  reads the answers as they come, never waiting for one.

Why not ``ray.util.ActorPool``: Ray 2.60's pool no longer hands new calls to a dead actor, but (from its source,
``python/ray/util/actor_pool.py``) an actor there runs one call at a time and the next waits on the driver, so it
idles for a round trip (two are queued here); ``submit`` fixes a call's jobs before the pool picks the actor, while a
pack's size depends on the actor that takes it and retries must go first; a failed call's error does not say which
jobs it carried, and a dead actor is dropped, never replaced (only ``ActorDiedError`` counts as death: after an
``ActorUnavailableError`` the actor goes back to the idle set); and a timed-out call is abandoned while its actor,
still running it, goes back to the idle set (a TODO of Ray's there). Requeueing, replacement and timeouts need the
per-call bookkeeping below either way.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, NodeDiedError, RayActorError, RayError, WorkerCrashedError

from pipelines import jobs as jobs_mod
from pipelines import signals
from pipelines.errors import RayConnectError, WorkerStartError
from pipelines.execution import reach
from pipelines.execution.options import Pack
from pipelines.execution.packing import PackQueue
from pipelines.execution.restorer import JobOutcome, Restorer
from pipelines.jobs import Job
from pipelines.progress import RunningFit

__all__ = [
    "JobOutcome",
    "RayConnectError",
    "RestoreWorker",
    "Restorer",
    "RunStats",
    "WorkerPool",
    "WorkerStartError",
    "check_cluster",
    "ray_session",
    "run_inline",
    "run_jobs",
    "start_ray",
]

# A worker process that vanished: the actor (and what it ran) is gone, the job itself may be fine elsewhere.
_WORKER_LOST = (RayActorError, WorkerCrashedError, NodeDiedError)  # RayActorError covers ActorDiedError
_SETTLE_SECONDS = 10.0  # how long the calls of a dead actor may take to resolve before we judge them
PROGRESS_EVERY = 2.0  # seconds between two questions to a busy actor about its running fits


# max_restarts=0: the driver replaces a dead actor itself and requeues its jobs (run_jobs). The "progress" group
# runs `progress` on a thread of its own, beside a running `run_batch`; every other method stays in the default
# group, one call at a time in submission order (Ray keeps an actor whose default group runs one call at a time in
# order), which `_Driver._lose_slot` relies on.
@ray.remote(max_restarts=0, concurrency_groups={"progress": 1})
class RestoreWorker(Restorer):
    """`Restorer` as a Ray actor: resources come from ``.options(num_gpus=…, num_cpus=…)``; the device from the
    GPU Ray assigned (CUDA when torch sees it) and torch's threads from the CPUs it assigned."""

    def __init__(self, storage_options: dict | None = None, engine: Any = None) -> None:
        import torch

        ctx = ray.get_runtime_context()
        cpus = ctx.get_assigned_resources().get("CPU", 0.0)
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU(s), so the first visible one is ours.
        device = "cuda:0" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        super().__init__(
            storage_options, device=device, threads=max(1, int(cpus)), node=ctx.get_node_id(), engine=engine
        )
        # The first Adam step imports torch._dynamo (seconds): pay it while starting, not inside a job's timeout.
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])

    @ray.method(concurrency_group="progress")
    def progress(self) -> list[Any]:
        """`Restorer.progress`, answered while a call runs."""
        return super().progress()


# ---------------------------------------------------------------------------------------------------- Ray setup


def start_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
    connect_timeout: float = 30.0,
) -> bool:
    """Join the cluster at `address` (``auto``, ``host:6379``, ``ray://head:10001``; None: ``RAY_ADDRESS`` when it
    is set) within `connect_timeout` seconds (`RayConnectError` otherwise, see `_join`), or start a private local
    instance when it is None/"local": every process of it listening on the loopback interface only
    (`_loopback_node`; `WorkerStartError` if Ray bound another address), no dashboard, no usage reports,
    `num_cpus`/`num_gpus` as given (Ray 2.60 guards its ports with token authentication). The SIGTERM handler of
    the caller survives ``ray.init`` (`_keep_sigterm_handler`). Returns True when this call connected (so the caller
    shuts Ray down), False when Ray was already up in this process (its owner shuts it down)."""
    if ray.is_initialized():
        return False
    common = {"logging_level": logging.ERROR, "log_to_driver": False}  # Ray's warnings would tear the progress bar
    with _keep_sigterm_handler(), _shut_down_if_interrupted():
        target = _resolve(address)
        if target is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a private instance reports nothing anywhere
            with _loopback_node():
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    object_store_memory=object_store_memory,
                    include_dashboard=False,
                    **common,
                )
            node_ip = ray.util.get_node_ip_address()
            if node_ip not in _LOOPBACK:
                ray.shutdown()
                raise WorkerStartError(f"the private Ray instance bound {node_ip}, not the loopback interface")
        else:
            _join(target, time.monotonic() + connect_timeout, common)
    return True


def check_cluster(address: str | None, connect_timeout: float = 30.0) -> int | None:
    """`RayConnectError` unless the cluster that `start_ray(address)` would join answers within `connect_timeout`
    seconds; what a run asks before it writes anything, connecting nothing. Returns how many nodes the cluster has
    alive now — None for a private instance (nothing to ask) and for Ray Client (its head does not say)."""
    target = _resolve(address)
    if target is None:
        return None
    alive = _probe(target, time.monotonic() + connect_timeout)
    return None if target.client else len(alive)


def _resolve(address: str | None) -> reach.Target | None:
    """The cluster `address` means, or None for a private instance. ``auto`` (and None) take ``RAY_ADDRESS`` when
    it is set, as ``ray.init`` does; ``auto`` then the address file the last ``ray start`` on this machine wrote
    (``/tmp/ray/ray_current_cluster``). Unlike ``ray.init``, ``auto`` never falls back to any GCS process found
    running here: that could be another user's private dipflow instance."""
    if address == "local":
        return None
    if address not in (None, "auto"):
        reach.split(address)  # a malformed one is said before anything else
        return reach.Target(address, address, "given")
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        reach.split(env)
        return reach.Target(address, env, "RAY_ADDRESS")
    if address is None and env != "auto":
        return None
    from ray._private.utils import get_ray_address_file, read_ray_address  # Ray's own reader of its address file

    where = get_ray_address_file(None)
    found = read_ray_address(None)
    if not found:
        raise RayConnectError(
            f"no Ray cluster to join for the address auto: {where} does not exist (`ray start --head` writes it on "
            "the machine it runs on); start a head as docs/deploy.md says, give its host:port, or leave the Ray "
            "address out to run on a private Ray on this machine"
        )
    return reach.Target(address or "RAY_ADDRESS=auto", found, where)


def _probe(target: reach.Target, deadline: float) -> list[str]:
    """Wait until the head answers (TCP, then its GCS lists its nodes; Ray Client: TCP only) or `deadline`
    passes. Returns the addresses of the cluster's nodes alive now (Ray Client: none known)."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.exceptions import AuthenticationError

    if target.source != "given":  # as ray.init does for a cluster it found itself: a token on file is used
        quiet = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its warning that token mode is on would be a second line on stderr
        try:
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        finally:
            quiet.setLevel(level)
    reach.wait_reachable(target, deadline)
    if target.client:
        return []
    while True:
        try:  # Ray's own client: blocks up to 5 s when something that is not a head listens there
            nodes = GcsClient(address=target.address).get_all_node_info(timeout=max(1, deadline - time.monotonic()))
            alive = [n.node_manager_address for n in nodes.values() if n.state == GcsNodeInfo.ALIVE]
            break
        except AuthenticationError:
            raise reach.fail(
                target,
                "the head refused this driver's token",
                "that RAY_AUTH_MODE=token is set here and the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                "~/.ray/auth_token) is the head's",
            ) from None
        except Exception as exc:  # noqa: BLE001 - a head still starting, or no head: retried until the deadline
            if time.monotonic() >= deadline:
                raise reach.fail(
                    target,
                    f"the port answers but not as a Ray head ({_first_line(exc)})",
                    "that the port is the one `ray start --head` printed (GCS, 6379 by default)",
                ) from None
            time.sleep(0.5)
    return alive


def _join(target: reach.Target, deadline: float, common: dict[str, Any]) -> None:
    """``ray.init`` on the cluster `target`, once `_probe` has found its head.

    A head on this machine's loopback interface (docs/deploy.md, section 1) is joined on loopback: given
    ``127.0.0.1:6379`` or its address file, ``ray.init`` turns the host into this machine's routable address
    (``services.canonicalize_bootstrap_address`` → ``resolve_ip_for_localhost``), where that head does not listen,
    and retries for minutes — unless Ray's single-machine mode is on, which `_loopback_node` switches on for the
    connection; the driver's node address is then the head's (``_node_ip_address``), so Ray attaches it to that
    node. Any other head is joined as Ray joins it."""
    alive = _probe(target, deadline)
    # a head on this machine started with --node-ip-address=127.0.0.1, given by a loopback address
    loopback = next((ip for ip in alive if reach.is_loopback(ip)), None) if reach.is_loopback(target.host) else None
    try:
        if loopback is not None:
            with _loopback_node():
                port = target.port
                host = f"[{loopback}]" if ":" in loopback else loopback
                ray.init(address=f"{host}:{port}", _node_ip_address=loopback, **common)
        else:
            ray.init(address=target.address, **common)
    except (ConnectionError, RuntimeError, RayError) as exc:
        raise reach.fail(
            target, f"its head answered, but ray.init failed ({_first_line(exc)})", "the head's log"
        ) from None


@contextlib.contextmanager
def _shut_down_if_interrupted() -> Iterator[None]:
    """A ``ray.init`` stopped half way (Ctrl-C, SIGTERM, an error) has started processes that no caller will shut
    down (`start_ray` did not return): they are shut down here."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise


_LOOPBACK = ("127.0.0.1", "::1")
_RAY_CLUSTER_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While a private instance starts, the node's address is the loopback one, whatever the environment says.

    Ray 2.60 has no public option for it. The node's address decides every listener: GCS, raylet, workers and driver
    bind it (their gRPC servers bind every interface for any address but loopback), and so do the runtime-env agent
    and the autoscaler monitor's metrics. ``ray.init(_node_ip_address="127.0.0.1")`` does not help:
    ``services.resolve_ip_for_localhost`` turns a loopback address into the host's routable one unless
    ``ray_constants.ENABLE_RAY_CLUSTER`` is false — the constant behind ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    (Ray's "no multi-node cluster" mode), read once when Ray is imported, so the variable set afterwards changes
    nothing in this process. Both are set here for the start: the constant for the driver, the variable for the
    Python processes Ray starts (they read it at their own import); both are given back afterwards, since a driver
    that joins a real cluster later in this process needs its routable address. `start_ray` checks the outcome."""
    from ray._private import ray_constants  # a private module: start_ray checks the address Ray ended up with

    constant, variable = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True), os.environ.get(_RAY_CLUSTER_VAR)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[_RAY_CLUSTER_VAR] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = constant
        if variable is None:
            os.environ.pop(_RAY_CLUSTER_VAR, None)
        else:
            os.environ[_RAY_CLUSTER_VAR] = variable


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """The process's SIGTERM handler before ``ray.init`` is its handler during and after it.

    ``ray.init`` replaces it three times: in Python with ``sys.exit(15)`` (and, for the head node it starts, a handler
    that kills Ray's processes and exits 1), both through ``ray._private.utils.set_sigterm_handler``; and in C, when
    the driver's core worker starts, with absl's failure-signal handler, which prints a native stack dump and aborts
    (exit 134), unless ``ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER``. Restoring the handler afterwards
    left a window of seconds (a SIGTERM then ended `dipflow` with 15, 1 or an abort): while ``ray.init`` runs, the
    Python setter does nothing and the constant is set (both private to Ray 2.60, read when called, given back
    afterwards; the driver loses absl's dump of its own crashes, its workers keep theirs); ``signal.signal`` then
    installs the caller's handler again, in C too. Signals are set from the main thread only; elsewhere (or when
    the handler was not set from Python) nothing changes."""
    from ray._private import ray_constants
    from ray._private import utils as ray_utils

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    setter, native = ray_utils.set_sigterm_handler, getattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", False)
    if main:
        ray_utils.set_sigterm_handler = lambda handler: None
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler, ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = setter, native
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def ray_session(address: str | None = None, connect_timeout: float = 30.0) -> Iterator[None]:
    """Ray for the length of the block, joined or started by `start_ray`; shut down at its end only when this block
    connected (a Ray that was already up in this process belongs to whoever started it)."""
    started = start_ray(address, connect_timeout=connect_timeout)
    try:
        yield
    finally:
        if started:
            with signals.deferred():  # a shutdown stopped half way leaves Ray's processes to the watchdog
                ray.shutdown()


# ------------------------------------------------------------------------------------------------------ the pool


@dataclass
class _Slot:
    index: int
    actor: Any
    generation: int = 0
    ready: bool = False
    info: dict[str, Any] | None = None
    in_flight: int = 0
    busy_since: float | None = None  # when the call now running on it started (its head of line)
    start_failures: int = 0
    retired: str | None = None  # why it was given up


class WorkerPool:
    """A fixed number of `RestoreWorker` actors, each in a slot that a dead actor's replacement takes over."""

    def __init__(
        self,
        size: int,
        *,
        num_gpus: float = 0.0,
        num_cpus: float = 1.0,
        storage_options: dict | None = None,
        engine: Any = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {size}")
        self.options = {"num_gpus": num_gpus, "num_cpus": num_cpus, "scheduling_strategy": "SPREAD"}
        self.storage_options = storage_options
        self.engine = engine  # a dipcore.EngineOptions for every actor (None: dipcore's defaults on its device)
        self.slots = [_Slot(i, self._spawn()) for i in range(size)]
        self.restarts = 0

    @classmethod
    def for_cluster(
        cls,
        *,
        gpus_per_worker: float = 1.0,
        cpus_per_worker: float | None = None,
        num_workers: int | None = None,
        max_workers: int | None = None,
        storage_options: dict | None = None,
        engine: Any = None,
    ) -> WorkerPool:
        """Size a pool from the live nodes: GPU actors when the cluster has GPUs (and `gpus_per_worker` > 0),
        else CPU actors; `num_workers` defaults to as many as fit, `max_workers` caps it (e.g. the job count)."""
        size, num_gpus, num_cpus = cls.cluster_size(gpus_per_worker, cpus_per_worker, num_workers)
        if max_workers is not None:
            size = max(1, min(size, max_workers))
        return cls(size, num_gpus=num_gpus, num_cpus=num_cpus, storage_options=storage_options, engine=engine)

    @staticmethod
    def cluster_size(
        gpus_per_worker: float = 1.0, cpus_per_worker: float | None = None, num_workers: int | None = None
    ) -> tuple[int, float, float]:
        """(actors, GPUs and CPUs per actor) that `for_cluster` would start on the live nodes."""
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        use_gpu = gpus > 0 and gpus_per_worker > 0
        num_gpus = gpus_per_worker if use_gpu else 0.0
        num_cpus = cpus_per_worker if cpus_per_worker is not None else (0.0 if use_gpu else 1.0)
        return num_workers or max(1, _capacity(num_gpus, num_cpus)), num_gpus, num_cpus

    def _spawn(self) -> Any:
        return RestoreWorker.options(**self.options).remote(self.storage_options, self.engine)

    @property
    def actors(self) -> list[Any]:
        return [s.actor for s in self.slots]

    def replace(self, slot: _Slot) -> None:
        """Kill the slot's actor (if it still runs) and start a fresh one in its place."""
        with contextlib.suppress(Exception):  # already gone
            ray.kill(slot.actor, no_restart=True)
        slot.actor, slot.generation, slot.ready, slot.info = self._spawn(), slot.generation + 1, False, None
        slot.in_flight, slot.busy_since = 0, None
        self.restarts += 1

    def shutdown(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(slot.actor, no_restart=True)


def _capacity(num_gpus: float, num_cpus: float) -> int:
    """How many actors of this shape fit on the live nodes, node by node (totals would count the head's CPUs for
    GPU actors that cannot run there)."""
    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        fits = []
        if num_gpus > 0:
            fits.append(int(res.get("GPU", 0.0) / num_gpus + 1e-9))
        if num_cpus > 0:
            fits.append(int(res.get("CPU", 0.0) / num_cpus + 1e-9))
        total += min(fits) if fits else 1
    return total


# --------------------------------------------------------------------------------------------- the driver loop


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
    slot: _Slot
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
        _check_pack(pack)
        self.check = check or (lambda: None)
        self.on_progress = on_progress
        self.progress_every = PROGRESS_EVERY if progress_every is None else progress_every
        self.asked: dict[Any, tuple[_Slot, int]] = {}  # progress questions not answered yet → (slot, generation)
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
        self.pings: dict[Any, tuple[_Slot, int]] = {}
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

    def _ping(self, slot: _Slot) -> None:
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

    def _pack_limit(self, slot: _Slot) -> int:
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
                slot.retired = _first_line(exc)
                self.log(f"worker {slot.index} could not start ({slot.retired}); giving it up")
            else:
                self._replace(slot)

    def _replace(self, slot: _Slot) -> None:
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
            self._lose_slot(call.slot, call.generation, f"worker lost: {_first_line(exc)}")
            return
        except (RayError, GetTimeoutError) as exc:
            self._slot_done(call)
            self.queue.push_front(self._failed(call, f"Ray error: {_first_line(exc)}"))
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

    def _lose_slot(self, slot: _Slot, generation: int, reason: str, *, kill: bool = False) -> None:
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


def _check_pack(pack: Pack) -> None:
    if pack != "auto" and (isinstance(pack, bool) or not isinstance(pack, int) or pack < 1):
        raise ValueError(f"pack must be a positive integer or 'auto', not {pack!r}")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # terminal colours: Ray paints the task's name in its errors
_RAISED = re.compile(r"[A-Za-z_][\w.]*(: |$)")  # "ModuleNotFoundError: No module named 'dipcore'"


def _first_line(exc: BaseException) -> str:
    """The exception as one plain line; an actor whose constructor raised is named by that exception (type and
    message), which Ray's ``ActorDiedError`` carries only inside its text, after the creation task's traceback."""
    if isinstance(exc, RayActorError) and exc.actor_init_failed:
        raised = _creation_error(str(exc))
        if raised:
            return f"{raised} (raised while the worker started)"
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _creation_error(text: str) -> str | None:
    """The first line of the exception at the end of a remote traceback (Ray's ``RayTaskError`` text): the first
    unindented line after the last ``File "…"`` frame."""
    lines = _ANSI.sub("", text).splitlines()
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith('File "')]
    for line in lines[frames[-1] + 1 :] if frames else ():
        if line[:1].strip() and _RAISED.match(line):
            return line.strip()
    return None


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


def run_inline(
    jobs: Iterable[Job],
    *,
    restorer: Restorer,
    on_result: Callable[[JobOutcome], None],
    pack: Pack = "auto",
    check: Callable[[], None] | None = None,
    on_progress: Callable[[list[RunningFit]], None] | None = None,
    progress_every: float | None = None,
) -> RunStats:
    """Run `jobs` in this process, up to `pack` compatible ones at a time as one batch ("auto": the
    restorer's own bound, its thread count on a CPU), for process-local storage such as ``memory://``, and debugging.
    `check` is called before each batch, as `run_jobs` calls it on every turn. `on_progress`, when given, is handed
    the restorer's running fits every `progress_every` seconds from a thread of its own (the fits hold this one),
    run in a copy of this thread's context (the progress sink, Prefect's run)."""
    _check_pack(pack)
    stats, started = RunStats(), time.monotonic()
    queue = PackQueue(jobs)
    limit = pack if isinstance(pack, int) else restorer.pack_limit
    with _reporting(restorer, on_progress, PROGRESS_EVERY if progress_every is None else progress_every):
        while queue:
            if check is not None:
                check()
            batch = [job for job, _ in queue.take(limit)]
            stats.first_dispatch = stats.first_dispatch or time.monotonic()
            for outcome in restorer.run_batch(batch, pack):
                outcome.row["attempts"] = 1
                stats.count(outcome, batch=len(batch))
                on_result(outcome)
    stats.seconds = time.monotonic() - started
    return stats


@contextlib.contextmanager
def _reporting(
    restorer: Restorer, on_progress: Callable[[list[RunningFit]], None] | None, every: float
) -> Iterator[None]:
    """While the block runs, `on_progress(restorer.progress())` every `every` seconds on a daemon thread; stopped
    (and waited for, at most a few seconds) when the block ends."""
    if on_progress is None:
        yield
        return
    stop = threading.Event()
    context = contextvars.copy_context()

    def pump() -> None:
        while not stop.wait(every):
            try:
                on_progress(restorer.progress())
            except Exception as exc:  # noqa: BLE001 - a display that fails must not end the run
                logging.getLogger("dipflow.workers").debug("progress not shown: %s", exc)

    thread = threading.Thread(target=context.run, args=(pump,), name="dipflow-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5.0)
