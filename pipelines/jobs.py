"""Jobs: what the restoration of one image needs, planned from a dataset listing, and the report rows made from them.

A job carries URIs and small settings only — never pixels — so it is cheap to ship to a Ray actor. Its identity
across runs is ``(dataset, key, input fingerprint, config_hash)``: where the input is, what its listing says of it
(size, ETag, mtime … `storage.fingerprint`; the driver never reads an input to decide) and every setting that shapes
the output or its row (the resolved dipcore preset — runs and early stopping included —, the seed and, for
evaluation, how the observation is synthesised and whether a classical baseline is scored). A resumed run skips the
images the output root's done-state (`pipelines.reporting.state`) holds with the same identity; the worker, which
reads the image anyway, records its content hash in the row.

Planning streams (`plan_stream`): it takes the listing folder by folder as it arrives and yields the jobs still to
do, so the first job is dispatched while the listing goes on and the driver holds only a window of jobs. Pure Python:
no Ray, no Prefect. How an evaluation job's observation is made and scored is the paper's protocol
(`pipelines.evaluation.protocols`).

Jobs that may run as one batch (`pack_key`) share the config, the task, the observation's canvas bucket
(``dipcore.canvas_bucket`` of its shape, known on the driver from the first bytes of a new input — its header —
without decoding pixels: `with_headers`, `observation_shape`) and channel count, and the kind of side inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines import ownership, storage

if TYPE_CHECKING:
    from pipelines.settings import RestoreSettings

__all__ = [
    "CLASSICAL_TASKS",
    "Job",
    "Plan",
    "RunConfig",
    "Synthesis",
    "base_row",
    "canonical_json",
    "config_hash",
    "error_row",
    "observation_shape",
    "pack_key",
    "plan_stream",
    "rejected_job",
    "restore_config",
    "run_config",
    "skipped_row",
    "unlisted_line",
    "utcnow",
    "with_headers",
]

CLASSICAL_TASKS = ("denoise", "inpaint")  # tasks with a classical baseline (`pipelines.evaluation.baselines`)


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON of a config: sorted keys, no spaces, ASCII, no NaN (the report's `config_json` column)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """The first 16 hex chars of the SHA-256 of `canonical_json(config)`: a config's identity across runs."""
    return storage.sha256_hex(canonical_json(config).encode("utf-8"))[:16]


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

    def clean_multiple(self) -> int | None:
        """What the clean image is centre-cropped to a multiple of before the degradation (None: not cropped):
        ``crop_multiple``, else for a scaled task (SR) the scale, so that the LR pixels tile the ground truth."""
        from dipcore import get_task

        return self.crop_multiple or (self.scale if get_task(self.task).scaled else None)


@dataclass(frozen=True)
class RunConfig:
    """The settings shared by every job of one dataset, resolved once on the driver: the dipcore preset that every
    fit runs (a ``dipcore.TaskPreset``: a worker never resolves it again), the seed, and their identity."""

    preset: Any  # dipcore.TaskPreset, with the run's overrides applied
    seed: int
    config: dict[str, Any]  # resolved preset + seed (+ synthesis): what config_hash identifies
    config_hash: str
    synthesis: Synthesis | None = None
    packable: bool = False  # dipcore.restore_batch can batch fits of this config (dipcore.batched.batch_refusal)
    classical: bool = False  # evaluation: score the task's classical baseline beside DIP (evaluation.baselines)

    @property
    def task(self) -> str:
        return self.preset.task

    @property
    def scale(self) -> int | None:
        """The SR factor (None for a task without one)."""
        from dipcore import get_task

        return self.preset.scale if get_task(self.task).scaled else None

    @functools.cached_property
    def config_json(self) -> str:
        return canonical_json(self.config)


