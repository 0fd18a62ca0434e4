"""The Parquet reports' pinned schemas (the report's rows, the loss/PSNR curves, the summaries) and the conversions
to and from them: rows cast to a schema with a clear error for what does not fit, JSON-able records, curve samples.
`pipelines.reporting.reports` writes and reads tables of these schemas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from pipelines.errors import SchemaMismatchError

__all__ = [
    "CURVES_SCHEMA",
    "LATEST_KEY",
    "REPORT_SCHEMA",
    "REPORT_VERSION",
    "STATUSES",
    "SUMMARY_SCHEMA",
    "UTC_US",
    "column",
    "curve_rows",
    "to_records",
    "to_table",
]

# Bump on any change to a schema below. 2: the early-stopping study, two-run and classical-baseline columns and the
# software that produced a row (appended after the version-1 columns, which keep their order and meaning). 3: the
# input's fingerprint from the listing (what resume decides by, `pipelines.reporting.state`); input_sha256 is the hash
# of the bytes the worker restored; an image done by an earlier run gets no row any more (the run's summary counts it,
# `pipelines.reporting.runs`), so "skipped" rows are only images a run leaves out by policy (a symbolic link). 4: the
# notes of an ok row, what its output could not keep of its input (dipcore.encode_like).
REPORT_VERSION = "4"
STATUSES = ("ok", "error", "skipped")
# One image under one configuration: an input changed since (another input_sha256) is the same image, restored again.
LATEST_KEY = ("dataset", "image_key", "config_hash")

UTC_US = pa.timestamp("us", tz="UTC")


def column(name: str, type_: pa.DataType, doc: str, *, nullable: bool = True) -> pa.Field:
    """A column of dipflow's Parquet tables, its meaning kept in the field's metadata (``doc``), in the file."""
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


REPORT_SCHEMA = pa.schema(
    [
        column("run_id", pa.string(), "the dipflow run that wrote this row", nullable=False),
        column("flow_run_id", pa.string(), "Prefect flow-run id, when run as a flow"),
        column("dataset", pa.string(), "dataset name (benchmark name or the source URL, redacted)", nullable=False),
        column("image_key", pa.string(), "POSIX path of the image relative to the dataset root", nullable=False),
        column("input_uri", pa.string(), "full URL of the input image (no credentials)"),
        column("input_sha256", pa.string(), "hex SHA-256 of the input bytes the worker restored"),
        column("task", pa.string(), "dipcore task name (sr, denoise, inpaint, …)", nullable=False),
        column("scale", pa.int32(), "super-resolution factor; null for other tasks"),
        column("variant", pa.string(), "task variant (e.g. the inpainting preset), if any"),
        column("config_hash", pa.string(), "config_hash(config_json): 16 hex chars"),
        column("config_json", pa.string(), "canonical JSON of every setting used (Restoration.config)"),
        column("seed", pa.int64(), "random seed"),
        column("iterations_run", pa.int32(), "optimisation steps taken"),
        column("iteration_returned", pa.int32(), "1-based iteration the returned image comes from"),
        column("stop_reason", pa.string(), "iterations | early_stopping | callback"),
        column("psnr", pa.float64(), "PSNR (dB) of the returned output against the ground truth"),
        column("psnr_average", pa.float64(), "PSNR (dB) of the EMA of outputs"),
        column("psnr_final", pa.float64(), "PSNR (dB) of the last iterate"),
        column("psnr_best", pa.float64(), "best PSNR (dB) of the first run's iterates, same protocol (an oracle)"),
        column("psnr_channel", pa.string(), "PSNR protocol: rgb | y (BT.601 luma)"),
        column("psnr_shave", pa.int32(), "PSNR protocol: border pixels shaved"),
        column("psnr_crop", pa.string(), "PSNR protocol: centre crop, e.g. '512x512', or null"),
        column("ssim", pa.float64(), "SSIM of the returned output"),
        column("baseline_name", pa.string(), "baseline scored beside the output: bicubic | input | …"),
        column("psnr_baseline", pa.float64(), "PSNR (dB) of the baseline with the same protocol"),
        column("height", pa.int32(), "output height in pixels"),
        column("width", pa.int32(), "output width in pixels"),
        column("wall_seconds", pa.float64(), "wall-clock seconds of the final attempt"),
        column("device", pa.string(), "torch device name"),
        column("ray_node", pa.string(), "Ray node id or IP the job ran on"),
        column("attempts", pa.int32(), "attempts made (1 = first try)"),
        column("status", pa.string(), "ok | error | skipped", nullable=False),
        column("error", pa.string(), "error message (redacted), when status is error"),
        column("output_uri", pa.string(), "full URL of the written output (no credentials)"),
        column("started_at", UTC_US, "start of the final attempt (UTC)"),
        column("finished_at", UTC_US, "end of the final attempt (UTC)"),
        # version 2
        column("iteration_best", pa.int32(), "1-based iteration of psnr_best"),
        column("psnr_auto", pa.float64(), "PSNR (dB) of the output the early-stopping rule selects (no ground truth)"),
        column("iteration_auto", pa.int32(), "1-based iteration of that output"),
        column(
            "es_stop_iteration", pa.int32(), "iteration at which the rule stopped the run (or would have); null: never"
        ),
        column("psnr_two_runs", pa.float64(), "PSNR (dB) of the average of two runs' returned outputs (seeds s, s+1)"),
        column("classical_name", pa.string(), "classical non-learned baseline: cbm3d | bm3d | nlm | biharmonic"),
        column("psnr_classical", pa.float64(), "PSNR (dB) of the classical baseline with the same protocol"),
        column("torch_version", pa.string(), "torch.__version__ of the worker"),
        column("engine_json", pa.string(), "canonical JSON of the resolved dipcore EngineOptions"),
        column("pack_size", pa.int32(), "fits stacked in the image's fit (1: alone); wall_seconds is its share"),
        # version 3
        column("input_fingerprint", pa.string(), "the input's identity from its listing: size, ETag/mtime… (storage)"),
        # version 4
        column("notes", pa.string(), "what the output could not keep of its input (CMYK → RGB, EXIF …); null: nothing"),
    ],
    metadata={"dipflow.report_version": REPORT_VERSION, "dipflow.schema": "report"},
)
"""One row per image per run."""

CURVES_SCHEMA = pa.schema(
    [
        column("run_id", pa.string(), "the dipflow run", nullable=False),
        column("dataset", pa.string(), "dataset name", nullable=False),
        column("image_key", pa.string(), "image key within the dataset", nullable=False),
        column("iteration", pa.int32(), "1-based iteration", nullable=False),
        column("loss", pa.float64(), "data-term loss at this iteration"),
        column("psnr", pa.float64(), "PSNR (dB) of the iterate, with ground truth"),
        column("psnr_average", pa.float64(), "PSNR (dB) of the EMA, with ground truth"),
    ],
    metadata={"dipflow.report_version": REPORT_VERSION, "dipflow.schema": "curves"},
)
"""Sampled loss/PSNR curves: several rows per image per run."""

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("scale", pa.int32()),
        pa.field("images", pa.int64(), nullable=False),
        pa.field("ok", pa.int64(), nullable=False),
        pa.field("errors", pa.int64(), nullable=False),
        pa.field("skipped", pa.int64(), nullable=False),
        pa.field("psnr", pa.float64()),
        pa.field("psnr_baseline", pa.float64()),
        pa.field("ssim", pa.float64()),
        pa.field("mean_wall_seconds", pa.float64()),
        pa.field("total_wall_seconds", pa.float64(), nullable=False),
    ],
    metadata={"dipflow.report_version": REPORT_VERSION, "dipflow.schema": "summary"},
)
"""`summarize`'s output: one row per (dataset, task, scale)."""


