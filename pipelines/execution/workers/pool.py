"""The actors: `RestoreWorker`, a `Restorer` as a Ray actor, and `WorkerPool`, a fixed number of them placed on the
cluster's GPUs (or CPUs), each in a slot that a dead actor's replacement takes over."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import ray

from pipelines.execution.restorer import Restorer


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


@dataclass
class Slot:
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
        self.slots = [Slot(i, self._spawn()) for i in range(size)]
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

    def replace(self, slot: Slot) -> None:
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
