"""Jobs: what the restoration of one image needs, planned from a dataset listing, and the report rows made from them.

A job carries URIs and small settings only — never pixels — so it is cheap to ship to a Ray actor. Its identity
across runs is ``(input_sha256, config_hash)``: the content of the input and every setting that shapes the output
or its row (the resolved dipcore preset — runs and early stopping included —, the seed and, for evaluation, how the
observation is synthesised and whether a classical baseline is scored). A resumed run skips the jobs whose identity
already has an ``ok`` row in the report. Pure Python: no Ray, no Prefect.

Jobs that may run as one stacked fit (`pack_key`) share the config, the task, the observation's shape — known on
the driver from the input's header, without decoding pixels (`observation_shape`) — and the kind of side inputs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipelines import storage
from pipelines.evaluation import baselines
from pipelines.reporting import reports

__all__ = [
    "BENCHMARKS",
    "EARLY_STOPPING",
    "SR_CROP_MULTIPLE",
    "Job",
    "Plan",
    "RunConfig",
    "Synthesis",
    "all_jobs",
    "base_row",
    "error_row",
    "evaluation_config",
    "image_seed",
    "observation_shape",
    "observe",
    "pack_key",
    "plan_jobs",
    "psnr_protocol",
    "rejected_job",
    "run_config",
    "score",
    "skipped_row",
    "utcnow",
]

BENCHMARKS: dict[str, dict[str, Any]] = {
    # The paper's benchmarks and the degradation each is evaluated on (shared/REFERENCE.md).
    "set5": {"task": "sr", "scale": 4},
    "set14": {"task": "sr", "scale": 4},
    # σ = 25 as in the paper's table: the denoise preset's 1800 iterations (the paper's count; its published code
    # runs 3000), the EMA of outputs, and `runs` independent runs averaged (seeds s, s + 1): 29.22 / 30.43 / 31.00.
    "cbm3d9": {"task": "denoise", "sigma": 25.0, "runs": 2},
    "heide11": {"task": "inpaint", "variant": "random", "drop": 0.5},
}
SR_CROP_MULTIPLE = 32  # the authors' evaluation centre-crops the clean image to a multiple of 32 first
# evaluate's early_stopping option -> the dipcore preset's: record the rule's choice, act on it, or leave it out.
EARLY_STOPPING: dict[str, bool | str] = {"observe": "observe", "stop": True, "off": False}


@dataclass(frozen=True)
class Synthesis:
    """How an evaluation job makes its observation from the clean input (``dipcore.degrade``'s arguments)."""

    task: str
    scale: int = 4  # sr
    sigma: float = 25.0  # denoise, 0–255 units
    drop: float = 0.5  # inpaint: fraction of pixels dropped
    variant: str | None = None  # inpaint variant
    crop_multiple: int | None = None  # sr: centre crop of the clean image to a multiple of this
    crop_size: int | None = None  # smoke runs: centre-crop the clean image to crop_size² first


def benchmark_synthesis(
    name: str, *, task: str | None = None, scale: int | None = None, sigma: float | None = None, crop: int | None = None
) -> Synthesis:
    """The paper's protocol for benchmark `name` (a folder of clean images that is not one of BENCHMARKS is SR ×4),
    with a caller's task, scale, σ or smoke-run crop in place of the defaults."""
    default = BENCHMARKS.get(name, {"task": "sr", "scale": 4})
    t = task or default["task"]
    if t == "sr":
        return Synthesis("sr", scale=scale or default.get("scale", 4), crop_multiple=SR_CROP_MULTIPLE, crop_size=crop)
    if t == "denoise":
        return Synthesis("denoise", sigma=sigma or default.get("sigma", 25.0), crop_size=crop)
    if t == "inpaint":
        return Synthesis("inpaint", drop=default.get("drop", 0.5), variant="random", crop_size=crop)
    return Synthesis(t, crop_size=crop)


@dataclass(frozen=True)
class RunConfig:
    """The settings shared by every job of one dataset: what `dipcore.restore` gets, and their identity."""

    task: str
    restore_kwargs: dict[str, Any]  # scale/variant/preset/iterations/early_stopping and preset overrides
    seed: int
    config: dict[str, Any]  # resolved preset + seed (+ synthesis): what config_hash identifies
    config_hash: str
    synthesis: Synthesis | None = None
    packable: bool = False  # dipcore.restore_batch can stack fits of this config (dipcore.batched.batch_refusal)
    classical: bool = False  # evaluation: score the task's classical baseline beside DIP (evaluation.baselines)

    @property
    def config_json(self) -> str:
        return reports.canonical_json(self.config)


@dataclass(frozen=True)
class Job:
    """One image to restore: where to read it, how to restore it, where to write it. URIs and settings only."""

    run_id: str
    dataset: str
    key: str  # POSIX path relative to the dataset root
    input_uri: str
    task: str
    restore_kwargs: dict[str, Any]
    config_hash: str
    config_json: str
    seed: int
    output_uri: str
    sha256: str | None = None  # of the input bytes at planning time (None: unreadable then)
    mask_uri: str | None = None
    guide_uri: str | None = None
    reference_uri: str | None = None  # ground truth beside a real observation, for scoring
    synthesis: Synthesis | None = None  # evaluation: the input is the clean image; the observation is made from it
    size: tuple[int, int, int] | None = None  # (H, W, C) of the input from its header at planning (None: unreadable)
    packable: bool = False  # its config's fits can be stacked (RunConfig.packable)
    classical: bool = False  # evaluation: also score the task's classical baseline

    @property
    def scale(self) -> int | None:
        return self.restore_kwargs.get("scale") if self.task == "sr" else None


@dataclass
class Plan:
    """Jobs for one dataset, and the images that cannot become jobs (with the reason)."""

    dataset: str
    config: RunConfig
    jobs: list[Job] = field(default_factory=list)
    rejected: list[tuple[storage.ImageEntry, str]] = field(default_factory=list)
    not_images: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) from the listing


