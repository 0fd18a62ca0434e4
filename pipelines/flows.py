"""Prefect flows: restore a dataset, evaluate on the paper's benchmarks. Each reads like a table of contents —
list → plan → skip what earlier runs finished → restore on Ray → report → artifacts — and every Prefect call stays
here on the driver (Ray workers never talk to Prefect: in ephemeral mode there is no server they could reach). The
long part, the Ray driver loop, is the task run ``restore-images``. Each group of knobs is one parameter, shown by
Prefect's UI as one form: what to restore and how (``settings``, `pipelines.settings`), which files (``selection``),
where and how the jobs run (``execution``, `pipelines.execution.options.Execution`) and what a run does with its
output root (``options``).

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
import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.utilities.annotations import quote

from pipelines import jobs, lease, ownership, progress, run_records, run_sources, signals, storage
from pipelines.credentials import merged_options, real_url, storage_credentials
from pipelines.errors import PipelineError
from pipelines.evaluation.benchmarks import describe
from pipelines.execution.options import Execution, autocast, compile_net
from pipelines.jobs import Job, Plan
from pipelines.reporting import reports, state
from pipelines.run_sources import benchmark_source, check_datasets, evaluation_sources, in_memory
from pipelines.run_tracker import Clock, Tracker
from pipelines.settings import EvaluationSettings, RestoreSettings, RunOptions, Selection

if TYPE_CHECKING:
    from pipelines.execution.workers import JobOutcome, RunStats  # Ray is imported by the task, not by the flows

__all__ = [
    "EvaluationSettings",
    "Execution",
    "RestoreSettings",
    "RunOptions",
    "Selection",
    "evaluate",
    "restore_dataset",
    "storage_credentials",
]

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
    settings: RestoreSettings,
    selection: Selection = Selection(),
    execution: Execution = Execution(),
    options: RunOptions = RunOptions(),
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore every image under `source` (any fsspec URL) into `output` with ``dipcore.restore``, on Ray actors,
    and write the Parquet report beside the outputs. Returns a small summary (run id, report URI, counts).

    Each of the models is one parameter (a plain dict is validated into it): `settings`, what to restore and how
    (`pipelines.settings.RestoreSettings`: the task, the preset and what changes it, the seed, stopping);
    `selection`, which files are images and their side inputs (glob, mask folder, guide suffix) and the dataset's
    name; `execution`, where and how (the Ray cluster, actors, retries, packing: images of one shape run as one
    batch on an actor, ``dipcore.restore_batch``); `options`, what the run does with its output root (resume,
    limit, overwrite, the lease).

    Nothing that is not the run's own is overwritten: an output root equal to the source, holding the source or a
    mask folder, is refused (`storage.check_output_root`); one inside the source is left out of the listing; images
    whose outputs would be one file get error rows; a file at an output's place that no run into the output root
    wrote is not replaced (`pipelines.ownership`: that image gets an error row, before its fit) unless
    ``options.overwrite``. One run writes to an output root at a time: the run holds its lease (`pipelines.lease`);
    ``options.break_lease`` takes over a lease held by a run known to be dead, and a lease without heartbeat for
    ``options.lease_stale_after`` seconds is taken over anyway."""
    so = merged_options(storage_options)
    source, output, mask_dir = real_url(source), real_url(output), real_url(selection.mask_dir)
    dataset = selection.dataset or storage.redact(source)  # the source as given names the dataset (its identity)
    # Absolute before anything is written: workers in another working directory must find the same place.
    source, output = storage.absolute(source), storage.absolute(output)
    mask_dir = storage.absolute(mask_dir) if mask_dir is not None else None
    config = jobs.restore_config(settings)
    storage.check_source(source, so)  # before anything is written: a mistyped source leaves no output behind
    inside = storage.check_output_root(output, source, so, side_inputs=[mask_dir])  # before anything is written
    # a wrong Ray address, or local paths that the cluster's nodes do not share, fail here, writing nothing
    _check_cluster(execution, in_memory(source, output), (source, output, mask_dir))
    storage.check_writable(output, so)  # before any listing or fit: an output it cannot write costs only this
    run_id = _new_run_id()
    with _lease(output, so, run_id, options) as held:
        if inside:
            _logger().info("the output lies inside the source: its files are never taken as inputs")
        plan = Plan(dataset=dataset, config=config, output=output, source=storage.redact(source))

        def listing() -> Iterator[storage.Listing]:
            return storage.iter_listing(
                source,
                glob=selection.glob,
                storage_options=so,
                mask_dir=mask_dir,
                guide_suffix=selection.guide_suffix,
                exclude=output,
            )

        return _run(
            run_id,
            [(plan, listing)],
            output=output,
            storage_options=so,
            execution=execution,
            options=options,
            local_only=in_memory(source, output),
            title=f"restoring ({settings.task})",
            artifact="restore-dataset",
            held=held,
        )


