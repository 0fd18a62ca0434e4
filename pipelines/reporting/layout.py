"""Where a report's files lie, and how a run's rows go from pending to committed: each row once, for every reader,
at every moment of a crash.

    <output>/_dipflow/pending/report/run_id=<run>/part-00000.parquet, …   while a run writes: dipflow's readers only
    <output>/report/run_id=<run>/compacted-00000-00041.parquet             committed: what every reader sees
    <output>/_dipflow/pending/curves/…, <output>/curves/…                  alike

Why two places: an outside reader (DuckDB ``read_parquet('<output>/report/**/*.parquet', hive_partitioning=true)``,
Spark, ``pyarrow.dataset.dataset('<output>/report', partitioning='hive')``) takes every Parquet file it finds, and no
store replaces several files by one atomically, so a compaction inside ``report/`` shows its rows twice between the
compacted file's write and the parts' deletes. So a run's parts wait outside every reader's glob — not under a hidden
name inside ``report/``: DuckDB's glob matches names starting with "." or "_", which pyarrow and Spark skip — and
only whole compacted files enter ``report/``, each in one atomic step (`storage.write_bytes_atomic`: a local rename,
one PUT). The price: outside readers see a run's rows once it has ended (or once the next run has finished it);
dipflow's own readers (`reports.read_report`, the HTML report, `dipflow report`, resume of old roots) read the
pending parts too. A table format (Delta, Iceberg) would show rows as they come through a log, which the plain
Parquet globs README names do not read.

`commit`, for each group of consecutive parts of at most `max_rows` rows:

1. ``compacted-<first>-<last>.parquet`` is written whole into ``report/run_id=<run>/``: its rows are committed, and
   dipflow's readers now skip the pending parts its range holds;
2. then those parts are deleted.

A crash before 1 leaves pending parts (the next run commits them), a crash inside 1 a hidden temporary sibling that
no ``*.parquet`` glob matches (`recover` deletes it), a crash between 1 and 2 parts that a committed range holds
(read by no one, deleted by the next commit). Groups never span a committed range and their names follow from the
part numbers, so a redo writes the same names: it overwrites, never duplicates.

Earlier versions wrote parts into ``report/run_id=<run>/`` and compacted them there. Those files count as committed as
they are; `recover` deletes the ones a compacted file of the same folder holds (a crash of that version's compaction,
which outside readers counted twice) and leaves loose old parts alone: merging them would open the very window this
layout closes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines import storage

__all__ = ["Compaction", "commit", "committed_dir", "live", "next_part", "pending_dir", "recover", "run_of", "span"]

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RUN_FOLDER = re.compile(r"run_id=(.+)")
_PART = re.compile(r"part-(\d+)\.parquet")
_COMPACTED = re.compile(r"compacted-(\d+)-(\d+)\.parquet")
_TEMPORARY = re.compile(r"\..+\.tmp")  # what `storage.write_bytes_atomic` leaves on local files when killed inside
_ROW_GROUP = 65_536  # rows per row group of a compacted file: large enough to scan fast, small enough to hold


def _checked(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id or ""):
        raise ValueError(f"run id {run_id!r}: use 1-128 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    return run_id


def committed_dir(output_root: str, kind: str, run_id: str | None = None) -> str:
    """``<output>/<kind>/`` (``report``, ``curves``), or one run's folder in it: what every reader globs."""
    base = storage.join(output_root, kind)
    return base if run_id is None else storage.join(base, f"run_id={_checked(run_id)}")


def pending_dir(output_root: str, kind: str, run_id: str | None = None) -> str:
    """``<output>/_dipflow/pending/<kind>/``, or one run's folder in it: parts not yet committed, outside every
    reader's glob of ``<kind>/``."""
    base = storage.join(output_root, "_dipflow", "pending", kind)
    return base if run_id is None else storage.join(base, f"run_id={_checked(run_id)}")


def _name(uri: str) -> str:
    return uri.rpartition("/")[2]


def span(name: str) -> tuple[int, int] | None:
    """The part numbers a file holds: ``part-00007.parquet`` → (7, 7), ``compacted-00000-00255.parquet`` → (0, 255);
    any other name → None (read as it is, never replaced)."""
    if m := _PART.fullmatch(name):
        return int(m.group(1)), int(m.group(1))
    if m := _COMPACTED.fullmatch(name):
        return int(m.group(1)), int(m.group(2))
    return None