@dataclass(frozen=True)
class Job:
    """One image to restore: where to read it, where to write it, and its dataset's `RunConfig`. URIs and settings
    only."""

    run_id: str
    dataset: str
    key: str  # POSIX path relative to the dataset root
    input_uri: str
    config: RunConfig
    output_uri: str
    fingerprint: str | None = None  # the input's identity from its listing (storage.fingerprint; None: none given)
    mask_uri: str | None = None
    guide_uri: str | None = None
    reference_uri: str | None = None  # ground truth beside a real observation, for scoring
    size: tuple[int, int, int] | None = None  # (H, W, C) of the input from its header (with_headers; None: unknown)
    provenance: str | None = None  # the mark its output carries (`ownership`); None: written unlooked (tools)
    replace: bool = False  # its output's place may be replaced unlooked: the state records it, or --overwrite

    # What the job's config says, by the names its readers use.
    task = property(lambda self: self.config.task)
    scale = property(lambda self: self.config.scale)
    preset = property(lambda self: self.config.preset)
    seed = property(lambda self: self.config.seed)
    config_hash = property(lambda self: self.config.config_hash)
    config_json = property(lambda self: self.config.config_json)
    synthesis = property(lambda self: self.config.synthesis)  # evaluation: the observation is made from the input
    packable = property(lambda self: self.config.packable)  # its fits can be stacked (RunConfig.packable)
    classical = property(lambda self: self.config.classical)  # evaluation: also score the classical baseline


@dataclass
class Plan:
    """One dataset of a run: its settings and where it goes, and what planning found as the listing streamed past —
    counts, not lists, so that a run over 10⁶ images holds no per-image record of them."""

    dataset: str
    config: RunConfig
    output: str  # the dataset's output root
    source: str | None = None  # redacted, for the runs table
    listed: int = 0  # images listed (jobs, done earlier, rejected and excluded alike)
    todo: int = 0  # jobs yielded to run
    done_earlier: int = 0  # skipped: the done-state holds them with the same identity
    verified_by_content: int = 0  # of those, matched to an old report by reading the input (`state.DoneState`)
    rejected: int = 0  # error rows made at planning (unsafe key, colliding outputs)
    excluded: int = 0  # skipped rows made at planning (a symbolic link not followed)
    not_images: int = 0
    not_images_shown: list[tuple[str, str]] = field(default_factory=list)  # the first `SHOWN` (key, reason)
    listing_seconds: float | None = None  # from the run's start to the end of this dataset's listing
    owner: ownership.Owner | None = None  # the leased output root its outputs are marked with (None: unmarked)
    unlisted: int | None = None  # outputs of images restored earlier that this listing no longer holds (None: unknown)

    SHOWN = 20

    @property
    def empty(self) -> bool:
        """Nothing image-like was listed: the run refuses it (`flows`), saying what the source holds instead."""
        return self.listed == 0


