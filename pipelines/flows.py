"""Prefect flows: restore a dataset, evaluate on the paper's benchmarks. Each reads like a table of contents —
list → plan → skip what earlier runs finished → restore on Ray → report → artifacts — and every Prefect call stays
here on the driver (Ray workers never talk to Prefect: in ephemeral mode there is no server they could reach). The
long part, the Ray driver loop, is the task run ``restore-images``; where and how it runs is one parameter,
``execution`` (`pipelines.execution.options.Execution`), shown by Prefect's UI as one form.

Credentials: a flow's parameters are stored by Prefect (and shown in its UI), so secret storage options (keys,
secrets, tokens, passwords, an endpoint URL with ``user:password@`` …) must not be parameters, and neither may a URL
that holds a credential (``https://user:password@host/…``, a signed ``?X-Amz-Signature=…`` query). Pass the options
with ``with storage_credentials({...}):`` around the call, and such URLs as their redacted form
(`storage.redact`, ``https://***@host/…``) with the real one in ``storage_credentials(urls=storage.url_secrets([…]))``;
the flow swaps them back on entry. The CLI does both (`storage.split_secret_options`), as can the environment's usual
mechanisms (AWS_* variables, instance roles …); they reach the workers directly, never Prefect.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow.compute as pc
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.utilities.annotations import quote
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from pipelines import jobs, lease, ownership, progress, signals, storage
from pipelines.errors import PipelineError
from pipelines.evaluation.benchmarks import BENCHMARKS, describe
from pipelines.evaluation.protocols import evaluation_config
from pipelines.execution.options import Execution, autocast, compile_net
from pipelines.jobs import Job, Plan
from pipelines.reporting import reports, runs, state

if TYPE_CHECKING:
    from pipelines.execution.workers import JobOutcome, RunStats  # Ray is imported by the task, not by the flows

__all__ = ["Execution", "evaluate", "restore_dataset", "storage_credentials"]

_SECRETS: ContextVar[dict | None] = ContextVar("dipflow_storage_credentials", default=None)
_URLS: ContextVar[dict[str, str] | None] = ContextVar("dipflow_storage_urls", default=None)


# ----------------------------------------------------------------------------------------------- credentials


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for name, value in b.items():
        out[name] = (
            _merge(out[name], value) if isinstance(out.get(name), Mapping) and isinstance(value, Mapping) else value
        )
    return out


@contextlib.contextmanager
def storage_credentials(options: Mapping[str, Any] | None, urls: Mapping[str, str] | None = None) -> Iterator[None]:
    """Storage options merged into those of flows run inside this block, without becoming flow parameters; and
    `urls`, ``{redacted URL: real URL}`` (`storage.url_secrets`): a flow given a redacted URL as a parameter uses
    the real one."""
    token, url_token = _SECRETS.set(dict(options or {})), _URLS.set(dict(urls or {}))
    try:
        yield
    finally:
        _SECRETS.reset(token)
        _URLS.reset(url_token)


def _real(url: str | None) -> str | None:
    """The URL a redacted parameter stands for (`storage_credentials`); a URL still redacted is refused."""
    if url is None:
        return None
    real = (_URLS.get() or {}).get(url, url)
    if real == url and "***" in url and storage.redact(url) == url:
        raise storage.StorageOptionError(
            f"{url} is a redacted URL: pass the real one with flows.storage_credentials(urls=storage.url_secrets([…]))"
        )
    return real


def _options(parameters: Mapping[str, Any] | None) -> dict | None:
    merged = _merge(parameters or {}, _SECRETS.get() or {})
    return merged or None


# ------------------------------------------------------------------------------------------------------ tasks


def _transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry network hiccups, not a missing source, a bad key or a bad setting."""
    try:
        state.result()
    except (PipelineError, ValueError, PermissionError):  # missing source, bad URL or key, bad setting
        return False
    except Exception:  # noqa: BLE001 - anything else may be a flaky store
        return True
    return False


@task(name="load-state", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_transient, cache_policy=NO_CACHE)
def load_state(output: str, scopes: list[tuple[str, str]], storage_options: dict | None) -> state.DoneState:
    """What earlier runs restored into `output` for these (dataset, config hash) scopes: read once, filtered."""
    return state.DoneState.load(output, storage_options, scopes)