def utcnow() -> datetime:
    return datetime.now(UTC)


def image_seed(seed: int, key: str) -> int:
    """A fixed per-image seed for synthesised noise and masks: the same image gets the same degradation in every
    run, and different images get independent ones."""
    return int(storage.sha256_hex(f"{seed}:{key}".encode())[:8], 16)


def run_config(
    task: str,
    *,
    scale: int | None = None,
    variant: str | None = None,
    preset: str = "paper",
    iterations: int | None = None,
    early_stopping: bool | str | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    synthesis: Synthesis | None = None,
    classical: bool = False,
) -> RunConfig:
    """Resolve the dipcore preset once (an unknown task, variant or override raises `dipcore.ConfigError` here, on
    the driver, before any worker starts) and hash it. ``classical`` (evaluation runs of a task that has a
    classical baseline) adds that baseline's columns to each row, so it is part of the identity too."""
    from dipcore.api import preset_for  # torch comes with dipcore; only the planner needs it
    from dipcore.batched import batch_refusal

    sigma = synthesis.sigma if synthesis is not None and task == "denoise" else None
    p = preset_for(
        task,
        variant=variant,
        scale=scale,
        preset=preset,
        sigma=sigma,
        iterations=iterations,
        early_stopping=early_stopping,
        **(overrides or {}),
    )
    kwargs: dict[str, Any] = {
        "scale": p.scale if task == "sr" else None,
        "variant": p.variant,
        "preset": preset,
        "iterations": iterations,
        "early_stopping": early_stopping,
        **(overrides or {}),
    }
    config: dict[str, Any] = {**p.to_dict(), "seed": seed}
    if synthesis is not None:
        config["synthesis"] = dataclasses.asdict(synthesis)
    classical = classical and synthesis is not None and task in baselines.CLASSICAL_TASKS
    if classical:
        config["classical_baseline"] = True
    config = json.loads(reports.canonical_json(config))  # plain JSON types, as stored in the report
    return RunConfig(
        task,
        kwargs,
        seed,
        config,
        reports.config_hash(config),
        synthesis,
        packable=batch_refusal(p) is None,
        classical=classical,
    )


