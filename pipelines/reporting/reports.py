"""Parquet reports: one pinned schema, one row per image per run, written incrementally and read back together.

Layout under the output root (hive-style, one folder per run; the ``run_id`` column is also stored in the data, so
a reader that ignores the folder names — or one that uses them, like DuckDB or Spark with hive partitioning — gets
the same value; `layout` says why parts wait apart)::

    <output>/_dipflow/pending/report/run_id=<run>/part-00000.parquet, …   (REPORT_SCHEMA), while a run writes
    <output>/report/run_id=<run>/compacted-00000-00041.parquet           committed, once it has ended
    <output>/_dipflow/pending/curves/…, <output>/curves/…                (CURVES_SCHEMA), alike

A writer buffers rows and flushes a part every `FLUSH_ROWS` rows or `FLUSH_SECONDS` seconds, whichever comes first;
every part is written whole and atomically (`storage.write_bytes_atomic`), so a crash loses only the rows not yet
flushed. When the run ends its parts are committed: written into ``report/`` as files of up to `COMPACT_ROWS` rows,
each named by the range of part numbers it holds and written atomically, and only then deleted. So an outside
reader globbing ``report/**/*.parquet`` sees every committed row once at every moment of a crash, and dipflow's
readers, which read the pending parts too (skipping those a committed range holds), see a run in progress or
crashed. The next run finishes what a crashed one left (`recover`). Readers go through ``pyarrow.dataset``
(a ``run_id`` filter prunes runs) with the pinned schema, so parts written by older versions read together with
new ones. All storage goes through `pipelines.storage`; this module never imports fsspec.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.errors import SchemaMismatchError
from pipelines.reporting import layout
from pipelines.reporting.layout import Compaction
from pipelines.stats import mean

logger = logging.getLogger(__name__)

__all__ = [
    "COMPACT_ROWS",
    "CURVES_SCHEMA",
    "FLUSH_ROWS",
    "FLUSH_SECONDS",
    "REPORT_SCHEMA",
    "REPORT_VERSION",
    "STATUSES",
    "SUMMARY_SCHEMA",
    "Compaction",
    "ReportWriter",
    "SchemaMismatchError",
    "compact_run",
    "completed_keys",
    "curve_rows",
    "latest_rows",
    "read_curves",
    "read_report",
    "recover",
    "summarize",
    "summary_markdown",
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


# -------------------------------------------------------------------------------------------------- writing


FLUSH_ROWS = 256
"""A writer flushes after this many report rows (or image curve batches). 256 rows make a part of some tens of KB
(zstd), so a run of 10⁶ images writes about 4,000 parts before compaction rather than 10⁶; a crash loses at most
that many finished images, which the resumed run restores again."""
FLUSH_SECONDS = 30.0
"""… or once this many seconds have passed since the last flush, checked when a row arrives. With paper-preset
fits (10–40 s per image on a GPU) rows trickle in, and this bounds the work a crash costs to the images that finished
in one 30 s window, while keeping parts to at most two a minute."""
COMPACT_ROWS = 1_000_000
"""At most this many rows per compacted file: a run of up to 10⁶ images is one file per schema."""


def _kinds() -> dict[str, pa.Schema]:
    return {"report": REPORT_SCHEMA, "curves": CURVES_SCHEMA}


def _run_dir(output_root: str, kind: str, run_id: str) -> str:
    return layout.committed_dir(output_root, kind, run_id)


class _PartStream:
    """Buffered rows of one schema, flushed as numbered part files in the run's pending folder (`layout`)."""

    def __init__(self, output_root: str, kind: str, run_id: str, storage_options: dict | None) -> None:
        self.directory = layout.pending_dir(output_root, kind, run_id)
        self.schema = _kinds()[kind]
        self.storage_options = storage_options
        self.buffer: list[pa.Table] = []
        self.batches = 0
        self.rows_written = 0
        self.parts_written = 0
        self.next_seq = layout.next_part(output_root, kind, run_id, storage_options)

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.batches += 1

    def flush(self) -> None:
        if not self.buffer:
            return
        table = pa.concat_tables(self.buffer)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        uri = storage.join(self.directory, f"part-{self.next_seq:05d}.parquet")
        storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes(), self.storage_options)
        self.next_seq += 1
        self.parts_written += 1
        self.rows_written += table.num_rows
        self.buffer.clear()
        self.batches = 0


def compact_run(
    output_root: str, run_id: str, storage_options: dict | None = None, *, max_rows: int = COMPACT_ROWS
) -> dict[str, Compaction]:
    """Commit one run's pending report and curves parts into ``report/`` and ``curves/`` (`layout.commit`); what
    `ReportWriter.close` does. Safe to run again, on a run committed already (nothing to do) or one whose commit was
    interrupted (it finishes). Not while a writer still writes the run."""
    return {
        kind: layout.commit(output_root, kind, run_id, schema, storage_options, max_rows)
        for kind, schema in _kinds().items()
    }