# -------------------------------------------------------------------------------------------------- tables


def _mismatch(what: str, schema: pa.Schema, given: Sequence[str]) -> SchemaMismatchError:
    return SchemaMismatchError(
        f"{what} (schema {schema.metadata.get(b'dipflow.schema', b'?').decode()} "
        f"v{schema.metadata.get(b'dipflow.report_version', b'?').decode()})\n"
        f"  expected columns: {', '.join(schema.names)}\n"
        f"  given columns:    {', '.join(given)}"
    )


def to_table(rows: Sequence[Mapping[str, Any]] | pa.Table, schema: pa.Schema = REPORT_SCHEMA) -> pa.Table:
    """`rows` (dicts, or an Arrow table) cast to `schema`: missing nullable columns become typed nulls; a missing
    or null non-nullable column, an unexpected column, a value of the wrong type or an unknown status raises
    `SchemaMismatchError` naming the expected and the given columns."""
    if isinstance(rows, pa.Table):
        given = list(rows.column_names)
        n = rows.num_rows
    else:
        given = list(dict.fromkeys(name for row in rows for name in row))
        n = len(rows)
    unexpected = [name for name in given if name not in schema.names]
    missing = [f.name for f in schema if not f.nullable and f.name not in given]
    if unexpected or missing:
        problems = []
        if unexpected:
            problems.append(f"unexpected columns {unexpected}")
        if missing:
            problems.append(f"missing required columns {missing}")
        raise _mismatch("; ".join(problems), schema, given)

    arrays = []
    for f in schema:
        try:
            if f.name not in given:
                arr = pa.nulls(n, f.type)
            elif isinstance(rows, pa.Table):
                arr = rows.column(f.name).cast(f.type)
            else:
                arr = pa.array([row.get(f.name) for row in rows], type=f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise _mismatch(f"column {f.name!r} cannot be {f.type}: {exc}", schema, given) from exc
        if not f.nullable and arr.null_count:
            raise _mismatch(f"column {f.name!r} is required but has {arr.null_count} null value(s)", schema, given)
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=schema)
    if "status" in schema.names and n:
        bad = set(table.column("status").to_pylist()) - set(STATUSES)
        if bad:
            raise _mismatch(f"status must be one of {STATUSES}, got {sorted(bad)}", schema, given)
    return table