def evaluation_config(
    name: str,
    *,
    task: str | None = None,
    scale: int | None = None,
    sigma: float | None = None,
    crop: int | None = None,
    preset: str = "paper",
    iterations: int | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    early_stopping: str = "observe",
    runs: int | None = None,
    classical: bool = True,
) -> RunConfig:
    """The RunConfig of evaluating benchmark `name` with the paper's protocol (`benchmark_synthesis`, BENCHMARKS).

    ``early_stopping`` is one of EARLY_STOPPING: ``"observe"`` (default) runs the fixed iteration count and
    records what the no-ground-truth rule would have returned; ``"stop"`` acts on it; ``"off"`` leaves it out.
    ``runs`` independent runs (seeds s, s + 1, …) are averaged into the returned output; default: the benchmark's
    (2 for cbm3d9, as in the paper), else 1. ``classical`` scores the task's classical baseline beside DIP.
    """
    from dipcore import ConfigError

    if early_stopping not in EARLY_STOPPING:
        raise ConfigError(f"early_stopping must be one of {', '.join(EARLY_STOPPING)}, not {early_stopping!r}")
    spec = benchmark_synthesis(name, task=task, scale=scale, sigma=sigma, crop=crop)
    default = BENCHMARKS.get(name, {})
    overrides = dict(overrides or {})
    if runs is None:
        runs = overrides.get("restarts") or (default.get("runs", 1) if default.get("task") == spec.task else 1)
    elif overrides.get("restarts", runs) != runs:
        raise ConfigError(f"runs={runs} and the override restarts={overrides['restarts']} disagree: give one")
    overrides["restarts"] = runs
    return run_config(
        spec.task,
        scale=spec.scale if spec.task == "sr" else None,
        variant=spec.variant,
        preset=preset,
        iterations=iterations,
        early_stopping=EARLY_STOPPING[early_stopping],
        overrides=overrides,
        seed=seed,
        synthesis=spec,
        classical=classical,
    )


def _inspect(entry: storage.ImageEntry, storage_options: dict | None) -> tuple[str | None, tuple | None]:
    """(content hash, (H, W, C) from the header) of an input; None for what cannot be read (the worker reads it
    again and reports the error in the image's row)."""
    from dipcore import DipcoreError  # imported by plan_jobs before its threads start
    from dipcore.imageio import image_shape

    try:
        data = storage.read_bytes(entry.uri, storage_options)
    except (storage.StorageError, OSError):
        return None, None
    try:
        size = image_shape(data)
    except DipcoreError:
        size = None  # not packable; the worker's decode says what is wrong
    return storage.sha256_hex(data), size


def plan_jobs(
    listing: storage.Listing,
    *,
    run_id: str,
    dataset: str,
    output: str,
    config: RunConfig,
    storage_options: dict | None = None,
    readers: int = 8,
) -> Plan:
    """One job per listed image. Inputs are read here once for their content hash and header size (in `readers`
    threads: the reads wait on storage, not on the CPU); a key that could escape the output root is rejected, not
    planned."""
    import dipcore.imageio  # noqa: F401 - once here, not concurrently in the reader threads

    plan = Plan(dataset=dataset, config=config, not_images=list(listing.skipped))
    entries: list[tuple[storage.ImageEntry, str]] = []
    for entry in listing.images:
        try:
            entries.append((entry, storage.output_uri(output, entry.key)))
        except storage.UnsafeKeyError as exc:
            plan.rejected.append((entry, str(exc)))
    with ThreadPoolExecutor(max_workers=max(1, readers)) as pool:
        inspected = list(pool.map(lambda e: _inspect(e[0], storage_options), entries))
    for (entry, out), (sha, size) in zip(entries, inspected, strict=True):
        plan.jobs.append(
            Job(
                run_id=run_id,
                dataset=dataset,
                key=entry.key,
                input_uri=entry.uri,
                task=config.task,
                restore_kwargs=config.restore_kwargs,
                config_hash=config.config_hash,
                config_json=config.config_json,
                seed=config.seed,
                output_uri=out,
                sha256=sha,
                mask_uri=entry.mask_uri,
                guide_uri=entry.guide_uri,
                synthesis=config.synthesis,
                size=size,
                packable=config.packable,
                classical=config.classical,
            )
        )
    return plan


def observation_shape(job: Job) -> tuple[int, int, int] | None:
    """(H, W, C) of what the fit of `job` observes, from the input's header size: the input itself for a plain
    job; for an evaluation job the observation `observe` synthesises (smoke crop, then for SR the centre crop to a
    multiple of 32 and the ÷scale downscale). None when unknown (unreadable header) or too small for the protocol
    (the worker reports why)."""
    if job.size is None:
        return None
    h, w, c = job.size
    s = job.synthesis
    if s is None:
        return h, w, c
    if s.crop_size:
        h, w = min(h, s.crop_size), min(w, s.crop_size)
    if s.task == "sr":
        multiple = s.crop_multiple or s.scale
        h, w = (h - h % multiple) // s.scale, (w - w % multiple) // s.scale  # LANCZOS keeps ⌊n / scale⌋
    return (h, w, c) if h > 0 and w > 0 else None