def unlisted_line(n: int) -> str:
    """What a run says, in one line, of the outputs of images it no longer lists (`Plan.unlisted`)."""
    return (
        f"{n} output(s) belong to images that earlier runs restored and this run did not list (inputs deleted, "
        "renamed or left out by --glob); they are kept"
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def restore_config(settings: RestoreSettings) -> RunConfig:
    """The RunConfig of `restore`'s settings: the dipcore preset resolved (an unknown task, variant or override
    raises `dipcore.ConfigError` here, on the driver, before any worker starts) and hashed."""
    from dipcore import preset_for  # torch comes with dipcore; only the planner needs it

    p = preset_for(
        settings.task,
        variant=settings.variant,
        scale=settings.scale,
        preset=settings.preset,
        iterations=settings.iterations,
        early_stopping=settings.early_stopping(),
        **settings.preset_overrides(),
    )
    return run_config(p, seed=settings.seed)


def run_config(preset: Any, *, seed: int = 0, synthesis: Synthesis | None = None, classical: bool = False) -> RunConfig:
    """The RunConfig of a resolved ``dipcore.TaskPreset``: its identity is the preset, the seed and, for evaluation,
    the synthesis. ``classical`` (evaluation runs of a task that has a classical baseline) adds that baseline's
    columns to each row, so it is part of the identity too."""
    from dipcore import batch_refusal

    config: dict[str, Any] = {**preset.to_dict(), "seed": seed}
    if synthesis is not None:
        config["synthesis"] = dataclasses.asdict(synthesis)
    classical = classical and synthesis is not None and preset.task in CLASSICAL_TASKS
    if classical:
        config["classical_baseline"] = True
    config = json.loads(canonical_json(config))  # plain JSON types, as stored in the report
    return RunConfig(
        preset,
        seed,
        config,
        config_hash(config),
        synthesis,
        packable=batch_refusal(preset) is None,
        classical=classical,
    )


def plan_stream(
    chunks: Iterable[storage.Listing],
    plan: Plan,
    *,
    run_id: str,
    done: Any,
    record: Callable[[dict[str, Any]], None],
    adopt: Callable[[dict[str, Any]], None],
    storage_options: dict | None = None,
    limit: int | None = None,
) -> Iterator[Job]:
    """The jobs still to do for `plan`, as its listing `chunks` (one per folder, `storage.iter_listing`) arrive.

    An image whose (dataset, key, config hash) the done-state `done` (`state.DoneState`) holds with the same input
    fingerprint is counted in ``plan.done_earlier`` and nothing more is done for it (no read, no job: this is the
    loop a nightly run spends on each of 10⁶ unchanged images); one known only from an old report is read once and
    skipped when its content hash matches (``adopt`` gets its state row). Images whose outputs would be one file
    (`_collisions`, decided per folder: outputs mirror the folders), keys that could escape the output root and
    outputs the store could not name (`storage.name_check`: too long) get error rows through `record`; symbolic
    links not followed get skipped rows. At most `limit` images (the first by key) are planned."""
    folds = storage.folds_case(plan.output, storage_options)
    unfit = storage.name_check(plan.output, storage_options)  # an output the store cannot name fails before its fit
    owned_listed = 0  # listed images whose outputs earlier runs wrote: the rest of those outputs are unlisted
    seen: set[str] = set()  # folded output names, only where the filesystem folds case (names of other folders)
    c = plan.config
    for chunk in chunks:
        plan.not_images += len(chunk.skipped)
        plan.not_images_shown.extend(chunk.skipped[: max(0, Plan.SHOWN - len(plan.not_images_shown))])
        for key, why in chunk.excluded:
            plan.listed += 1
            plan.excluded += 1
            entry = storage.ImageEntry(uri="", key=key, size=0)
            record(skipped_row(rejected_job(entry, plan, run_id), reason=why))
        images = chunk.images
        if limit is not None:
            images = images[: max(0, limit - plan.listed)]
        plan.listed += len(images)
        clashes = _collisions(images, plan.output, folds=folds, seen=seen)
        for entry in images:
            why = clashes.get(entry.key)
            if why is None and (
                done.is_done(plan.dataset, c.config_hash, entry.key, entry.fingerprint)
                or _done_before_ctime(done, plan, entry, adopt)
            ):
                plan.done_earlier += 1
                owned_listed += 1
                continue
            owned = done.owns(plan.dataset, entry.key)
            owned_listed += owned
            if why is None:
                try:
                    out = storage.output_uri(plan.output, entry.key)
                except storage.UnsafeKeyError as exc:
                    why = str(exc)
                else:
                    if (problem := unfit(out)) is not None:
                        why = f"{entry.key}: {problem}; rename the input to restore it"
            if why is not None:
                plan.rejected += 1
                record(error_row(rejected_job(entry, plan, run_id), why, attempts=0))
                continue
            job = _job(entry, plan, run_id, out, owned=owned)
            if _done_by_content(job, done, adopt, storage_options):
                plan.done_earlier += 1
                plan.verified_by_content += 1
                continue
            plan.todo += 1
            yield job
        if limit is not None and plan.listed >= limit:
            return
    if (total := done.owned_count(plan.dataset)) is not None:
        plan.unlisted = max(0, total - owned_listed)


def _job(entry: storage.ImageEntry, plan: Plan, run_id: str, out: str, *, owned: bool) -> Job:
    """The job of a listed image of `plan` whose output is `out`; `owned`: an earlier run of the root wrote it."""
    owner = plan.owner
    return Job(
        **_job_settings(entry, plan, run_id),
        output_uri=out,
        fingerprint=entry.fingerprint,
        mask_uri=entry.mask_uri,
        guide_uri=entry.guide_uri,
        provenance=owner.provenance(out) if owner else None,
        replace=owner is not None and (owner.overwrite or owned),
    )


def _job_settings(entry: storage.ImageEntry, plan: Plan, run_id: str) -> dict[str, Any]:
    """The fields of a job of `plan`'s image `entry` that every job has: which image, and the dataset's settings."""
    return {"run_id": run_id, "dataset": plan.dataset, "key": entry.key, "input_uri": entry.uri, "config": plan.config}


def _done_before_ctime(done: Any, plan: Plan, entry: storage.ImageEntry, adopt: Callable[[dict], None]) -> bool:
    """Whether the state holds the image with its fingerprint as recorded before fingerprints held the ctime
    (`storage.without_ctime`; not with the new one): done — and ``adopt`` records the new fingerprint, so that an
    output root's first run after the upgrade redoes none of its unchanged images, and the next runs match the new
    fingerprint. Only an image that is not done under its new fingerprint gets here: a nightly run's unchanged
    images never do."""
    old = storage.without_ctime(entry.fingerprint)
    c = plan.config
    if old is None or not done.is_done(plan.dataset, c.config_hash, entry.key, old):
        return False
    adopt(
        {
            "dataset": plan.dataset,
            "config_hash": c.config_hash,
            "image_key": entry.key,
            "input_fingerprint": entry.fingerprint,
            "output_uri": storage.redact(storage.output_uri(plan.output, entry.key)),
            "finished_at": utcnow(),
        }
    )
    return True


def _done_by_content(job: Job, done: Any, adopt: Callable[[dict[str, Any]], None], so: dict | None) -> bool:
    """Whether an image only an old report knows (no fingerprint in the state) is the one that report restored: read
    here, once, and adopted into the state when its content hash matches."""
    sha = done.legacy_sha256(job.dataset, job.config_hash, job.key)
    if sha is None:
        return False
    try:
        data = storage.read_bytes(job.input_uri, so)
    except (storage.StorageError, OSError):
        return False  # the worker reads it again and says what is wrong
    if storage.sha256_hex(data) != sha:
        return False
    adopt({**base_row(job), "input_sha256": sha, "status": "ok", "finished_at": utcnow()})
    return True


def with_headers(jobs: Iterable[Job], storage_options: dict | None, *, readers: int = 8) -> Iterator[Job]:
    """`jobs` in order, each with ``size`` from the first bytes of its input (`storage.read_head`, in `readers`
    threads, a bounded window ahead): what `pack_key` groups by. Only jobs to run come here — an image done
    earlier is never read. An unreadable head leaves ``size`` None: the job runs alone and its worker says why."""
    import dipcore.imageio  # noqa: F401 - once here, not concurrently in the reader threads

    def head(job: Job) -> Job:
        from dipcore import DipcoreError, image_shape

        try:
            size = image_shape(storage.read_head(job.input_uri, storage_options))
        except (storage.StorageError, OSError, DipcoreError):
            return job
        return dataclasses.replace(job, size=size)

    with ThreadPoolExecutor(max_workers=max(1, readers)) as pool:
        window: deque = deque()
        for job in jobs:
            window.append(pool.submit(head, job))
            if len(window) >= 2 * readers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _output_name(key: str) -> str:
    """The output's path relative to the root, without its ``.png`` (what `storage.output_uri` makes of `key`,
    without its safety checks): ``"sub/./a.jpg"`` → ``"sub/a"``."""
    folder, _, name = "/".join(seg for seg in key.split("/") if seg != ".").rpartition("/")
    stem = name.rpartition(".")[0] if "." in name.strip(".") else name
    return f"{folder}/{stem}" if folder else stem


def _collisions(entries: list[storage.ImageEntry], output: str, *, folds: bool, seen: set[str]) -> dict[str, str]:
    """Key → why, for each image of one folder whose output file would also be another image's: ``a.png`` and
    ``a.jpg`` (the extension is replaced by ``.png``), or keys that differ only in case on a filesystem that folds
    it. Every image of such a group gets an error row — none of them is restored, so that no result overwrites
    another and no output name changes under an existing dataset (resume finds outputs by name); renaming one input
    resolves it. Outputs mirror the folders, so a group lies in one folder; where names fold, a name that folds like
    one of an earlier folder (``A/x.png`` after ``a/x.png``) is refused too (`seen`: the folded names so far)."""
    groups: dict[str, list[str]] = {}
    for entry in entries:
        name = _output_name(entry.key)
        groups.setdefault(storage.fold(name) if folds else name, []).append(entry.key)
    clashes: dict[str, str] = {}
    for name, keys in groups.items():
        shown = storage.redact(f"{output.rstrip('/')}/{name}.png")
        if folds and name in seen:
            for key in keys:
                clashes[key] = f"{key}: its output {shown} folds to the output of an image in another folder"
        elif len(keys) > 1:
            for key in keys:
                others = ", ".join(k for k in keys if k != key)
                clashes[key] = (
                    f"{key}: its output {shown} would also be the output of {others}; none of them is restored, "
                    "so that one does not overwrite the other — rename one of them (outputs are <name>.png)"
                )
        if folds:
            seen.add(name)
    return clashes


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
    from dipcore import get_task

    if s.crop_size:
        h, w = min(h, s.crop_size), min(w, s.crop_size)
    if multiple := s.clean_multiple():
        h, w = h - h % multiple, w - w % multiple
    h, w = get_task(s.task).observed_size(h, w, s.scale)
    return (h, w, c) if h > 0 and w > 0 else None


def pack_key(job: Job, *, shape: tuple[int, ...] | None = None, canvas: str = "shared") -> tuple | None:
    """Jobs with equal keys can run as one batch (``dipcore.restore_batch``): same config (hence task and
    settings), same kind of side inputs, and observations that can share a canvas — with ``canvas="shared"`` those
    of one ``dipcore.canvas_bucket`` and channel count (the batch then runs on one canvas that holds them all),
    with ``"own"`` those of one shape. ``shape`` is the observation's (H, W, C) once decoded; by default the
    header's (`observation_shape`). None: the job runs alone."""
    shape = shape or observation_shape(job)
    if not job.packable or shape is None:
        return None
    sides = (job.mask_uri is not None, job.guide_uri is not None, job.reference_uri is not None)
    if canvas == "own":
        return job.config_hash, job.task, tuple(shape), sides
    from dipcore import canvas_bucket

    return job.config_hash, job.task, (canvas_bucket(job.preset, shape), shape[2]), sides


# ------------------------------------------------------------------------------------------------------ rows


def base_row(job: Job) -> dict[str, Any]:
    """The report columns a job determines before it runs (URIs redacted: no credentials in reports)."""
    return {
        "run_id": job.run_id,
        "dataset": job.dataset,
        "image_key": job.key,
        "input_uri": storage.redact(job.input_uri),
        "input_fingerprint": job.fingerprint,
        "task": job.task,
        "scale": job.scale,
        "variant": job.preset.variant,
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


def skipped_row(job: Job, reason: str | None = None) -> dict[str, Any]:
    """A ``skipped`` row: the image was restored with the same input and settings by an earlier run; or, with a
    `reason` (in the ``error`` column), the run does not restore it by policy (a symbolic link not followed) — such
    a row names no input or output, so that nothing (the HTML page's thumbnails) reads through it."""
    now = utcnow()
    row = {
        **base_row(job),
        "status": "skipped",
        "attempts": 0,
        "started_at": now,
        "finished_at": now,
        "wall_seconds": 0.0,
    }
    if reason is not None:
        row.update(error=storage.redact(reason), input_uri=None, output_uri=None)
    return row


def rejected_job(entry: storage.ImageEntry, plan: Plan, run_id: str) -> Job:
    """A stand-in job for an image that could not be planned, so that it still gets its error row."""
    return Job(**_job_settings(entry, plan, run_id), output_uri="")
