"""One job, start to end, on one torch device: read bytes → decode → (synthesise the observation, for evaluation)
→ ``dipcore.restore`` → encode → atomic write → one small metrics row and sampled curves.

Every failure becomes an ``error`` row: a bad image never takes a worker down. Ray-free, so the same code runs in
a Ray actor (`pipelines.workers.RestoreWorker`), in-process, and on a GPU box that has no Ray (benchmarks).
An evaluation job's classical baseline (`pipelines.baselines`, CPU) runs in a thread beside the fit, so on a GPU
worker it costs little wall time.
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipelines import baselines, reports, storage
from pipelines import jobs as jobs_mod
from pipelines.jobs import Job, observe, psnr_protocol, score

__all__ = ["JobOutcome", "Restorer"]


@dataclass
class JobOutcome:
    """What one finished job sends back to the driver: a report row and its sampled curve rows."""

    job: Job
    row: dict[str, Any]
    curves: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- the worker


class Restorer:
    """Restores one job at a time on one torch device; the body of `RestoreWorker`, usable in-process too."""

    def __init__(self, storage_options: dict | None = None, *, device: str | None = None, threads: int | None = None,
                 node: str | None = None, engine: Any = None) -> None:  # fmt: skip
        """``engine`` is a ``dipcore.EngineOptions`` (how fits run on the device; dipcore's defaults otherwise)."""
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
        # What software and engine produced a row's numbers (also on error rows: they say where it failed).
        resolved = (engine or dipcore.EngineOptions()).resolved(dev)
        self.software = {"torch_version": torch.__version__,
                         "engine_json": reports.canonical_json(dataclasses.asdict(resolved))}  # fmt: skip
        self._baselines = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classical-baseline")

    def info(self) -> dict[str, Any]:
        """Where this worker runs (also the readiness probe of the driver)."""
        import torch

        return {"device": self.device_name, "node": self.node, "pid": os.getpid(), "threads": torch.get_num_threads()}

    def run(self, job: Job) -> JobOutcome:
        """Restore `job`; never raises for a problem of the image itself (that becomes an ``error`` row)."""
        import dipcore

        started, t0 = jobs_mod.utcnow(), time.perf_counter()
        row = {**jobs_mod.base_row(job), "device": self.device_name, "ray_node": self.node, "attempts": 1,
               **self.software}  # fmt: skip
        curves: list[dict[str, Any]] = []
        try:
            data = storage.read_bytes(job.input_uri, self.storage_options)
            row["input_sha256"] = storage.sha256_hex(data)  # what was restored, should the file have changed
            image = dipcore.decode_image(data, name=job.key)
            obs, truth, side = observe(job, image, self._read_image)
            classical = self._start_classical(job, obs, truth)
            protocol = psnr_protocol(job) if truth is not None else None
            res = dipcore.restore(obs, task=job.task, seed=job.seed, reference=truth, device=self.device,
                                  engine=self.engine, psnr_protocol=protocol, **side, **job.restore_kwargs)  # fmt: skip
            storage.write_bytes_atomic(job.output_uri, dipcore.encode_png(res.image), self.storage_options)
            row.update(score(job, res, obs, truth))
            if classical is not None:
                row.update(classical.result())
            row.update(status="ok", iterations_run=res.iterations_run, iteration_returned=res.iteration,
                       stop_reason=res.stop_reason, height=int(res.image.shape[0]), width=int(res.image.shape[1]),
                       device=res.device)  # fmt: skip
            curves = reports.curve_rows(res.history, run_id=job.run_id, dataset=job.dataset, image_key=job.key)
        except Exception as exc:  # noqa: BLE001 - the row carries the message; the worker stays up
            row.update(status="error", error=storage.redact(_describe(exc)))
            if self.device_name != "cpu":
                import torch

                torch.cuda.empty_cache()  # after a CUDA out-of-memory, give the next job the whole card
        row.update(started_at=started, finished_at=jobs_mod.utcnow(), wall_seconds=time.perf_counter() - t0)
        return JobOutcome(job, row, curves)

    def _start_classical(self, job: Job, obs: Any, truth: Any) -> Future | None:
        """The classical baseline's columns, computed in a thread while the fit runs (None: not asked for)."""
        if not job.classical or truth is None or job.synthesis is None:
            return None
        sigma = job.synthesis.sigma if job.task == "denoise" else None
        return self._baselines.submit(baselines.score_classical, job.task, obs, truth, sigma=sigma,
                                      protocol=psnr_protocol(job))  # fmt: skip

    def _read_image(self, uri: str) -> Any:
        import dipcore

        return dipcore.decode_image(storage.read_bytes(uri, self.storage_options), name=uri.rpartition("/")[2])


def _describe(exc: BaseException) -> str:
    """One line for the report: our own typed errors speak for themselves; anything else names its type."""
    import dipcore

    if isinstance(exc, (dipcore.DipcoreError, storage.StorageError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
