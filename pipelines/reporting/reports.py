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
new ones. The schemas and the conversions to them live in `pipelines.reporting.schema`. All storage goes through
`pipelines.storage`; this module never imports fsspec.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.errors import SchemaMismatchError
from pipelines.reporting import layout
from pipelines.reporting.layout import Compaction
from pipelines.reporting.schema import (
    CURVES_SCHEMA,
    LATEST_KEY,
    REPORT_SCHEMA,
    REPORT_VERSION,
    STATUSES,
    SUMMARY_SCHEMA,
    curve_rows,
    to_records,
    to_table,
)
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
    *,
    run_id: str | None = None,
    filter: ds.Expression | None = None,
    columns: Sequence[str] | None = None,
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


def read_report(output_root: str, storage_options: dict | None = None, **scan: Any) -> pa.Table:
    """Every report row under `output_root`, in REPORT_SCHEMA; none → an empty table. `scan`: ``run_id`` (one
    run's: only its folder is listed), ``filter`` (a ``pyarrow.dataset`` expression, e.g. ``ds.field("status") ==
    "ok"``) and ``columns`` go to the scan: row groups whose statistics exclude the filter are not read."""
    return _read(output_root, "report", REPORT_SCHEMA, storage_options, **scan)


def read_curves(output_root: str, storage_options: dict | None = None, **scan: Any) -> pa.Table:
    """Every curve row under `output_root`, in CURVES_SCHEMA; none → an empty table. `scan` as for `read_report`."""
    return _read(output_root, "curves", CURVES_SCHEMA, storage_options, **scan)


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
