"""Jobs, start to end, on one torch device: read bytes → decode → (synthesise the observation, for evaluation)
→ ``dipcore.restore`` → encode → atomic write → one small metrics row and sampled curves per job.

Jobs of one pack key (`pipelines.jobs.pack_key`) handed over together run as one batch (``dipcore.restore_batch``:
stacked in one net on a GPU, images of different sizes on one shared canvas; side by side on CPU threads). Every
failure becomes an ``error`` row of its own job: a bad image never takes a worker down, nor the other jobs of its
batch. Ray-free, so the same code runs in a Ray actor (`pipelines.execution.workers.RestoreWorker`), in-process, and
on a GPU box that has no Ray (benchmarks). An evaluation job's classical baseline (`pipelines.evaluation.baselines`,
CPU) runs in a thread beside the fit, so on a GPU worker it costs little wall time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipelines import jobs as jobs_mod
from pipelines import ownership, storage
from pipelines.errors import PipelineError
from pipelines.evaluation import baselines
from pipelines.evaluation.protocols import observe, psnr_protocol, score
from pipelines.execution.live import LiveFits
from pipelines.execution.packing import AUTO_PACK_CAP, pack_for_memory
from pipelines.jobs import Job, pack_key
from pipelines.reporting import reports

if TYPE_CHECKING:
    from pipelines.execution.options import Pack

__all__ = ["JobOutcome", "Restorer"]

_log = logging.getLogger("dipflow.restorer")


@dataclass
class JobOutcome:
    """What one finished job sends back to the driver: a report row and its sampled curve rows."""

    job: Job
    row: dict[str, Any]
    curves: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Work:
    """One job inside a `Restorer.run_batch` call: its row so far, and what its fit needs once decoded."""

    job: Job
    row: dict[str, Any]
    curves: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # its own read/decode/observe time plus its share of its group's fit
    obs: Any = None  # what dipcore restores (an array or a dipcore.Observation); None until observed
    truth: Any = None
    side: dict[str, Any] = field(default_factory=dict)  # mask/guide of a plain job
    classical: Future | None = None  # the classical baseline's columns, computed beside the fit
    info: Any = None  # the input file's depth, alpha, ICC profile … (dipcore.ImageInfo): the output is written like it

    def fail(self, exc: BaseException) -> None:
        self.row.update(status="error", error=storage.redact(_describe(exc)))

    def group_key(self, canvas: str) -> tuple | None:
        """Its pack key, of what was decoded (the file may have changed since planning); None when the planner
        could not give it one."""
        if pack_key(self.job, canvas=canvas) is None:
            return None
        image = getattr(self.obs, "image", self.obs)
        return pack_key(self.job, shape=image.shape, canvas=canvas), tuple(sorted(self.side))

    def outcome(self, started: datetime, finished: datetime) -> JobOutcome:
        self.row.update(started_at=started, finished_at=finished, wall_seconds=self.seconds)
        return JobOutcome(self.job, self.row, self.curves)


# ------------------------------------------------------------------------------------------------- the worker


class Restorer:
    """Restores jobs on one torch device; the body of `RestoreWorker`, usable in-process too."""

    def __init__(
        self,
        storage_options: dict | None = None,
        *,
        device: str | None = None,
        threads: int | None = None,
        node: str | None = None,
        engine: Any = None,
        canvas: str = "shared",
    ) -> None:
        """``engine`` is a ``dipcore.EngineOptions`` (how fits run on the device; dipcore's defaults otherwise);
        ``canvas`` which jobs group (`jobs.pack_key`'s) and the canvas their fits run on: "shared" (jobs of one
        bucket; dipcore's default canvas: the smallest holding a stacked batch, the bucket itself for a compiled
        net, so its graphs stay few) or "own" (jobs of one shape, each fit on its own canvas)."""
        import torch

        import dipcore

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        # The report's device column: the GPU's name (as Restoration.device gives it), for error rows too.
        self.device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
        self.storage_options = storage_options
        self.node = node
        self.engine = engine
        self.canvas = canvas
        self._fit_canvas = "own" if canvas == "own" else None  # what restore and restore_batch are told
        # What software and engine produced a row's numbers (also on error rows: they say where it failed).
        resolved = (engine or dipcore.EngineOptions()).resolved(dev)
        self.software = {
            "torch_version": torch.__version__,
            "engine_json": jobs_mod.canonical_json(dataclasses.asdict(resolved)),
        }
        # A compiled stacked net has a graph per number of fits K as well as per canvas: batches then take powers
        # of two (8, 4, 2, 1 under auto's cap of 8), so a worker compiles at most four per bucket, whatever the free
        # memory or the tail.
        self._pow2_batches = bool(resolved.compile) and resolved.batch_mode == "stack"
        self._baselines = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classical-baseline")
        self.live = LiveFits()  # the fits running now, read by `progress` from another thread

    def progress(self) -> list[Any]:
        """The jobs whose fits run now, each a `pipelines.progress.RunningFit` (its iteration and rate as its fit's
        callback last said): what the driver shows while it waits. Cheap, and safe to call while a fit runs."""
        return self.live.snapshot()

    @property
    def pack_limit(self) -> int:
        """The most jobs "auto" packs into one batch here: on a CPU, one per torch thread (the fits run side by side,
        one thread each: ``dipcore.concurrent``; a one-CPU actor thus packs none), `AUTO_PACK_CAP` on a GPU (each
        batch is then sized to the card's free memory)."""
        import torch

        return max(1, torch.get_num_threads()) if self.device_name == "cpu" else AUTO_PACK_CAP

    def info(self) -> dict[str, Any]:
        """Where this worker runs and how many jobs "auto" gives it at once (also the driver's readiness probe)."""
        import torch

        return {
            "device": self.device_name,
            "node": self.node,
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
            "pack_limit": self.pack_limit,
        }

    def run(self, job: Job) -> JobOutcome:
        """Restore `job`; never raises for a problem of the image itself (that becomes an ``error`` row)."""
        return self.run_batch([job], pack=1)[0]

    def run_batch(self, jobs: list[Job], pack: Pack = "auto") -> list[JobOutcome]:
        """Restore `jobs` (one outcome each, in order), batching those of one pack key in groups of at most `pack`
        jobs ("auto": as many as the device's free memory allows, on a CPU one per torch thread).

        A job that cannot be read, decoded or observed gets its own error row and leaves the others. A batch
        that fails (CUDA out of memory, an unexpected shape …) runs again one job at a time, so no job is lost to
        its batch. ``wall_seconds`` of a job is its own read/decode/observe time plus 1/K of its group's fit,
        encode, write and scoring; ``started_at``/``finished_at`` span the whole call. The rows of a call thus
        add up to its time, and the report's mean seconds per image stays a throughput figure.
        """
        started = jobs_mod.utcnow()
        work = [self._observe(job) for job in jobs]
        for group in self._groups([w for w in work if w.obs is not None], pack):
            t0 = time.perf_counter()
            self._restore_group(group)
            share = (time.perf_counter() - t0) / len(group)
            for w in group:
                w.seconds += share
        finished = jobs_mod.utcnow()
        return [w.outcome(started, finished) for w in work]

    # -- the steps

    def _observe(self, job: Job) -> _Work:
        import dipcore

        t0 = time.perf_counter()
        w = _Work(
            job,
            {
                **jobs_mod.base_row(job),
                "device": self.device_name,
                "ray_node": self.node,
                "attempts": 1,
                **self.software,
            },
        )
        try:
            ownership.check_free(job, self.storage_options)  # a file not the root's own: an error row, no fit
            data = storage.read_bytes(job.input_uri, self.storage_options)
            w.row["input_sha256"] = storage.sha256_hex(data)  # what was restored, should the file have changed
            decoded = dipcore.decode_with_info(data, name=job.key)
            w.info = decoded.info
            w.obs, w.truth, w.side = observe(job, decoded.image, self._read_image)
            w.classical = self._start_classical(job, w.obs, w.truth)
        except Exception as exc:  # noqa: BLE001 - the row carries the message; the worker stays up
            w.fail(exc)
        w.seconds = time.perf_counter() - t0
        return w

    def _groups(self, work: list[_Work], pack: Pack) -> list[list[_Work]]:
        """Jobs of one checked pack key together, in chunks of at most `pack`; the rest alone. In job order."""
        if pack != "auto" and (not isinstance(pack, int) or pack < 1):
            raise ValueError(f"pack must be a positive integer or 'auto', not {pack!r}")
        by_key: dict[Any, list[_Work]] = {}
        for i, w in enumerate(work):
            key = w.group_key(self.canvas)
            by_key.setdefault(("alone", i) if key is None else key, []).append(w)
        groups = []
        for members in by_key.values():
            k = self._auto_pack(members[0]) if pack == "auto" else pack
            sizes = _pow2_chunks(len(members), k) if self._pow2_batches else _chunks(len(members), k)
            for size in sizes:
                groups.append(members[:size])
                members = members[size:]
        return groups

    def _auto_pack(self, w: _Work) -> int:
        """How many fits like `w`'s "auto" batches here: one per thread on a CPU, else what the GPU's free memory
        holds."""
        if self.pack_limit == 1 or self.device_name == "cpu":
            return self.pack_limit
        import torch

        from dipcore import canvas_bucket, get_task
        from dipcore.memory import device_budget

        p = w.job.preset
        observed = getattr(w.obs, "image", w.obs).shape
        if self.canvas == "own":
            h, w_, _ = get_task(p.task).output_shape(observed, p.scale)  # the fit's canvas is the output's
        else:
            h, w_ = canvas_bucket(p, observed)  # what the group's shared canvas is at most
        budget = device_budget(torch.device(self.device))  # the engine's own budget: packer and engine agree
        return pack_for_memory(p, h, w_, channels=observed[2], budget=budget, cap=self.pack_limit)

    def _restore_group(self, group: list[_Work]) -> None:
        import dipcore

        if len(group) == 1:
            self._restore_alone(group[0])
            return
        first = group[0].job
        try:
            with self.live.watching(w.job for w in group) as callback:
                results = dipcore.restore_batch(
                    [_observation(w) for w in group],
                    task=first.task,
                    references=[w.truth for w in group],
                    seeds=[w.job.seed for w in group],
                    device=self.device,
                    engine=self.engine,
                    psnr_protocol=_protocol(group[0]),
                    canvas=self._fit_canvas,
                    callback=callback,
                    preset=first.preset,
                )
        except Exception as exc:  # noqa: BLE001 - each job gets its own chance below
            _log.warning("a batch of %d jobs failed (%s); running them one by one", len(group), _describe(exc))
            self._free_cuda()
            for w in group:
                self._restore_alone(w)
            return
        for w, res in zip(group, results, strict=True):
            self._finish(w, res, pack_size=len(group))

    def _restore_alone(self, w: _Work) -> None:
        import dipcore

        try:
            with self.live.watching([w.job]) as callback:
                res = dipcore.restore(
                    w.obs,
                    task=w.job.task,
                    seed=w.job.seed,
                    reference=w.truth,
                    device=self.device,
                    engine=self.engine,
                    psnr_protocol=_protocol(w),
                    canvas=self._fit_canvas,
                    callback=callback,
                    **w.side,
                    preset=w.job.preset,
                )
        except Exception as exc:  # noqa: BLE001 - the job's error row carries the message; the worker stays up
            w.fail(exc)
            self._free_cuda()
            return
        self._finish(w, res, pack_size=1)

    def _finish(self, w: _Work, res: Any, *, pack_size: int) -> None:
        """Write the output, score it, fill the row and the curves."""
        import dipcore

        job = w.job
        try:
            # Outputs are <name>.png (jobs.py), written like the input: its depth, alpha and ICC profile.
            encoded = dipcore.encode_like(res.image, w.info, format="PNG")
            ownership.write_output(job, encoded.data, self.storage_options)  # marked; replaces only the root's own
            w.row["notes"] = "; ".join(encoded.notes) or None
            w.row.update(score(job, res, w.obs, w.truth))
            if w.classical is not None:
                w.row.update(w.classical.result())
            w.row.update(
                status="ok",
                iterations_run=res.iterations_run,
                iteration_returned=res.iteration,
                stop_reason=res.stop_reason,
                height=int(res.image.shape[0]),
                width=int(res.image.shape[1]),
                device=res.device,
                pack_size=pack_size,
            )
            if res.engine:  # what the fit ran with, checkpointing decided for this job included
                w.row["engine_json"] = jobs_mod.canonical_json(res.engine)
            w.curves = reports.curve_rows(res.history, run_id=job.run_id, dataset=job.dataset, image_key=job.key)
        except Exception as exc:  # noqa: BLE001 - scoring or writing one job fails that job's row only
            w.fail(exc)

    def _start_classical(self, job: Job, obs: Any, truth: Any) -> Future | None:
        """The classical baseline's columns, computed in a thread while the fit runs (None: not asked for)."""
        if not job.classical or truth is None or job.synthesis is None:
            return None
        sigma = obs.meta.get("sigma")  # the noise level the observation was synthesised with (denoising)
        return self._baselines.submit(
            baselines.score_classical, job.task, obs, truth, sigma=sigma, protocol=psnr_protocol(job)
        )

    def _free_cuda(self) -> None:
        if self.device_name != "cpu":
            import torch

            torch.cuda.empty_cache()  # after a CUDA out-of-memory, give the next fit the whole card

    def _read_image(self, uri: str) -> Any:
        import dipcore

        return dipcore.decode_image(storage.read_bytes(uri, self.storage_options), name=uri.rpartition("/")[2])


def _protocol(w: _Work) -> dict[str, Any] | None:
    """How the fit measures its PSNR curves: the job's scoring protocol, when there is a ground truth."""
    return psnr_protocol(w.job) if w.truth is not None else None


def _chunks(n: int, k: int) -> list[int]:
    """Sizes of `n` jobs in chunks of at most `k`: full ones, then the rest."""
    k = max(1, k)
    return [k] * (n // k) + ([n % k] if n % k else [])


def _pow2_chunks(n: int, k: int) -> list[int]:
    """Sizes of `n` jobs in chunks of powers of two, each at most `k`, largest first (13 at most 8: 8, 4, 1)."""
    top = 1 << (max(1, k).bit_length() - 1)  # the largest power of two ≤ k
    sizes = []
    while n:
        size = min(top, 1 << (n.bit_length() - 1))
        sizes.append(size)
        n -= size
    return sizes


def _observation(w: _Work) -> Any:
    """`w`'s observation with its side inputs attached, as ``restore_batch`` takes them (one list of inputs)."""
    if not w.side:
        return w.obs
    import dipcore
    from dipcore.observation import binary_mask

    mask, guide = w.side.get("mask"), w.side.get("guide")
    return dipcore.Observation(
        dipcore.to_float_image(w.obs),
        w.job.task,
        scale=w.job.scale or 1,
        mask=None if mask is None else binary_mask(mask),
        guide=None if guide is None else dipcore.to_float_image(guide),
    )


def _describe(exc: BaseException) -> str:
    """One line for the report: our own typed errors speak for themselves; anything else names its type."""
    import dipcore

    if isinstance(exc, (dipcore.DipcoreError, PipelineError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