@flow(name="evaluate", validate_parameters=True)
def evaluate(
    benchmarks: list[str],
    data_root: str,
    output: str,
    settings: EvaluationSettings = EvaluationSettings(),
    execution: Execution = Execution(),
    options: RunOptions = RunOptions(),
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score dipcore on benchmarks with the paper's protocol: each of `benchmarks` is a name under `data_root`
    (set5, set14 → SR ×4; cbm3d9 → denoising σ=25; heide11 → inpainting, 50 % of pixels dropped) or a folder URL
    of clean images (SR ×4 unless ``settings.task`` says otherwise). The observation is synthesised from the clean
    image in the worker; outputs go to ``<output>/<benchmark>/`` and every row carries PSNR, SSIM and the
    baseline's PSNR. `execution` and `options` are as for `restore_dataset`: images whose observations have one
    shape can run as one batch.

    `settings` (`pipelines.settings.EvaluationSettings`) holds the protocol besides the restoration's settings:
    ``stopping="observe"`` (default) adds the early-stopping study to every row (the rule's choice beside the best
    PSNR along the run); ``runs`` runs are averaged per image (default 2 for cbm3d9 as in the paper, else 1);
    ``classical`` scores CBM3D/NLM (denoising) or biharmonic inpainting beside DIP. The output root is checked
    against every benchmark's folder and leased as for `restore_dataset`; two benchmarks with one dataset name
    (hence one output folder) are refused."""
    if not benchmarks:
        raise ValueError(f"name at least one benchmark ({describe()}) or a folder of clean images")
    so = merged_options(storage_options)
    # absolute, as for restore_dataset
    data_root, output = storage.absolute(real_url(data_root)), storage.absolute(real_url(output))
    sources = [benchmark_source(name, data_root) for name in benchmarks]  # the name as given: a dataset name holds
    sources = [(storage.absolute(real_url(source)), dataset) for source, dataset in sources]  # no secret
    check_datasets(benchmarks, [dataset for _, dataset in sources], output, so)
    for source, _ in sources:
        storage.check_source(source, so)
        storage.check_output_root(output, source, so)
    _check_cluster(  # as for restore_dataset
        execution, in_memory(output, *(source for source, _ in sources)), (output, *(source for source, _ in sources))
    )
    storage.check_writable(output, so)
    run_id = _new_run_id()
    with _lease(output, so, run_id, options) as held:
        return _run(
            run_id,
            evaluation_sources(benchmarks, sources, output=output, so=so, settings=settings),
            output=output,
            storage_options=so,
            execution=execution,
            options=options,
            local_only=in_memory(output, *(source for source, _ in sources)),
            title="evaluating",
            artifact="evaluate",
            held=held,
        )


@contextlib.contextmanager
def _lease(output: str, so: dict | None, run_id: str, options: RunOptions) -> Iterator[lease.Lease]:
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
            stale_after=options.lease_stale_after,
            break_lease=options.break_lease,
            warn=warn,
        ) as held,
    ):
        yield held
    if held.lost:
        logger.error("run %s lost its lease on %s to another run while it ran", run_id, storage.redact(output))


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
    options: RunOptions,
    local_only: bool,
    title: str,
    artifact: str,
    held: lease.Lease | None = None,
) -> dict[str, Any]:
    """List, skip what is done, run the rest — streaming: the first job is dispatched while the listing goes on —,
    append every row to the report as it arrives, record what is done in the state, write the run's summary row and
    publish it."""
    logger, so = _logger(), storage_options
    clock = Clock()
    plans = [plan for plan, _ in sources]
    run_records.recover(output, so, logger)
    done, listings = _start(
        run_id, sources, output, so, resume=options.resume, overwrite=options.overwrite, logger=logger
    )
    tracker = Tracker(plans, artifact=_ProgressArtifact(artifact) if _in_flow_run() else None)
    flow_run_id = _flow_run_id()
    stats: RunStats | None = None
    outcome, failure = "interrupted", None
    try:
        # The state is the outer block: the report's last rows are flushed before the state's, and both before the
        # report's commit, so that a crash during the commit redoes no image.
        with (
            run_records.closing(state.StateWriter(output, run_id, so)) as sw,
            reports.ReportWriter(output, run_id, so, before_commit=sw.flush) as writer,
        ):
            rows = run_records.Rows(writer, sw, tracker, held, flow_run_id, logger)
            progress.started(None, title)
            try:
                todo: Iterator[Job] = (
                    job
                    for plan, chunks in zip(plans, listings, strict=True)
                    for job in jobs.plan_stream(
                        run_sources.timed(chunks, plan, clock, tracker.listed),
                        plan,
                        run_id=run_id,
                        done=done,
                        record=rows.record,
                        adopt=sw.adopt,  # images done earlier, recorded anew: written without waiting
                        storage_options=so,
                        limit=options.limit,
                    )
                )
                if execution.pack != 1:
                    todo = jobs.with_headers(todo, so)
                stats = _dispatch(todo, execution, so, rows, local_only=local_only)
            finally:
                progress.finished()
                tracker.close()
            rows.check()  # before the writers close: a lost run neither commits its report nor merges the state
        outcome = "finished"
    except Exception as exc:
        outcome, failure = "failed", storage.redact(str(exc) or type(exc).__name__)
        raise
    finally:
        if held is None or not held.lost:  # the runs table is the output root's, hence the new holder's
            run_records.write_runs(
                output, so, run_id, flow_run_id, plans, tracker, clock, stats, outcome, failure, logger
            )
    run_records.warn_unlisted(plans, logger)
    return _publish(run_id, flow_run_id, output, so, plans, tracker, artifact, logger)


def _start(
    run_id: str,
    sources: list[tuple[Plan, Callable[[], Iterable[storage.Listing]]]],
    output: str,
    so: dict | None,
    *,
    resume: bool,
    overwrite: bool,
    logger: Any,
) -> tuple[state.DoneState, list[Iterator[storage.Listing]]]:
    """What a run starts from: the done-state (empty without `resume`) and each dataset's listing, started here up
    to its first image (an empty source fails before anything else); each plan gets the output root's owner."""
    scopes = [(plan.dataset, plan.config.config_hash) for plan, _ in sources]
    done = load_state(output, scopes, so) if resume else state.DoneState.load(output, so, [])
    listings = [run_sources.primed(plan, listing()) for plan, listing in sources]
    owner = ownership.Owner(output, ownership.root_id(output, so), overwrite)  # outputs are marked as the root's
    for plan, _ in sources:  # (the root's id made here: a source without images leaves none behind)
        plan.owner = owner
    logger.info(
        "run %s: %d dataset(s); earlier runs restored %d image(s) with these settings; report under %s",
        run_id,
        len(sources),
        len(done),
        storage.redact(output),
    )
    return done, listings


def _dispatch(
    todo: Iterator[Job], execution: Execution, so: dict | None, rows: run_records.Rows, *, local_only: bool
) -> RunStats | None:
    """Run the planned jobs as they come, each outcome recorded in `rows`; None: nothing new, no worker started."""
    first = next(todo, None)
    if first is None:
        return None
    return restore_images(
        quote(itertools.chain([first], todo)),  # quoted: Prefect must not walk the stream for futures
        execution,
        so,
        lambda o: rows.record(o.row, o.curves),
        local_only=local_only,
        check=rows.check,
        on_progress=rows.tracker.running,
    )


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
    if not ex.joins_cluster():
        return  # a private Ray: Ray is not even imported for it here
    from pipelines.execution import workers

    workers.check_run_cluster(ex, paths)


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


class _ProgressArtifact:
    """Prefect's progress artifact of a run, as `run_tracker.Tracker` updates it."""

    def __init__(self, key: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.id = create_progress_artifact(0.0, key=f"{key}-progress", description="images finished")

    def update(self, share: float, description: str) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.id, share, description=description)


def _publish(
    run_id: str,
    flow_run_id: str | None,
    output: str,
    so: dict | None,
    plans: list[Plan],
    tracker: Tracker,
    artifact: str,
    logger: Any,
) -> dict[str, Any]:
    """The run's summary (`run_records.summary`: from its report rows as written, and the images done earlier) as
    Prefect table and markdown artifacts, and the return value."""
    result = run_records.summary(run_id, flow_run_id, output, so, plans, tracker)
    if _in_flow_run():
        _artifacts(result, output, so, artifact, logger)
    counts = tracker.counts
    logger.info(
        "run %s finished: %d ok, %d failed, %d done by earlier runs, %d not restored",
        run_id,
        counts["ok"],
        counts["error"],
        tracker.earlier,
        counts["skipped"],
    )
    return result


def _artifacts(result: dict[str, Any], output: str, so: dict | None, artifact: str, logger: Any) -> None:
    """The run's summary table and its markdown report (with a link to the run's HTML page) as Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    run_id, summary, report_uri = result["run_id"], result["summary"], result["report"]
    failures, not_restored, not_images = result["failures"], result["not_restored"], result["not_images"]
    create_table_artifact(summary, key=f"{artifact}-summary", description=f"dipflow run {run_id}")
    markdown = reports.summary_markdown(reports.to_table(summary, reports.SUMMARY_SCHEMA))
    said = f"Report: `{report_uri}`" if report_uri else "No report rows: nothing new to restore."
    lines = [f"# dipflow run `{run_id}`", "", markdown, said, ""]
    try:  # best effort: a page that cannot be written costs its link, never the run
        import os

        from pipelines.reporting import html_report

        page = html_report.write_html_report(
            output, storage.join(output, "html", f"run_id={run_id}", "index.html"), run_id=run_id, storage_options=so
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
