"""The runs table: one row per run and dataset — what a run was asked, what it found, what it did, how long it took.

Images done by an earlier run are counted here (``done_earlier``) instead of getting a row each in the report, so a
nightly run over an unchanged bucket writes one small file, not one row per image::

    <output>/runs/run_id=<run>/summary.parquet

Written once, when the run ends (also when it fails or is interrupted: ``status`` says which), as one file in one
atomic write (`storage.write_bytes_atomic`: a local rename, one PUT) named by the run, so a reader of
``runs/**/*.parquet`` (DuckDB, Spark, ``pyarrow.dataset`` with hive partitioning, like `read_runs`) sees a run's rows
whole or not at all, and a rewrite replaces them. A run killed before it has no row; `tidy` deletes the temporary a
kill inside the write leaves (local files).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.reporting import layout, reports
from pipelines.reporting.schema import UTC_US, column

__all__ = ["RUNS_SCHEMA", "describe", "latest_run", "read_runs", "runs_uri", "tidy", "write_run_summary"]

RUNS_SCHEMA = pa.schema(
    [
        column("run_id", pa.string(), "the dipflow run", nullable=False),
        column("flow_run_id", pa.string(), "Prefect flow-run id, when run as a flow"),
        column("dataset", pa.string(), "dataset name", nullable=False),
        column("source", pa.string(), "where the dataset was listed (redacted)"),
        column("task", pa.string(), "dipcore task", nullable=False),
        column("config_hash", pa.string(), "config hash of the run's settings for this dataset"),
        column("config_json", pa.string(), "canonical JSON of those settings"),
        column("outcome", pa.string(), "finished | failed | interrupted", nullable=False),
        column("error", pa.string(), "why the run did not finish (redacted)"),
        column("listed", pa.int64(), "images listed (restored, done earlier, failed or left out)", nullable=False),
        column("ok", pa.int64(), "images restored by this run", nullable=False),
        column("errors", pa.int64(), "images that failed (error rows)", nullable=False),
        column("done_earlier", pa.int64(), "images skipped: done by an earlier run, input unchanged", nullable=False),
        column("not_restored", pa.int64(), "images left out by policy (a symbolic link)", nullable=False),
        column("not_images", pa.int64(), "files of the source that are not images", nullable=False),
        column("verified_by_content", pa.int64(), "done by an old report: matched by content", nullable=False),
        column("started_at", UTC_US, "when the run started (UTC)", nullable=False),
        column("finished_at", UTC_US, "when the run ended (UTC)", nullable=False),
        column("seconds", pa.float64(), "wall-clock seconds of the whole run", nullable=False),
        column("seconds_to_first_dispatch", pa.float64(), "from the run's start to its first job handed to a worker"),
        column(
            "seconds_listing",
            pa.float64(),
            "when its listing ended, from the run's start (drawn as jobs go out: not its duration)",
        ),
        column("report_version", pa.string(), "the report schema version the run wrote", nullable=False),
        column(
            "unlisted_outputs",
            pa.int64(),
            "outputs of images an earlier run restored that this run did not list (deleted or renamed inputs, or "
            "left out by a glob); kept, never deleted. Null: not counted (a run with --limit, a root without state)",
        ),
    ],
    metadata={"dipflow.report_version": reports.REPORT_VERSION, "dipflow.schema": "runs"},
)
"""One row per run and dataset."""

_HIVE = ds.partitioning(pa.schema([pa.field("run_id", pa.string())]), flavor="hive")


def runs_uri(output_root: str, run_id: str) -> str:
    return storage.join(output_root, "runs", f"run_id={run_id}", "summary.parquet")


def write_run_summary(output_root: str, run_id: str, rows: Sequence[Mapping[str, Any]], so: dict | None = None) -> str:
    """Write a run's rows (one per dataset) as one file, atomically; its URI."""
    table = reports.to_table(
        [{**r, "run_id": run_id, "report_version": reports.REPORT_VERSION} for r in rows], RUNS_SCHEMA
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    uri = runs_uri(output_root, run_id)
    storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes(), so)
    return uri


def tidy(output_root: str, so: dict | None = None) -> int:
    """Delete the temporaries that interrupted writes left under ``runs/``; how many. Under the run's lease."""
    return layout.remove_temporaries(storage.join(output_root, "runs"), so)


def read_runs(output_root: str, so: dict | None = None, *, run_id: str | None = None) -> pa.Table:
    """Every run's rows under `output_root` (or one run's), oldest first; none → an empty table."""
    base = storage.join(output_root, "runs")
    uris = [runs_uri(output_root, run_id)] if run_id else storage.list_files(base, so, suffix=".parquet")
    uris = [u for u in uris if run_id is None or storage.exists(u, so)]
    if not uris:
        return RUNS_SCHEMA.empty_table()
    fs, base_path = storage.filesystem(base, so)
    paths = [storage.filesystem(u, so)[1] for u in uris]
    dataset = ds.dataset(
        paths, schema=RUNS_SCHEMA, format="parquet", filesystem=fs, partitioning=_HIVE, partition_base_dir=base_path
    )
    table = dataset.to_table()
    return table.take(pc.sort_indices(table, sort_keys=[("started_at", "ascending"), ("run_id", "ascending")]))


def latest_run(table: pa.Table) -> pa.Table:
    """The rows of the latest run of a runs table as `read_runs` gives it (oldest first); none → empty."""
    if table.num_rows == 0:
        return table
    return table.filter(pc.equal(table.column("run_id"), table.column("run_id")[-1]))


def describe(row: Mapping[str, Any]) -> str:
    """One runs-table row in words: what became of the images of one dataset in one run."""
    seconds = f" in {row['seconds']:.1f} s" if row.get("seconds") is not None else ""
    error = f" ({row['error']})" if row.get("error") else ""
    return (
        f"{row['dataset']}: {row['listed']} listed, {row['ok']} restored, {row['done_earlier']} done earlier, "
        f"{row['errors']} failed, {row['not_restored']} not restored, {row['not_images']} not images — "
        f"{row['outcome']}{seconds}{error}"
    )