def pack_key(job: Job) -> tuple | None:
    """Jobs with equal keys can run as one stacked fit (``dipcore.restore_batch``): same config (hence task and
    settings), same observation shape, same kind of side inputs. None: the job runs alone."""
    shape = observation_shape(job)
    if not job.packable or shape is None:
        return None
    sides = (job.mask_uri is not None, job.guide_uri is not None, job.reference_uri is not None)
    return job.config_hash, job.task, shape, sides


# ------------------------------------------------------------------------------------------------------ rows


def base_row(job: Job) -> dict[str, Any]:
    """The report columns a job determines before it runs (URIs redacted: no credentials in reports)."""
    return {
        "run_id": job.run_id,
        "dataset": job.dataset,
        "image_key": job.key,
        "input_uri": storage.redact(job.input_uri),
        "input_sha256": job.sha256,
        "task": job.task,
        "scale": job.scale,
        "variant": job.restore_kwargs.get("variant"),
        "config_hash": job.config_hash,
        "config_json": job.config_json,
        "seed": job.seed,
        "output_uri": storage.redact(job.output_uri) if job.output_uri else None,
    }


def error_row(job: Job, message: str, *, attempts: int, started_at: datetime | None = None) -> dict[str, Any]:
    """An ``error`` row: the run goes on, and the message (redacted) says what went wrong."""
    now = utcnow()
    return {
        **base_row(job),
        "status": "error",
        "error": storage.redact(message),
        "attempts": attempts,
        "started_at": started_at or now,
        "finished_at": now,
        "wall_seconds": (now - started_at).total_seconds() if started_at else 0.0,
    }


def skipped_row(job: Job) -> dict[str, Any]:
    """A ``skipped`` row: the image was restored with the same input and settings by an earlier run."""
    now = utcnow()
    return {
        **base_row(job),
        "status": "skipped",
        "attempts": 0,
        "started_at": now,
        "finished_at": now,
        "wall_seconds": 0.0,
    }


def rejected_job(entry: storage.ImageEntry, plan: Plan, run_id: str) -> Job:
    """A stand-in job for an image that could not be planned, so that it still gets its error row."""
    c = plan.config
    return Job(
        run_id=run_id,
        dataset=plan.dataset,
        key=entry.key,
        input_uri=entry.uri,
        task=c.task,
        restore_kwargs=c.restore_kwargs,
        config_hash=c.config_hash,
        config_json=c.config_json,
        seed=c.seed,
        output_uri="",
        synthesis=c.synthesis,
        classical=c.classical,
    )


def all_jobs(plans: Iterable[Plan]) -> list[Job]:
    return [job for plan in plans for job in plan.jobs]


# ------------------------------------------------------------------------------------------- observe and score


def _crop_square(image: Any, size: int) -> Any:
    h, w = image.shape[:2]
    nh, nw = min(h, size), min(w, size)
    top, left = (h - nh) // 2, (w - nw) // 2
    return image[top : top + nh, left : left + nw]