def run_of(uri: str) -> str | None:
    """The run a file belongs to, from its folder ``run_id=<run>``; None for a file outside a run folder."""
    m = _RUN_FOLDER.fullmatch(_name(uri.rpartition("/")[0]))
    return m.group(1) if m else None


def _order(uri: str) -> tuple[str, int, str]:
    s = span(_name(uri))
    return run_of(uri) or "", s[0] if s else -1, _name(uri)


def files(folder: str, storage_options: dict | None) -> list[str]:
    """Every Parquet file under `folder`, ordered by run, then first part number, then name."""
    return sorted(storage.list_files(folder, storage_options, suffix=".parquet"), key=_order)


def live(committed: Sequence[str], pending: Sequence[str] = ()) -> list[str]:
    """The files a reader of dipflow takes, each row once, ordered by run, then part number: every committed file
    (under ``<kind>/``) but those that a committed compacted file of its run holds (an earlier version's crash
    between its compaction's write and deletes), and every pending part but those whose number a committed file of
    its run holds (a crash between a commit and the parts' deletes)."""
    held: dict[str | None, list[tuple[int, int]]] = {}
    compacted: dict[str | None, list[tuple[int, int]]] = {}
    for uri in committed:
        if (s := span(_name(uri))) is not None:
            held.setdefault(run_of(uri), []).append(s)
            if _COMPACTED.fullmatch(_name(uri)):
                compacted.setdefault(run_of(uri), []).append(s)
    taken = []
    for uri in committed:
        s, part = span(_name(uri)), _PART.fullmatch(_name(uri)) is not None
        covers = compacted.get(run_of(uri), ())
        if s is None or not any(a <= s[0] and s[1] <= b and (part or (a, b) != s) for a, b in covers):
            taken.append(uri)
    for uri in pending:
        s = span(_name(uri))
        if s is None or not any(a <= s[0] and s[1] <= b for a, b in held.get(run_of(uri), ())):
            taken.append(uri)
    return sorted(taken, key=_order)


def next_part(output_root: str, kind: str, run_id: str, storage_options: dict | None) -> int:
    """The number of a run's next part: after its pending parts and its committed ranges, so that a reopened run (a
    retried flow) never overwrites what it wrote, nor writes a part that a committed range would hide."""
    found = [
        *files(committed_dir(output_root, kind, run_id), storage_options),
        *files(pending_dir(output_root, kind, run_id), storage_options),
    ]
    return max((s[1] for u in found if (s := span(_name(u)))), default=-1) + 1


@dataclass(frozen=True)
class Compaction:
    """What committing one run (or recovering an output root) did for one kind: compacted files written, rows in
    them, files removed (committed parts, leftovers, temporaries)."""

    written: int = 0
    rows: int = 0
    removed: int = 0

    def __add__(self, other: Compaction) -> Compaction:
        return Compaction(self.written + other.written, self.rows + other.rows, self.removed + other.removed)


def _read_part(uri: str, schema: pa.Schema, storage_options: dict | None) -> pa.Table:
    fs, path = storage.filesystem(uri, storage_options)
    return ds.dataset([path], schema=schema, format="parquet", filesystem=fs).to_table()


class _Compacted:
    """One compacted file being built from consecutive parts: rows streamed into an in-memory Parquet file in row
    groups of `_ROW_GROUP` rows (zstd), written whole at `finish`, then the parts it holds deleted."""

    def __init__(self, directory: str, schema: pa.Schema, storage_options: dict | None) -> None:
        self.directory = directory
        self.storage_options = storage_options
        self.sink = pa.BufferOutputStream()
        self.writer = pq.ParquetWriter(self.sink, schema, compression="zstd")
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.parts: list[str] = []
        self.rows = 0

    def add(self, uri: str, table: pa.Table) -> None:
        self.parts.append(uri)
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if self.pending_rows >= _ROW_GROUP:
            self._write_pending()

    def _write_pending(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=_ROW_GROUP)
            self.pending.clear()
            self.pending_rows = 0

    def finish(self) -> Compaction:
        """Commit: the compacted file written whole, then (only then) its parts deleted."""
        self._write_pending()
        self.writer.close()
        first, last = span(_name(self.parts[0]))[0], span(_name(self.parts[-1]))[1]
        uri = storage.join(self.directory, f"compacted-{first:05d}-{last:05d}.parquet")
        storage.write_bytes_atomic(uri, self.sink.getvalue().to_pybytes(), self.storage_options)
        for part in self.parts:  # until here the parts were the only copy of their rows
            storage.remove_file(part, self.storage_options)
        return Compaction(1, self.rows, len(self.parts))