def to_records(table: pa.Table) -> list[dict[str, Any]]:
    """JSON-able rows (timestamps as ISO strings, NaN/inf as None) for Prefect table artifacts and ``--json``."""
    records = table.to_pylist()
    for row in records:
        for name, value in row.items():
            if isinstance(value, datetime):
                row[name] = value.isoformat()
            elif isinstance(value, float) and not math.isfinite(value):
                row[name] = None
    return records


def curve_rows(
    history: Mapping[str, Sequence[float | None]], *, run_id: str, dataset: str, image_key: str, max_points: int = 200
) -> list[dict[str, Any]]:
    """CURVES_SCHEMA rows from a `Restoration.history` (lists ``loss`` and optionally ``psnr``/``psnr_average``,
    one value per iteration), sampled to at most `max_points` evenly spaced iterations, always the first and last."""
    n = len(history.get("loss", ()))
    if n == 0:
        return []
    if n <= max_points:
        picks = list(range(n))
    else:
        picks = sorted({round(k * (n - 1) / (max_points - 1)) for k in range(max_points)})

    def at(name: str, i: int) -> float | None:
        values = history.get(name)
        value = values[i] if values is not None and i < len(values) else None
        return None if value is None else float(value)

    return [
        {
            "run_id": run_id,
            "dataset": dataset,
            "image_key": image_key,
            "iteration": i + 1,
            "loss": at("loss", i),
            "psnr": at("psnr", i),
            "psnr_average": at("psnr_average", i),
        }
        for i in picks
    ]