def recover(
    output_root: str, storage_options: dict | None = None, *, max_rows: int = COMPACT_ROWS
) -> dict[str, Compaction]:
    """Finish what interrupted runs left under `output_root` (`layout.recover`): their pending parts committed, the
    leftovers of a crash removed. What a run does first, under its lease."""
    return layout.recover(output_root, _kinds(), storage_options, max_rows)


class ReportWriter:
    """Appends report rows (and curves) of one run to Parquet part files in its pending folder under `output_root`,
    as they arrive, and commits them into ``report/`` and ``curves/`` when the run ends (`layout`).

    Rows are buffered and flushed together with the curves as one part file per schema, written atomically, when
    `flush_every` report rows (or image curve batches) are buffered, or when a row arrives `flush_seconds` or more
    after the last flush, whichever comes first. There is no timer thread: rows arrive only when images finish, so
    between two arrivals nothing new could be lost; the rows a crash loses are those of at most `flush_every` images
    that finished within one `flush_seconds` window, and a resumed run restores them again (their output files
    exist, but resume needs an ``ok`` row). ``flush_every=1`` writes every row at once.

    Rows are validated against the schema at `append`, so a bad row fails there, never at a later flush. `close`
    (or leaving the ``with`` block, also on an exception or KeyboardInterrupt) flushes the rest, then commits the
    run's parts (`compact_run`; ``compact=False`` leaves them pending). `before_commit` is called after the last flush,
    before the commit: the run's done-state follows its last report rows there, so that a crash during the commit
    costs no image a redo. One writer per run id at a time. `clock` (seconds, monotonic) is for tests.
    """

    def __init__(
        self,
        output_root: str,
        run_id: str,
        storage_options: dict | None = None,
        flush_every: int = FLUSH_ROWS,
        flush_seconds: float | None = FLUSH_SECONDS,
        *,
        compact: bool = True,
        compact_rows: int = COMPACT_ROWS,
        before_commit: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be at least 1, got {flush_every}")
        if flush_seconds is not None and flush_seconds < 0:
            raise ValueError(f"flush_seconds must be at least 0 (or None: no time limit), got {flush_seconds}")
        self.output_root = output_root
        self.run_id = run_id
        self.storage_options = storage_options
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.compact = compact
        self.compact_rows = compact_rows
        self.compaction: dict[str, Compaction] | None = None  # what close did
        self._clock = clock
        self._before_commit = before_commit
        self.report_dir = _run_dir(output_root, "report", run_id)
        self.curves_dir = _run_dir(output_root, "curves", run_id)
        self._report = _PartStream(output_root, "report", run_id, storage_options)
        self._curves = _PartStream(output_root, "curves", run_id, storage_options)
        self._lock = threading.Lock()
        self._closed = False
        self._last_flush = clock()

    @property
    def rows_written(self) -> int:
        """Report rows flushed to storage so far."""
        return self._report.rows_written

    @property
    def parts_written(self) -> int:
        """Part files (report and curves) this writer wrote."""
        return self._report.parts_written + self._curves.parts_written

    def _with_run(self, row: Mapping[str, Any]) -> dict[str, Any]:
        row = dict(row)
        if row.setdefault("run_id", self.run_id) != self.run_id:
            raise SchemaMismatchError(f"row has run_id {row['run_id']!r}, this writer writes run {self.run_id!r}")
        return row

    def _due(self) -> bool:
        if max(self._report.batches, self._curves.batches) >= self.flush_every:
            return True
        return self.flush_seconds is not None and self._clock() - self._last_flush >= self.flush_seconds

    def _flush_locked(self) -> None:
        self._report.flush()
        self._curves.flush()
        self._last_flush = self._clock()

    def append(self, row: Mapping[str, Any], curves: Iterable[Mapping[str, Any]] = ()) -> None:
        """Add one REPORT_SCHEMA row (``run_id`` is filled in) and, optionally, its image's CURVES_SCHEMA rows: the
        two are buffered together, so that a flush writes an image's row and curves in the same step. Flushes when
        due (see the class)."""
        table = to_table([self._with_run(row)], REPORT_SCHEMA)
        curve_rows = [self._with_run(r) for r in curves]
        curve_table = to_table(curve_rows, CURVES_SCHEMA) if curve_rows else None
        with self._lock:
            self._check_open()
            self._report.add(table)
            if curve_table is not None:
                self._curves.add(curve_table)
            if self._due():
                self._flush_locked()

    def append_curves(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add one image's CURVES_SCHEMA rows (e.g. from `curve_rows`) alone; one batch counts as one toward
        `flush_every`. Prefer ``append(row, curves)``, which keeps a row and its curves in one flush."""
        rows = [self._with_run(r) for r in rows]
        if not rows:
            return
        table = to_table(rows, CURVES_SCHEMA)
        with self._lock:
            self._check_open()
            self._curves.add(table)
            if self._due():
                self._flush_locked()

    def flush(self) -> None:
        """Write whatever is buffered."""
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        """Flush, refuse further appends, and compact the run's parts (idempotent)."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
        if self._before_commit is not None:
            self._before_commit()
        if self.compact:
            self.compaction = compact_run(
                self.output_root, self.run_id, self.storage_options, max_rows=self.compact_rows
            )

    def abandon(self) -> None:
        """Drop what is buffered and write nothing more, no commit either: the run lost its output root's lease
        (`pipelines.lease`) to a run that restores those images again."""
        with self._lock:
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"report writer for run {self.run_id!r} is closed")

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
            return
        if self._closed:
            return
        try:
            self.flush()  # a failure here is raised, chained to the run's own error
        finally:
            self._closed = True
        if self._before_commit is not None:
            self._before_commit()  # likewise
        if self.compact:
            try:
                self.compaction = compact_run(
                    self.output_root, self.run_id, self.storage_options, max_rows=self.compact_rows
                )
            except Exception as exc:  # noqa: BLE001 - the run's own error is the one to raise; the parts are intact
                logger.warning("run %s: report parts left uncompacted: %s", self.run_id, exc)


# -------------------------------------------------------------------------------------------------- reading


def _read(
    output_root: str,
    kind: str,
    schema: pa.Schema,
    storage_options: dict | None,
    run_id: str | None,
    filter: ds.Expression | None,
    columns: Sequence[str] | None,
) -> pa.Table:
    base = storage.join(output_root, kind)
    # Pending first: a commit writes its file before it deletes the parts, so a listing of both taken while another
    # process commits finds every row in one or the other (or both: `live` keeps one).
    pending = layout.files(layout.pending_dir(output_root, kind, run_id), storage_options)
    committed = layout.files(layout.committed_dir(output_root, kind, run_id), storage_options)
    uris = layout.live(committed, pending)
    if run_id is not None:
        by_run = ds.field("run_id") == run_id
        filter = by_run if filter is None else by_run & filter
    if not uris:
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns is not None else empty
    fs = storage.filesystem(base, storage_options)[0]
    paths = [storage.filesystem(u, storage_options)[1] for u in uris]
    # The pinned schema, not one inferred from the files: older parts (fewer columns) read as nulls, and every
    # run's parts read together with the same types. Each file's run (its folder, committed or pending, as hive
    # partitioning reads it) is its partition: a filter on run_id prunes whole runs, unopened.
    plain = ds.dataset(paths, schema=schema, format="parquet", filesystem=fs)  # fsspec's filesystem, as Arrow's
    runs = [layout.run_of(u) for u in uris]
    dataset = ds.FileSystemDataset.from_paths(
        paths,
        schema=schema,
        format=plain.format,
        filesystem=plain.filesystem,
        partitions=[ds.field("run_id") == run if run is not None else ds.scalar(True) for run in runs],
    )
    table = dataset.to_table(columns=list(columns) if columns is not None else None, filter=filter)
    return table.replace_schema_metadata(schema.metadata)


def read_report(
    output_root: str,
    storage_options: dict | None = None,
    *,
    run_id: str | None = None,
    filter: ds.Expression | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Every report row under `output_root` (or one run's: only its folder is listed), in REPORT_SCHEMA; none → an
    empty table. `filter` (a ``pyarrow.dataset`` expression, e.g. ``ds.field("status") == "ok"``) and `columns` go
    to the scan: row groups whose statistics exclude the filter are not read."""
    return _read(output_root, "report", REPORT_SCHEMA, storage_options, run_id, filter, columns)


def read_curves(
    output_root: str,
    storage_options: dict | None = None,
    *,
    run_id: str | None = None,
    filter: ds.Expression | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Every curve row under `output_root` (or one run's), in CURVES_SCHEMA; none → an empty table. `filter` and
    `columns` as for `read_report`."""
    return _read(output_root, "curves", CURVES_SCHEMA, storage_options, run_id, filter, columns)


def latest_rows(table: pa.Table) -> pa.Table:
    """The latest row per (dataset, image_key, config_hash), in table order: an image whose input changed between
    runs is one image (its latest row), not one per version of the input.

    Latest = greatest `finished_at` (nulls earliest), ties broken by position in the table. A ``skipped`` row (a
    resumed run passing over a finished image) never hides an ``ok`` or ``error`` row of the same image.
    """
    n = table.num_rows
    if n == 0:
        return table
    index = pa.array(range(n), pa.int64())
    ranks = pa.table(
        {
            "real": pc.not_equal(table.column("status"), "skipped"),
            "t": pc.fill_null(table.column("finished_at").cast(pa.int64()), -(2**63)),  # null = earliest
            "i": index,
        }
    )
    order = pc.sort_indices(ranks, sort_keys=[("real", "ascending"), ("t", "ascending"), ("i", "ascending")])
    # In that order, the last row of each key wins: an ordered (single-threaded) group-by keeps order, so "last" is
    # well defined; null keys form a group of their own, as equal tuples did.
    keyed = table.select(list(LATEST_KEY)).append_column("__row", index).take(order)
    last = keyed.group_by(list(LATEST_KEY), use_threads=False).aggregate([("__row", "last")]).column("__row_last")
    return table.take(last.take(pc.sort_indices(last)))


def completed_keys(source: str | pa.Table, storage_options: dict | None = None) -> set[tuple[str, str]]:
    """(input_sha256, config_hash) of every image whose latest row (see `latest_rows`) is ``ok`` — what a resumed
    run may skip. `source` is an output root (all runs under it are read) or a report table."""
    if isinstance(source, str):  # only what decides, and no "skipped" row (it never hides an ok or error one)
        columns = [*LATEST_KEY, "input_sha256", "status", "finished_at"]
        table = read_report(source, storage_options, columns=columns, filter=ds.field("status") != "skipped")
    else:
        table = source
    latest = latest_rows(table)
    done = latest.filter(pc.equal(latest.column("status"), "ok"))
    return {
        (sha, cfg)
        for sha, cfg in zip(
            done.column("input_sha256").to_pylist(), done.column("config_hash").to_pylist(), strict=True
        )
        if sha is not None and cfg is not None
    }


# ------------------------------------------------------------------------------------------------ summaries


def summarize(table: pa.Table) -> pa.Table:
    """One SUMMARY_SCHEMA row per (dataset, task, scale) of a report table (pass one run, or `latest_rows`).

    ``images`` counts rows; ``ok``/``errors``/``skipped`` count statuses; the means (``psnr``, ``psnr_baseline``,
    ``ssim``, ``mean_wall_seconds``) are over ``ok`` rows with a value; ``total_wall_seconds`` sums every row
    (failed attempts cost time too).
    """
    cols = ["dataset", "task", "scale", "status", "psnr", "psnr_baseline", "ssim", "wall_seconds"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in table.select(cols).to_pylist():
        groups.setdefault((row["dataset"], row["task"], row["scale"]), []).append(row)
    out = []
    for (dataset, task, scale), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        ok = [r for r in rows if r["status"] == "ok"]
        out.append(
            {
                "dataset": dataset,
                "task": task,
                "scale": scale,
                "images": len(rows),
                "ok": len(ok),
                "errors": sum(r["status"] == "error" for r in rows),
                "skipped": sum(r["status"] == "skipped" for r in rows),
                "psnr": mean(r["psnr"] for r in ok),
                "psnr_baseline": mean(r["psnr_baseline"] for r in ok),
                "ssim": mean(r["ssim"] for r in ok),
                "mean_wall_seconds": mean(r["wall_seconds"] for r in ok),
                "total_wall_seconds": float(sum(r["wall_seconds"] or 0.0 for r in rows)),
            }
        )
    return pa.Table.from_pylist(out, schema=SUMMARY_SCHEMA)


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def summary_markdown(table: pa.Table) -> str:
    """A markdown table of `summarize(table)` (or of a summary table as given), for Prefect artifacts and
    ``dipflow report``."""
    summary = table if table.schema.names == SUMMARY_SCHEMA.names else summarize(table)
    header = [
        "dataset",
        "task",
        "scale",
        "images",
        "ok",
        "errors",
        "skipped",
        "PSNR (dB)",
        "baseline PSNR (dB)",
        "SSIM",
        "mean s",
        "total s",
    ]
    digits = {"psnr": 2, "psnr_baseline": 2, "ssim": 4, "mean_wall_seconds": 1, "total_wall_seconds": 1}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in summary.to_pylist():
        cells = [_cell(row[name], digits.get(name, 0)) for name in SUMMARY_SCHEMA.names]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.num_rows == 0:
        lines.append("| " + " | ".join(["–"] * len(header)) + " |")
    return "\n".join(lines) + "\n"