def observe(job: Job, image: Any, read_image: Callable[[str], Any]) -> tuple[Any, Any, dict[str, Any]]:
    """(what to restore, the ground truth or None, side inputs for ``dipcore.restore``) of a decoded input.

    A plain job restores the image itself, with its mask/guide read by `read_image`. An evaluation job treats the
    image as clean and synthesises the paper's observation from it with a fixed per-image seed: SR first
    centre-crops to a multiple of 32 (the ground truth is that crop) and downscales with LANCZOS; denoising adds
    σ-Gaussian noise; inpainting drops pixels with a Bernoulli mask.
    """
    import dipcore
    from dipcore.metrics import center_crop_to_multiple

    s = job.synthesis
    if s is None:
        side = {}
        if job.mask_uri:
            side["mask"] = read_image(job.mask_uri)
        if job.guide_uri:
            side["guide"] = read_image(job.guide_uri)
        if job.task == "inpaint" and "mask" not in side:
            raise dipcore.ConfigError(f"no mask for {job.key}: put <name>_mask.png beside it or pass a mask folder")
        truth = read_image(job.reference_uri) if job.reference_uri else None
        return image, truth, side
    clean = _crop_square(image, s.crop_size) if s.crop_size else image
    seed = image_seed(job.seed, job.key)
    if s.task == "sr":
        clean = center_crop_to_multiple(clean, s.crop_multiple or s.scale)
        obs = dipcore.degrade(clean, task="sr", scale=s.scale, seed=seed)
    elif s.task == "denoise":
        obs = dipcore.degrade(clean, task="denoise", sigma=s.sigma, seed=seed)
    elif s.task == "inpaint":
        obs = dipcore.degrade(clean, task="inpaint", drop=s.drop, variant=s.variant, seed=seed)
    else:
        obs = dipcore.degrade(clean, task=s.task, seed=seed)
    return obs, clean, {}


def _crop_label(s: Synthesis | None) -> str | None:
    if s is None:
        return None
    parts = ([f"{s.crop_size}x{s.crop_size}"] if s.crop_size else []) + (
        [f"center{s.crop_multiple}"] if s.crop_multiple else []
    )
    return "+".join(parts) or None


def psnr_protocol(job: Job) -> dict[str, Any]:
    """How the job's PSNRs are measured (``dipcore.psnr``'s keywords): for SR, BT.601 Y with `scale` border pixels
    shaved (an evaluation's clean image is already centre-cropped to a multiple of 32); else all channels."""
    if job.task == "sr":
        return {"y_channel": True, "shave": int(job.scale or 1)}
    return {"y_channel": False, "shave": 0}


def score(job: Job, res: Any, obs: Any, truth: Any) -> dict[str, Any]:
    """PSNR/SSIM columns of a restoration against the ground truth (none without one), with the baseline beside it.

    Every PSNR uses `psnr_protocol(job)` — the restorer gives dipcore the same one for the curves. ``psnr`` and
    ``ssim`` score what the preset returns (the written output: with several runs, their average); ``psnr_final``
    and ``psnr_average`` are the first run's last iterate and moving average; ``psnr_best``/``iteration_best`` the
    best of its PSNR curve (an oracle); ``psnr_auto``/``iteration_auto``/``es_stop_iteration`` what the
    early-stopping rule chose (or would have, in observe mode) and where it fired; ``psnr_two_runs`` the average
    of the first two runs' returned outputs. Baseline: bicubic for SR, else the degraded input itself.
    """
    if truth is None:
        return {}
    import dipcore
    from dipcore.degrade import upscale_bicubic

    observed = getattr(obs, "image", obs)
    protocol = psnr_protocol(job)
    if job.task == "sr":
        baseline_name, baseline, channel = "bicubic", upscale_bicubic(observed, int(job.scale or 1)), "y"
    else:
        baseline_name, baseline = "input", observed
        channel = "rgb" if truth.shape[-1] == 3 else "gray"

    def psnr(x: Any) -> float | None:
        return dipcore.psnr(x, truth, **protocol) if x is not None and x.shape == truth.shape else None

    try:
        ssim = dipcore.ssim(res.image, truth, **protocol) if res.image.shape == truth.shape else None
    except dipcore.ConfigError:  # smaller than SSIM's 11×11 window after the shave
        ssim = None
    first = res.runs[0] if res.runs else res
    auto = first.stopping
    two = psnr((res.runs[0].image + res.runs[1].image) / 2) if len(res.runs) >= 2 else None
    return {
        "psnr": psnr(res.image),
        "psnr_average": psnr(first.average),
        "psnr_final": psnr(first.final),
        "psnr_best": res.best_psnr,
        "iteration_best": res.best_iteration,
        "psnr_channel": channel,
        "psnr_shave": protocol["shave"],
        "psnr_crop": _crop_label(job.synthesis),
        "ssim": ssim,
        "baseline_name": baseline_name,
        "psnr_baseline": psnr(baseline),
        "psnr_auto": psnr(auto.image) if auto else None,
        "iteration_auto": auto.iteration if auto else None,
        "es_stop_iteration": auto.fired_at if auto else None,
        "psnr_two_runs": two,
    }