@task(name="restore-images", cache_policy=NO_CACHE)
def restore_images(
    todo: Iterable[Job],
    execution: Execution,
    storage_options: dict | None,
    on_result: Callable[[JobOutcome], None],
    *,
    local_only: bool = False,
    check: Callable[[], None] | None = None,
    on_progress: Callable[[list[progress.RunningFit]], None] | None = None,
) -> RunStats:
    """Restore the jobs of the stream `todo` on Ray actors, or in this process (``executor="inline"``, or
    memory:// storage — `local_only` — with "auto"), calling `on_result` on the driver for each finished image;
    returns the workers' `RunStats`. Not retried as a task: the driver loop retries each job whose worker died.
    `check` is called between jobs: what it raises (the run's lease lost) stops them. `on_progress` is handed the
    fits running now every few seconds (`workers.run_jobs`)."""
    from pipelines.execution import workers

    if execution.executor == "ray" and local_only:
        raise ValueError(
            "memory:// is private to this process, so Ray workers cannot read or write it; "
            "use execution.executor='inline' (or 'auto')"
        )
    if execution.executor == "inline" or (execution.executor == "auto" and local_only):
        why = "memory:// is private to it" if local_only else "executor=inline"
        _logger().info("running the jobs in this process (%s)", why)
        restorer = workers.Restorer(storage_options, engine=_engine(execution))
        return workers.run_inline(
            todo, restorer=restorer, on_result=on_result, pack=execution.pack, check=check, on_progress=on_progress
        )
    return _on_ray(todo, execution, storage_options, on_result, check, on_progress)


# ------------------------------------------------------------------------------------------------------ flows