def commit(
    output_root: str,
    kind: str,
    run_id: str,
    schema: pa.Schema,
    storage_options: dict | None,
    max_rows: int,
    *,
    committed: Sequence[str] | None = None,
    pending: Sequence[str] | None = None,
) -> Compaction:
    """Commit one run's pending parts of one kind as compacted files of at most `max_rows` rows (see the module),
    and delete what a crash left: pending parts committed already, committed files another one holds. Safe to run
    again at any point; not while a writer still writes the run. `committed` and `pending` are the run's listings,
    when the caller has them."""
    so = storage_options
    if committed is None:
        committed = files(committed_dir(output_root, kind, run_id), so)
    if pending is None:
        pending = files(pending_dir(output_root, kind, run_id), so)
    taken = set(live(committed, pending))
    done = Compaction()
    for uri in [*pending, *committed]:  # rows held by a committed file: read by no one
        if uri not in taken:
            storage.remove_file(uri, so)
            done += Compaction(removed=1)
    held = [s for u in committed if (s := span(_name(u)))]
    groups: list[list[str]] = [[]]
    for uri in pending:
        if uri not in taken or not _PART.fullmatch(_name(uri)):
            continue
        n = span(_name(uri))[0]
        if groups[-1] and any(span(_name(groups[-1][-1]))[0] < a < n for a, _ in held):
            groups.append([])  # a committed range between two parts: a group never spans it
        groups[-1].append(uri)
    directory = committed_dir(output_root, kind, run_id)
    for group in groups:
        out: _Compacted | None = None
        for uri in group:
            table = _read_part(uri, schema, so)
            if out is not None and out.rows + table.num_rows > max_rows:
                done += out.finish()
                out = None
            if out is None:
                out = _Compacted(directory, schema, so)
            out.add(uri, table)
        if out is not None:
            done += out.finish()
    return done


def _by_run(uris: Iterable[str]) -> dict[str, list[str]]:
    runs: dict[str, list[str]] = {}
    for uri in uris:
        if (run := run_of(uri)) is not None and _RUN_ID.fullmatch(run):
            runs.setdefault(run, []).append(uri)
    return runs


def remove_temporaries(folder: str, storage_options: dict | None, *, listing: Sequence[str] | None = None) -> int:
    """Delete the hidden temporary files (``.<name>.<random>.tmp``) that a process killed inside
    `storage.write_bytes_atomic` left under `folder` (or in its `listing`, when the caller has it); how many. Only
    while no one else writes there (the lease)."""
    listing = storage.list_files(folder, storage_options) if listing is None else listing
    found = [u for u in listing if _TEMPORARY.fullmatch(_name(u))]
    for uri in found:
        storage.remove_file(uri, storage_options)
    return len(found)


def recover(
    output_root: str, schemas: Mapping[str, pa.Schema], storage_options: dict | None, max_rows: int
) -> dict[str, Compaction]:
    """Finish what interrupted runs left under `output_root`, for each kind of `schemas` (kind → schema): every run's
    pending parts committed, leftovers of a crash removed (earlier versions' included) and temporaries deleted. What
    a run does first, under the output root's lease: never while another writer writes there."""
    so, out = storage_options, {}
    for kind, schema in schemas.items():
        bases = committed_dir(output_root, kind), pending_dir(output_root, kind)
        listed = [storage.list_files(base, so) for base in bases]  # once each: Parquet files and temporaries
        committed, pending = (sorted((u for u in found if u.endswith(".parquet")), key=_order) for found in listed)
        taken = set(live(committed, pending))
        todo = {run_of(u) for u in pending} | {run_of(u) for u in committed if u not in taken}
        committed_runs, pending_runs = _by_run(committed), _by_run(pending)
        done = Compaction()
        for run in sorted(r for r in todo if r is not None and _RUN_ID.fullmatch(r)):
            mine = committed_runs.get(run, []), pending_runs.get(run, [])
            done += commit(output_root, kind, run, schema, so, max_rows, committed=mine[0], pending=mine[1])
        temporaries = sum(
            remove_temporaries(base, so, listing=found) for base, found in zip(bases, listed, strict=True)
        )
        out[kind] = done + Compaction(removed=temporaries)
    return out
