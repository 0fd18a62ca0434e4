"""What a run records under its output root besides the outputs: what killed runs left, recovered before it writes
(`recover`); where each of its rows goes as it arrives (`Rows`: report, state, progress, log); the state writer
closed (`closing`); its rows of the runs table (`write_runs`); its summary, from its report rows as written
(`summary`), what the flows return and publish; and the lines it ends with on files that are not images and outputs
it no longer lists (`warn_unlisted`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc

from pipelines import jobs, signals, storage
from pipelines.jobs import Plan
from pipelines.reporting import reports, runs, state
from pipelines.run_tracker import Clock, Tracker

if TYPE_CHECKING:
    from pipelines import lease
    from pipelines.execution.workers import RunStats


def recover(output: str, so: dict | None, logger: Any) -> None:
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
def closing(writer: state.StateWriter) -> Iterator[state.StateWriter]:
    """The state writer, closed (flushed, merged) when the run ends well; only flushed when it fails."""
    try:
        yield writer
    except BaseException:
        writer.flush()
        raise
    writer.close()


def write_runs(
    output: str,
    so: dict | None,
    run_id: str,
    flow_run_id: str | None,
    plans: list[Plan],
    tracker: Tracker,
    clock: Clock,
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


def summary(
    run_id: str, flow_run_id: str | None, output: str, so: dict | None, plans: list[Plan], tracker: Tracker
) -> dict[str, Any]:
    """The run's summary from its report rows as written, and the images done earlier (counted, not rows): what the
    flows return. Reads this run's rows only."""
    table = reports.read_report(output, so, run_id=run_id)
    summary = with_done_earlier(reports.to_records(reports.summarize(table)), plans)
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


def with_done_earlier(summary: list[dict[str, Any]], plans: list[Plan]) -> list[dict[str, Any]]:
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
                    "scale": plan.config.scale,
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


class Rows:
    """Where a run's rows go as they arrive: the report, then the state (never ahead of the report), the progress
    and, for an error, the log; `check` stops every write once another run has taken the output root over."""

    def __init__(
        self,
        writer: reports.ReportWriter,
        sw: state.StateWriter,
        tracker: Tracker,
        held: lease.Lease | None,
        flow_run_id: str | None,
        logger: Any,
    ) -> None:
        self.writer, self.sw, self.tracker, self.held = writer, sw, tracker, held
        self.flow_run_id, self.logger = flow_run_id, logger

    def record(self, row: dict[str, Any], curves: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        self.check()
        written = self.writer.rows_written
        self.writer.append({**row, "flow_run_id": self.flow_run_id}, curves)  # flushed together
        if row["status"] == "ok":
            self.sw.add(row)
        if self.writer.rows_written != written:  # the state never runs ahead of the report
            self.sw.flush()
        self.tracker.advance(row)
        if row["status"] == "error":
            key, error = row["image_key"], str(row.get("error"))
            self.logger.warning("failed: %s", error if error.startswith(key) else f"{key}: {error}")

    def check(self) -> None:  # another run took the output root over: not one more write, not even a flush
        if self.held is not None and self.held.lost:
            self.writer.abandon()
            self.sw.abandon()
            self.held.check()


def warn_unlisted(plans: list[Plan], logger: Any) -> None:
    """The files of each dataset that are not images, and the outputs of images it no longer lists: one line each."""
    for plan in plans:
        if plan.not_images:
            shown = ", ".join(f"{k} ({why})" for k, why in plan.not_images_shown[:5])
            more = " …" if plan.not_images > 5 else ""
            logger.warning("%s: %d file(s) are not images: %s%s", plan.dataset, plan.not_images, shown, more)
        if plan.unlisted:
            logger.warning("%s: %s", plan.dataset, jobs.unlisted_line(plan.unlisted))