@flow(name="restore-dataset", validate_parameters=True)
def restore_dataset(
    source: str,
    output: str,
    task: str,
    scale: PositiveInt | None = None,
    preset: Literal["paper", "fast"] = "paper",
    iterations: PositiveInt | None = None,
    overrides: dict[str, Any] | None = None,
    glob: str | None = None,
    storage_options: dict[str, Any] | None = None,
    seed: NonNegativeInt = 0,
    dataset: str | None = None,
    resume: bool = True,
    variant: str | None = None,
    early_stopping: bool | Literal["selfval"] | None = None,
    mask_dir: str | None = None,
    guide_suffix: str | None = None,
    limit: PositiveInt | None = None,
    execution: Execution = Execution(),
    break_lease: bool = False,
    lease_stale_after: PositiveFloat = lease.DEFAULT_STALE_AFTER,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Restore every image under `source` (any fsspec URL) into `output` with ``dipcore.restore``, on Ray actors,
    and write the Parquet report beside the outputs. Returns a small summary (run id, report URI, counts).

    `execution` says where and how (the Ray cluster, actors, retries, packing; a plain dict is validated into it).
    With ``execution.pack``, images of one shape run as one batch on an actor (``dipcore.restore_batch``);
    ``"auto"`` packs one per thread on CPU actors (one-CPU actors: none) and as many as the card's free memory holds
    (at most 8) on GPU actors.

    Nothing that is not the run's own is overwritten: an output root equal to the source, holding the source or a
    mask folder, is refused (`storage.check_output_root`); one inside the source is left out of the listing; images
    whose outputs would be one file get error rows; a file at an output's place that no run into the output root
    wrote is not replaced (`pipelines.ownership`: that image gets an error row, before its fit) unless `overwrite`.
    One run writes to an output root at a time: the run holds its
    lease (`pipelines.lease`); `break_lease` takes over a lease held by a run known to be dead, and a lease without
    heartbeat for `lease_stale_after` seconds is taken over anyway."""
    so = _options(storage_options)
    source, output, mask_dir = _real(source), _real(output), _real(mask_dir)
    dataset = dataset or storage.redact(source)  # the source as given names the dataset (its identity), as before
    # Absolute before anything is written: workers in another working directory must find the same place.
    source, output = storage.absolute(source), storage.absolute(output)
    mask_dir = storage.absolute(mask_dir) if mask_dir is not None else None
    config = jobs.run_config(
        task,
        scale=scale,
        variant=variant,
        preset=preset,
        iterations=iterations,
        early_stopping=early_stopping,
        overrides=overrides,
        seed=seed,
    )
    storage.check_source(source, so)  # before anything is written: a mistyped source leaves no output behind
    inside = storage.check_output_root(output, source, so, side_inputs=[mask_dir])  # before anything is written
    # a wrong Ray address, or local paths that the cluster's nodes do not share, fail here, writing nothing
    _check_cluster(execution, _memory(source, output), (source, output, mask_dir))
    storage.check_writable(output, so)  # before any listing or fit: an output it cannot write costs only this
    run_id = _new_run_id()
    with _lease(output, so, run_id, break_lease, lease_stale_after) as held:
        if inside:
            _logger().info("the output lies inside the source: its files are never taken as inputs")
        plan = Plan(dataset=dataset, config=config, output=output, source=storage.redact(source))

        def listing() -> Iterator[storage.Listing]:
            return storage.iter_listing(
                source, glob=glob, storage_options=so, mask_dir=mask_dir, guide_suffix=guide_suffix, exclude=output
            )

        return _run(
            run_id,
            [(plan, listing)],
            output=output,
            storage_options=so,
            execution=execution,
            resume=resume,
            limit=limit,
            local_only=_memory(source, output),
            overwrite=overwrite,
            title=f"restoring ({task})",
            artifact="restore-dataset",
            held=held,
        )


@flow(name="evaluate", validate_parameters=True)
def evaluate(
    benchmarks: list[str],
    data_root: str,
    output: str,
    task: str | None = None,
    scale: PositiveInt | None = None,
    preset: Literal["paper", "fast"] = "paper",
    iterations: PositiveInt | None = None,
    overrides: dict[str, Any] | None = None,
    sigma: PositiveFloat | None = None,
    crop: PositiveInt | None = None,
    limit: PositiveInt | None = None,
    storage_options: dict[str, Any] | None = None,
    seed: NonNegativeInt = 0,
    resume: bool = True,
    early_stopping: Literal["observe", "stop", "off"] = "observe",
    runs: PositiveInt | None = None,
    classical: bool = True,
    execution: Execution = Execution(),
    break_lease: bool = False,
    lease_stale_after: PositiveFloat = lease.DEFAULT_STALE_AFTER,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score dipcore on benchmarks with the paper's protocol: each of `benchmarks` is a name under `data_root`
    (set5, set14 → SR ×4; cbm3d9 → denoising σ=25; heide11 → inpainting, 50 % of pixels dropped) or a folder URL
    of clean images (SR ×4 unless `task` says otherwise). The observation is synthesised from the clean image in
    the worker; outputs go to ``<output>/<benchmark>/`` and every row carries PSNR, SSIM and the baseline's PSNR.
    `execution` is as for `restore_dataset`: images whose observations have one shape can run as one batch.

    ``early_stopping="observe"`` (default) adds the early-stopping study to every row (the rule's choice beside the
    best PSNR along the run); ``runs`` runs are averaged per image (default 2 for cbm3d9 as in the paper, else 1);
    ``classical`` scores CBM3D/NLM (denoising) or biharmonic inpainting beside DIP. The output root is checked
    against every benchmark's folder and leased as for `restore_dataset`; two benchmarks with one dataset name
    (hence one output folder) are refused; `overwrite` as for `restore_dataset`."""
    if not benchmarks:
        raise ValueError(f"name at least one benchmark ({describe()}) or a folder of clean images")
    so = _options(storage_options)
    data_root, output = storage.absolute(_real(data_root)), storage.absolute(_real(output))  # as for restore_dataset
    sources = [_benchmark_source(name, data_root) for name in benchmarks]  # the name as given: a dataset name holds
    sources = [(storage.absolute(_real(source)), dataset) for source, dataset in sources]  # no secret
    _check_datasets(benchmarks, [dataset for _, dataset in sources], output, so)
    for source, _ in sources:
        storage.check_source(source, so)
        storage.check_output_root(output, source, so)
    _check_cluster(  # as for restore_dataset
        execution, _memory(output, *(source for source, _ in sources)), (output, *(source for source, _ in sources))
    )
    storage.check_writable(output, so)
    run_id = _new_run_id()
    settings = {
        "task": task,
        "scale": scale,
        "sigma": sigma,
        "crop": crop,
        "preset": preset,
        "iterations": iterations,
        "overrides": overrides,
        "seed": seed,
        "early_stopping": early_stopping,
        "runs": runs,
        "classical": classical,
    }
    with _lease(output, so, run_id, break_lease, lease_stale_after) as held:
        return _run(
            run_id,
            _evaluation_sources(benchmarks, sources, output=output, so=so, settings=settings),
            output=output,
            storage_options=so,
            execution=execution,
            resume=resume,
            limit=limit,
            local_only=_memory(output, *(source for source, _ in sources)),
            overwrite=overwrite,
            title="evaluating",
            artifact="evaluate",
            held=held,
        )


def _evaluation_sources(
    benchmarks: list[str], sources: list[tuple[str, str]], *, output: str, so: dict | None, settings: dict[str, Any]
) -> list[tuple[Plan, Callable[[], Iterable[storage.Listing]]]]:
    """One plan per benchmark, with its evaluation config, and its listing (the output root left out)."""
    out = []
    for name, (source, dataset) in zip(benchmarks, sources, strict=True):
        plan = Plan(
            dataset=dataset,
            config=evaluation_config(name, **settings),
            output=storage.join(output, dataset),
            source=storage.redact(source),
        )
        out.append((plan, functools.partial(storage.iter_listing, source, storage_options=so, exclude=output)))
    return out


def _memory(*urls: str | None) -> bool:
    """memory:// is private to this process: Ray workers could neither read nor write it."""
    return any(u is not None and u.startswith("memory://") for u in urls)


def _check_datasets(benchmarks: list[str], datasets: list[str], output: str, so: dict | None) -> None:
    """Refuse two benchmarks whose outputs would share ``<output>/<dataset>/`` (one named twice, or two folders
    with one name): their outputs and rows would overwrite each other's."""
    folds = storage.folds_case(output, so)
    seen: dict[str, str] = {}
    for name, dataset in zip(benchmarks, datasets, strict=True):
        first = seen.setdefault(storage.fold(dataset) if folds else dataset, name)
        if first != name or benchmarks.count(name) > 1:
            raise storage.OutputOverlapError(
                f"benchmarks {first!r} and {name!r} would both write to {storage.redact(storage.join(output, dataset))}"
                "/: name each benchmark once, and give folders of clean images distinct names"
            )


@contextlib.contextmanager
def _lease(output: str, so: dict | None, run_id: str, break_lease: bool, stale_after: float) -> Iterator[lease.Lease]:
    """The run's lease on its output root, held until the run ends however it ends (`pipelines.lease`); a takeover
    is said on the watcher's console too (one line), not only in the flow's log."""
    logger = _logger()

    def warn(message: str) -> None:
        logger.warning(message)
        progress.note(message)

    # SIGTERM inside the run raises a KeyboardInterrupt, not Prefect's TerminationSignal (`pipelines.signals`: Ray's
    # wait turns the latter into a SystemError); it reaches Prefect's handler when the lease is released.
    with (
        signals.sigterm_as_interrupt(),
        lease.hold(
            output,
            so,
            run_id=run_id,
            flow_run_id=_flow_run_id(),
            stale_after=stale_after,
            break_lease=break_lease,
            warn=warn,
        ) as held,
    ):
        yield held
    if held.lost:
        logger.error("run %s lost its lease on %s to another run while it ran", run_id, storage.redact(output))


def _benchmark_source(name: str, data_root: str) -> tuple[str, str]:
    """(source URL, dataset name): a known benchmark under `data_root`, else `name` is itself a folder URL."""
    if name in BENCHMARKS:
        return storage.join(data_root, name), name
    last = name.rstrip("/").rpartition("/")[2] or "dataset"
    try:
        return name, storage.safe_key(last)
    except storage.UnsafeKeyError:
        return name, "dataset"


# ---------------------------------------------------------------------------------------------------- running


def _new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:  # called through .fn() or outside a run
        return get_logger("dipflow")


def _in_flow_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def _run(
    run_id: str,
    sources: list[tuple[Plan, Callable[[], Iterable[storage.Listing]]]],
    *,
    output: str,
    storage_options: dict | None,
    execution: Execution,
    resume: bool,
    limit: int | None,
    local_only: bool,
    title: str,
    artifact: str,
    overwrite: bool = False,
    held: lease.Lease | None = None,
) -> dict[str, Any]:
    """List, skip what is done, run the rest — streaming: the first job is dispatched while the listing goes on —,
    append every row to the report as it arrives, record what is done in the state, write the run's summary row and
    publish it."""
    logger, so = _logger(), storage_options
    clock = _Clock()
    plans = [plan for plan, _ in sources]
    scopes = [(p.dataset, p.config.config_hash) for p in plans]
    _recover(output, so, logger)
    done = load_state(output, scopes, so) if resume else state.DoneState.load(output, so, [])
    # Each dataset's listing is started here, up to its first image: an empty source fails before anything else.
    listings = [_primed(plan, listing()) for plan, listing in sources]
    owner = ownership.Owner(output, ownership.root_id(output, so), overwrite)  # outputs are marked as the root's
    for plan in plans:  # (the root's id made here: a source without images leaves none behind)
        plan.owner = owner
    logger.info(
        "run %s: %d dataset(s); earlier runs restored %d image(s) with these settings; report under %s",
        run_id,
        len(plans),
        len(done),
        storage.redact(output),
    )
    tracker = _Tracker(artifact, plans, enabled=_in_flow_run())
    flow_run_id = _flow_run_id()
    stats: RunStats | None = None
    outcome, failure = "interrupted", None
    try:
        # The state is the outer block: the report's last rows are flushed before the state's, and both before the
        # report's commit, so that a crash during the commit redoes no image.
        with (
            _closing(state.StateWriter(output, run_id, so)) as sw,
            reports.ReportWriter(output, run_id, so, before_commit=sw.flush) as writer,
        ):

            def record(row: dict[str, Any], curves: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
                check()
                written = writer.rows_written
                writer.append({**row, "flow_run_id": flow_run_id}, curves)  # flushed together
                if row["status"] == "ok":
                    sw.add(row)
                if writer.rows_written != written:  # the state never runs ahead of the report
                    sw.flush()
                tracker.advance(row)
                if row["status"] == "error":
                    key, error = row["image_key"], str(row.get("error"))
                    logger.warning("failed: %s", error if error.startswith(key) else f"{key}: {error}")

            def check() -> None:  # another run took the output root over: not one more write, not even a flush
                if held is not None and held.lost:
                    writer.abandon()
                    sw.abandon()
                    held.check()

            def planned() -> Iterator[Job]:
                for plan, chunks in zip(plans, listings, strict=True):
                    yield from jobs.plan_stream(
                        _timed(chunks, plan, clock, tracker.listed),
                        plan,
                        run_id=run_id,
                        done=done,
                        record=record,
                        adopt=sw.adopt,  # images done earlier, recorded anew: written without waiting
                        storage_options=so,
                        limit=limit,
                    )

            progress.started(None, title)
            try:
                todo: Iterator[Job] = planned()
                if execution.pack != 1:
                    todo = jobs.with_headers(todo, so)
                first = next(todo, None)  # nothing new: no worker is started at all
                if first is not None:
                    stats = restore_images(
                        quote(itertools.chain([first], todo)),  # quoted: Prefect must not walk the stream for futures
                        execution,
                        so,
                        lambda o: record(o.row, o.curves),
                        local_only=local_only,
                        check=check,
                        on_progress=tracker.running,
                    )
            finally:
                progress.finished()
                tracker.close()
            check()  # before the writers close: a lost run neither commits its report nor merges the state
        outcome = "finished"
    except Exception as exc:
        outcome, failure = "failed", storage.redact(str(exc) or type(exc).__name__)
        raise
    finally:
        if held is None or not held.lost:  # the runs table is the output root's, hence the new holder's
            _write_runs(output, so, run_id, flow_run_id, plans, tracker, clock, stats, outcome, failure, logger)
    for plan in plans:
        if plan.not_images:
            shown = ", ".join(f"{k} ({why})" for k, why in plan.not_images_shown[:5])
            more = " …" if plan.not_images > 5 else ""
            logger.warning("%s: %d file(s) are not images: %s%s", plan.dataset, plan.not_images, shown, more)
        if plan.unlisted:
            logger.warning("%s: %s", plan.dataset, jobs.unlisted_line(plan.unlisted))
    return _publish(run_id, flow_run_id, output, so, plans, tracker, artifact, logger)


class _Clock:
    """Seconds since the run started (monotonic), and its start in UTC."""

    def __init__(self) -> None:
        self.started_at, self.t0 = jobs.utcnow(), time.monotonic()

    def since(self, t: float | None = None) -> float:
        return (time.monotonic() if t is None else t) - self.t0


def _recover(output: str, so: dict | None, logger: Any) -> None:
    """What runs killed before their end left under `output` (under this run's lease, before it writes anything):
    their report parts committed, leftovers of interrupted commits and merges and temporaries removed. A failure is
    logged, never raised: every step leaves each row readable once, and the next run tries again."""
    try:
        done = reports.recover(output, so)
        tidied = state.tidy(output, so) + runs.tidy(output, so)
    except Exception as exc:  # noqa: BLE001 - what is left reads correctly; this run's own work comes first
        logger.warning("what an interrupted run left under %s stays for now: %s", storage.redact(output), exc)
        return
    if any(c.written for c in done.values()):
        rows = done["report"].rows
        logger.info("committed the report of interrupted run(s): %d row(s) (readers of report/ see them now)", rows)
    elif tidied or any(c.removed for c in done.values()):
        logger.info("removed what interrupted runs left under %s", storage.redact(output))


@contextlib.contextmanager
def _closing(writer: state.StateWriter) -> Iterator[state.StateWriter]:
    """The state writer, closed (flushed, merged) when the run ends well; only flushed when it fails."""
    try:
        yield writer
    except BaseException:
        writer.flush()
        raise
    writer.close()


def _timed(
    chunks: Iterable[storage.Listing], plan: Plan, clock: _Clock, on_chunk: Callable[[], None]
) -> Iterator[storage.Listing]:
    """`chunks` as they come, telling the tracker after each, and noting when the listing ended."""
    for chunk in chunks:
        yield chunk
        on_chunk()
    plan.listing_seconds = clock.since()
    on_chunk()


def _primed(plan: Plan, chunks: Iterable[storage.Listing]) -> Iterator[storage.Listing]:
    """`chunks`, listed up to the first folder with an image in it; a dataset without any image raises
    `StorageNotFoundError`, saying what the source holds instead."""
    it = iter(chunks)
    pulled: list[storage.Listing] = []
    for chunk in it:
        pulled.append(chunk)
        if chunk.images or chunk.excluded:
            return itertools.chain(pulled, it)
    raise storage.StorageNotFoundError(_nothing_to_restore(plan.dataset, [s for c in pulled for s in c.skipped]))


def _nothing_to_restore(dataset: str, not_images: list[tuple[str, str]]) -> str:
    """Why a dataset has no image to restore: an empty source, or what its files are instead."""
    if not not_images:
        return f"no images in dataset {dataset}: the source holds no files"
    reasons: dict[str, int] = {}
    for _key, why in not_images:
        reasons[why] = reasons.get(why, 0) + 1
    shown = "; ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:4])
    return f"no images in dataset {dataset}: {len(not_images)} file(s), none to restore ({shown})"


def _write_runs(
    output: str,
    so: dict | None,
    run_id: str,
    flow_run_id: str | None,
    plans: list[Plan],
    tracker: _Tracker,
    clock: _Clock,
    stats: RunStats | None,
    outcome: str,
    failure: str | None,
    logger: Any,
) -> None:
    """The run's rows of the runs table, one per dataset; a failure to write them is logged, never raised over the
    run's own outcome."""
    first = clock.since(stats.first_dispatch) if stats is not None and stats.first_dispatch else None
    finished, seconds = jobs.utcnow(), clock.since()
    rows = [
        {
            "flow_run_id": flow_run_id,
            "dataset": p.dataset,
            "source": p.source,
            "task": p.config.task,
            "config_hash": p.config.config_hash,
            "config_json": p.config.config_json,
            "outcome": outcome,
            "error": failure,
            "listed": p.listed,
            "ok": tracker.by_dataset[p.dataset, "ok"],
            "errors": tracker.by_dataset[p.dataset, "error"],
            "done_earlier": p.done_earlier,
            "not_restored": p.excluded,
            "not_images": p.not_images,
            "verified_by_content": p.verified_by_content,
            "started_at": clock.started_at,
            "finished_at": finished,
            "seconds": seconds,
            "seconds_to_first_dispatch": first,
            "seconds_listing": p.listing_seconds,
            "unlisted_outputs": p.unlisted,
        }
        for p in plans
    ]
    try:
        with signals.deferred():  # a run stopped now still has its row
            runs.write_run_summary(output, run_id, rows, so)
    except Exception as exc:  # noqa: BLE001 - the run's own outcome (and error) is what the caller must see
        logger.warning("run %s: its summary row was not written: %s", run_id, storage.redact(str(exc)))


def _engine(ex: Execution) -> Any:
    """The dipcore engine every worker runs with: dipcore's defaults, but for the precision and compilation the run
    asks for."""
    import dipcore

    return dipcore.EngineOptions(autocast=autocast(ex.precision), compile=compile_net(ex.compile))


def _check_cluster(ex: Execution, local_only: bool, paths: Sequence[str | None]) -> None:
    """The Ray cluster a run joins answers within its connect timeout (`workers.check_cluster`) and can reach the
    run's `paths` (`reach.check_local_paths`), asked before the run writes anything (its lease, the output's
    folder); a private Ray or no Ray at all: nothing to ask."""
    if ex.executor == "inline" or (ex.executor == "auto" and local_only):
        return
    if ex.ray_address == "local" or (ex.ray_address is None and not os.environ.get("RAY_ADDRESS")):
        return  # a private Ray: Ray is not even imported for it here
    from pipelines.execution import reach, workers

    nodes = workers.check_cluster(ex.ray_address, ex.ray_connect_timeout)
    local = [storage.redact(u) for u in dict.fromkeys(paths) if u is not None and storage.is_local(u)]
    reach.check_local_paths(local, ex.ray_address, nodes, ex.local_paths_shared)


def _on_ray(
    todo: Iterable[Job],
    ex: Execution,
    so: dict | None,
    on_result: Callable[[JobOutcome], None],
    check: Callable[[], None] | None = None,
    on_progress: Callable[[list[progress.RunningFit]], None] | None = None,
) -> RunStats:
    """`todo` on a pool of Ray actors sized for the cluster (a private local Ray when no address is given)."""
    from pipelines.execution import workers

    logger = _logger()
    with workers.ray_session(ex.ray_address, ex.ray_connect_timeout):
        # As many jobs as the cluster holds actors, drawn before the pool starts: a run of fewer starts fewer.
        size, _, _ = workers.WorkerPool.cluster_size(ex.gpus_per_worker, ex.cpus_per_worker, ex.num_workers)
        todo = iter(todo)
        head = list(itertools.islice(todo, size))
        todo = itertools.chain(head, todo)
        pool = workers.WorkerPool.for_cluster(
            gpus_per_worker=ex.gpus_per_worker,
            cpus_per_worker=ex.cpus_per_worker,
            num_workers=ex.num_workers,
            max_workers=len(head),
            storage_options=so,
            engine=_engine(ex),
        )
        logger.info(
            "%d Ray worker(s), each %s",
            len(pool.slots),
            {k: v for k, v in pool.options.items() if k != "scheduling_strategy"},
        )
        try:
            stats = workers.run_jobs(
                todo,
                workers=pool,
                on_result=on_result,
                max_attempts=ex.max_attempts,
                timeout=ex.job_timeout,
                pack=ex.pack,
                log=lambda message: logger.warning(storage.redact(message)),  # its reasons may quote a URL
                check=check,
                on_progress=on_progress,
            )
        finally:
            pool.shutdown()
        logger.info(
            "workers: %d ok, %d failed, %d lost attempt(s), %d restart(s), %d job(s) in batches in %.1f s",
            stats.ok,
            stats.errors,
            stats.failed_attempts,
            stats.restarts,
            stats.packed,
            stats.seconds,
        )
        return stats


def _flow_run_id() -> str | None:
    if not _in_flow_run():
        return None
    from prefect.runtime import flow_run

    return str(flow_run.id)


_LIVE_EVERY = 3.0  # seconds between two updates of the progress artifact as running fits move


class _Tracker:
    """Counts of the run's rows by status (and by dataset), images done earlier, the fits running now, and Prefect's
    progress artifact (updated at most once a second as rows arrive, every `_LIVE_EVERY` seconds as fits move: the
    share finished, running fits counted by their iterations, and a table of them in its description) against the
    images listed so far — the total grows with the listing, and is read from the plans whenever a row arrives: a
    folder's images count as listed as soon as its planning starts, before any of its rows, so the finished share
    never passes 100 %. Rows arrive on the driver's thread, running fits on it or (in-process runs) on a thread of
    their own: a lock keeps the two apart."""

    def __init__(self, key: str, plans: Sequence[Plan] = (), *, enabled: bool) -> None:
        self.counts, self.by_dataset = progress.StatusCounts(), Counter()
        self.plans = plans
        self.total = self.done = self.earlier = 0
        self.fits: list[progress.RunningFit] = []
        self.artifact_id, self.last = None, 0.0
        self._lock = threading.Lock()
        if enabled:
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(0.0, key=f"{key}-progress", description="images finished")

    def advance(self, row: Mapping[str, Any]) -> None:
        with self._lock:
            self.done += 1
            self.counts.add(row)
            self.by_dataset[row["dataset"], row["status"]] += 1
            self.fits = [f for f in self.fits if (f.dataset, f.key) != (row["dataset"], row.get("image_key"))]
            self._catch_up()
            progress.advanced(row)
            self._maybe_update(1.0)

    def listed(self) -> None:
        """The listing moved on: images listed so far, and those found done by earlier runs."""
        with self._lock:
            self._catch_up()
            self._maybe_update(1.0)

    def running(self, fits: list[progress.RunningFit]) -> None:
        """The fits running now, as the workers last told (`workers.run_jobs`' ``on_progress``)."""
        with self._lock:
            self.fits = fits
            progress.running(fits, self._eta())
            self._maybe_update(_LIVE_EVERY)

    def _eta(self) -> float | None:
        return progress.run_eta(self.fits, self.total - self.done - self.earlier - len(self.fits))

    def _catch_up(self) -> None:
        """The plans' counts as they stand, told to the progress bar when they moved."""
        total = sum(p.listed for p in self.plans)
        earlier = sum(p.done_earlier for p in self.plans)
        if (total, earlier) != (self.total, self.earlier):
            progress.listed(total, earlier - self.earlier)
            self.total, self.earlier = total, earlier

    def _maybe_update(self, every: float) -> None:
        if self.artifact_id is not None and time.monotonic() - self.last >= every:
            self._update()

    def _update(self) -> None:
        from prefect.artifacts import update_progress_artifact

        finished = self.done + self.earlier
        share = 100.0 * min(1.0, (finished + sum(f.fraction for f in self.fits)) / self.total) if self.total else 100.0
        described = progress.markdown(self.fits, finished, self.total, self._eta()) if self.fits else "images finished"
        update_progress_artifact(self.artifact_id, share, description=described)
        self.last = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self.fits = []
            if self.artifact_id is not None:
                self._update()


def _publish(
    run_id: str,
    flow_run_id: str | None,
    output: str,
    so: dict | None,
    plans: list[Plan],
    tracker: _Tracker,
    artifact: str,
    logger: Any,
) -> dict[str, Any]:
    """The run's summary from its report rows as written, and the images done earlier (counted, not rows): Prefect
    table and markdown artifacts, and the return value. Reads this run's rows only."""
    table = reports.read_report(output, so, run_id=run_id)
    summary = _with_done_earlier(reports.to_records(reports.summarize(table)), plans)
    failed = table.filter(pc.equal(table.column("status"), "error"))
    failures = [
        {"dataset": r["dataset"], "image_key": r["image_key"], "error": r["error"]}
        for r in failed.select(["dataset", "image_key", "error"]).to_pylist()
    ]
    passed = table.filter(pc.and_(pc.equal(table.column("status"), "skipped"), pc.is_valid(table.column("error"))))
    not_restored = [
        {"dataset": r["dataset"], "image_key": r["image_key"], "reason": r["error"]}
        for r in passed.select(["dataset", "image_key", "error"]).to_pylist()
    ]
    noted = table.filter(pc.is_valid(table.column("notes")))  # what outputs could not keep of their inputs
    notes = [
        {"dataset": r["dataset"], "image_key": r["image_key"], "notes": r["notes"]}
        for r in noted.select(["dataset", "image_key", "notes"]).to_pylist()
    ]
    # Only paths that exist: a run that found nothing new wrote no report, and its runs row may have failed to write.
    report = storage.join(output, "report", f"run_id={run_id}")
    report_uri = storage.redact(report) if table.num_rows and storage.exists(report, so) else None
    runs_uri = runs.runs_uri(output, run_id)
    runs_uri = storage.redact(runs_uri) if storage.exists(runs_uri, so) else None
    not_images = sum(p.not_images for p in plans)
    counts = tracker.counts
    skipped = counts["skipped"] + tracker.earlier
    if _in_flow_run():
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        create_table_artifact(summary, key=f"{artifact}-summary", description=f"dipflow run {run_id}")
        markdown = reports.summary_markdown(reports.to_table(summary, reports.SUMMARY_SCHEMA))
        said = f"Report: `{report_uri}`" if report_uri else "No report rows: nothing new to restore."
        lines = [f"# dipflow run `{run_id}`", "", markdown, said, ""]
        try:  # best effort: a page that cannot be written costs its link, never the run
            import os

            from pipelines.reporting import html_report

            page = html_report.write_html_report(
                output,
                storage.join(output, "html", f"run_id={run_id}", "index.html"),
                run_id=run_id,
                storage_options=so,
            )
            href = page.uri if "://" in page.uri else f"file://{os.path.abspath(page.uri)}"  # redacted already
            lines[-1:] = [f"HTML report: [{page.uri}]({href})", ""]
        except Exception as exc:  # noqa: BLE001 - the HTML page is a view: its failure costs the page, not the run
            logger.warning("no HTML report for run %s: %s", run_id, storage.redact(str(exc)))
        lines += [f"- **{f['dataset']}/{f['image_key']}**: {f['error']}" for f in failures[:50]]
        lines += [f"- not restored: **{f['dataset']}/{f['image_key']}**: {f['reason']}" for f in not_restored[:50]]
        if not_images:
            lines.append(f"\n{not_images} file(s) in the source(s) are not images (see the flow's log).")
        create_markdown_artifact("\n".join(lines), key=f"{artifact}-report", description=f"dipflow run {run_id}")
    logger.info(
        "run %s finished: %d ok, %d failed, %d done by earlier runs, %d not restored",
        run_id,
        counts["ok"],
        counts["error"],
        tracker.earlier,
        counts["skipped"],
    )
    return {
        "run_id": run_id,
        "flow_run_id": flow_run_id,
        "output": storage.redact(output),
        "report": report_uri,
        "runs": runs_uri,
        "images": counts["ok"] + counts["error"] + skipped,
        "ok": counts["ok"],
        "error": counts["error"],
        "skipped": skipped,
        "done_earlier": tracker.earlier,
        "not_images": not_images,
        "unlisted_outputs": sum(p.unlisted or 0 for p in plans),
        "not_images_shown": [
            {"dataset": p.dataset, "key": key, "reason": why} for p in plans for key, why in p.not_images_shown
        ],
        "not_restored": not_restored,
        "failures": failures,
        "notes": notes,
        "summary": summary,
    }


def _with_done_earlier(summary: list[dict[str, Any]], plans: list[Plan]) -> list[dict[str, Any]]:
    """`summary` (one record per dataset, task and scale, from the run's rows) with the images done by earlier runs
    counted as skipped, as the report once held them as rows; a dataset with only such images gets a record."""
    for plan in plans:
        if not plan.done_earlier:
            continue
        mine = [r for r in summary if r["dataset"] == plan.dataset]
        if not mine:
            mine = [
                {
                    "dataset": plan.dataset,
                    "task": plan.config.task,
                    "scale": plan.config.restore_kwargs.get("scale"),
                    "images": 0,
                    "ok": 0,
                    "errors": 0,
                    "skipped": 0,
                    "psnr": None,
                    "psnr_baseline": None,
                    "ssim": None,
                    "mean_wall_seconds": None,
                    "total_wall_seconds": 0.0,
                }
            ]
            summary.append(mine[0])
        mine[0]["images"] += plan.done_earlier
        mine[0]["skipped"] += plan.done_earlier
    return summary
