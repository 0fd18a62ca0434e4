"""The done-state of an output root: which image, under which settings, is restored already — what resume reads.

A resumed run must not cost what was ever done. The report holds every row of every run (history, metrics); the
state holds one small row per image restored (dataset, key, config hash, the input's fingerprint from the listing,
its content hash from the worker), so a run reads it once, with a filter on its datasets and config hashes, and then
decides "done or not" for each listed image from the listing alone, without reading the image and without listing
the output files::

    <output>/_dipflow/state/done-<run>-00000.parquet, …   rows of ``ok`` images, flushed with the run's report
    <output>/_dipflow/state/merged-<run>.parquet          what a compaction leaves: one file, the latest row per key

A run adds rows as images finish (buffered like the report, so a crash costs at most what resume then redoes) and,
when it ends with more than `MERGE_AT` files in the folder, merges them into one. Crash-safe by order: the merged
file is written whole (one atomic write) before the files it replaces are deleted, and readers keep the latest row
per key, so a row read twice counts once. The merged file names the files it replaces (``dipflow.replaces`` in its
schema metadata), so that the next run (`tidy`, under the lease) deletes those a crash left, and the temporaries of
a write a kill interrupted. Only dipflow reads the state (it lies under ``_dipflow/``, which outside readers' globs
of ``report/`` never reach). One run writes at a time (the output root's lease, `pipelines.lease`).

An output root written before the state existed (report version ≤ 2) has no state: the first run there takes the
``ok`` rows of its report as done *by content* — for those images only it reads the input and compares its SHA-256,
as earlier versions did — and records what matches, so from the next run on the state answers alone.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.reporting import layout, reports

__all__ = ["MERGE_AT", "STATE_SCHEMA", "DoneState", "StateWriter", "state_dir", "tidy"]

STATE_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("input_fingerprint", pa.string()),  # storage.fingerprint of the input (and its side inputs)
        pa.field("input_sha256", pa.string()),  # of the bytes the worker restored
        pa.field("output_uri", pa.string()),  # redacted
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    ],
    metadata={"dipflow.schema": "state", "dipflow.report_version": reports.REPORT_VERSION},
)
"""One row per image restored (``ok``) by a run; the latest per (dataset, config_hash, image_key) holds."""

ADOPT_EVERY = 65_536
"""`StateWriter.adopt` writes its rows every this many (about 2 MB of Parquet)."""

MERGE_AT = 8
"""A run that ends with more state files than this merges them into one: a nightly run adds one or two files, so the
state stays a handful of files (what a run reads) and a merge rewrites the state about once a week."""

_KEY = ("dataset", "config_hash", "image_key")
_REPLACES = b"dipflow.replaces"  # a merged file's schema metadata: the names of the files it replaces (JSON)
_FILE = re.compile(r"(done|merged)-[A-Za-z0-9._-]+\.parquet")


def state_dir(output_root: str) -> str:
    return storage.join(output_root, "_dipflow", "state")


def _files(output_root: str, so: dict | None) -> list[str]:
    return [
        u
        for u in storage.list_files(state_dir(output_root), so, suffix=".parquet")
        if _FILE.fullmatch(u.rpartition("/")[2])
    ]


def _read(uris: list[str], so: dict | None, filter: ds.Expression | None, columns: list[str] | None) -> pa.Table:
    if not uris:
        table = STATE_SCHEMA.empty_table()
        return table.select(columns) if columns else table
    fs = storage.filesystem(uris[0], so)[0]
    paths = [storage.filesystem(u, so)[1] for u in uris]
    return ds.dataset(paths, schema=STATE_SCHEMA, format="parquet", filesystem=fs).to_table(
        columns=columns, filter=filter
    )


def _latest(table: pa.Table) -> pa.Table:
    """The latest row (greatest finished_at, then last in order) per (dataset, config_hash, image_key)."""
    if table.num_rows == 0:
        return table
    index = pa.array(range(table.num_rows), pa.int64())
    t = pc.fill_null(table.column("finished_at").cast(pa.int64()), -(2**63))
    order = pc.sort_indices(pa.table({"t": t, "i": index}), sort_keys=[("t", "ascending"), ("i", "ascending")])
    # In that order the last row of each key wins: an ordered (single-threaded) group-by keeps the order.
    keyed = table.select(list(_KEY)).append_column("__row", index).take(order)
    last = keyed.group_by(list(_KEY), use_threads=False).aggregate([("__row", "last")]).column("__row_last")
    return table.take(last.take(pc.sort_indices(last)))


def _columns(table: pa.Table, *names: str) -> Iterable[tuple]:
    return zip(*(table.column(n).to_pylist() for n in names), strict=True)


def _digest(text: str | None) -> int | None:
    """A fingerprint (or a key) as 8 bytes (an unsigned int). 64 bits make a false "unchanged" between two
    fingerprints of one key a 2⁻⁶⁴ event; two keys with one digest (about 3·10⁻⁸ among 10⁶ keys) are each still
    found with their own fingerprint (`_Index`)."""
    if text is None:
        return None
    return int.from_bytes(blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class _Index:
    """The images done in one (dataset, config hash) scope: the digests of their keys, sorted, beside the digests of
    their fingerprints — 16 bytes an image, where a dict of str → int costs some 170 (10⁶ images: 16 MB, not
    170 MB plus what a dict's growth leaves behind). A lookup is a binary search."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.keys = np.empty(0, np.uint64)
        self.fingerprints = np.empty(0, np.uint64)

    def add(self, keys: list[str], fingerprints: list[str | None]) -> None:
        """A batch of (key, fingerprint); an image without a fingerprint is never taken as done, so it is left out.
        `seal` must follow the last batch."""
        known = [(k, f) for k, f in zip(keys, fingerprints, strict=True) if f is not None]
        kd = np.fromiter((_digest(k) for k, _ in known), np.uint64, len(known))
        fd = np.fromiter((_digest(f) for _, f in known), np.uint64, len(known))
        self._parts.append((kd, fd))

    def seal(self) -> None:
        if self._parts:
            keys = np.concatenate([self.keys, *(k for k, _ in self._parts)])
            fingerprints = np.concatenate([self.fingerprints, *(f for _, f in self._parts)])
            order = np.argsort(keys, kind="stable")
            self.keys, self.fingerprints, self._parts = keys[order], fingerprints[order], []

    def holds(self, key: str, fingerprint: str) -> bool:
        kd, fd = np.uint64(_digest(key)), np.uint64(_digest(fingerprint))
        i = int(np.searchsorted(self.keys, kd))
        while i < len(self.keys) and self.keys[i] == kd:  # more than one only if two keys share a digest
            if self.fingerprints[i] == fd:
                return True
            i += 1
        return False

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class DoneState:
    """What is done, for the (dataset, config hash) scopes of one run: key → digest of the input fingerprint it was
    restored with, and for images known only from a report written before the state existed, key → content hash
    (`legacy`). 16 bytes per image in memory (`_Index`), beside what reading the state's files costs while it loads
    (`benchmarks/bench_scale.py`)."""

    done: dict[tuple[str, str], _Index]  # (dataset, config_hash) → the images done there, by key and fingerprint
    legacy: dict[tuple[str, str], dict[str, str]]  # (dataset, config_hash) → {image_key: input sha256}
    files_read: int = 0
    owned: dict[str, np.ndarray] = field(default_factory=dict)  # dataset → sorted digests of keys done, any config

    @classmethod
    def load(cls, output_root: str, so: dict | None, scopes: Iterable[tuple[str, str]]) -> DoneState:
        """The state of `output_root` for `scopes`, read once with a filter on them (the key and fingerprint
        columns only); an output root without state falls back to its report's ``ok`` rows (see the module)."""
        scopes = sorted(set(scopes))
        state = cls({s: _Index() for s in scopes}, {s: {} for s in scopes})
        if not scopes:
            return state
        datasets = ds.field("dataset").isin(sorted({d for d, _ in scopes}))
        where = datasets & ds.field("config_hash").isin(sorted({c for _, c in scopes}))
        uris = _files(output_root, so)
        state.files_read = len(uris)
        if not uris:
            state._load_legacy(output_root, so, where)
            return state
        # The datasets' rows under every config: the run's own configs decide what is done; every config's keys say
        # whose an output is (`owns`) — a run with new settings still replaces the outputs of the old ones.
        scoped = _latest(_read(uris, so, datasets, [*_KEY, "input_fingerprint", "finished_at"]))
        for (dataset, config), index in state.done.items():  # each scope's rows, a batch of Python strings at a time
            mine = scoped.filter(
                pc.and_(pc.equal(scoped.column("dataset"), dataset), pc.equal(scoped.column("config_hash"), config))
            )
            for batch in mine.to_batches(max_chunksize=65_536):
                index.add(batch.column("image_key").to_pylist(), batch.column("input_fingerprint").to_pylist())
            index.seal()
        for dataset in {d for d, _ in scopes}:
            configs = pa.array([c for d, c in scopes if d == dataset])
            others = scoped.filter(
                pc.and_(
                    pc.equal(scoped.column("dataset"), dataset),
                    pc.invert(pc.is_in(scoped.column("config_hash"), value_set=configs)),
                )
            ).column("image_key")
            digests = np.fromiter((_digest(k) for k in others.to_pylist()), np.uint64, len(others))
            mine = [state.done[dataset, c].keys for c in configs.to_pylist()]
            state.owned[dataset] = np.unique(np.concatenate([*mine, digests]))
        return state

    def _load_legacy(self, output_root: str, so: dict | None, where: ds.Expression) -> None:
        columns = [*reports.LATEST_KEY, "input_sha256", "status", "finished_at"]
        table = reports.read_report(output_root, so, columns=columns, filter=where & (ds.field("status") != "skipped"))
        latest = reports.latest_rows(table)
        ok = pc.and_(pc.equal(latest.column("status"), "ok"), pc.is_valid(latest.column("input_sha256")))
        for dataset, config, key, sha in _columns(latest.filter(ok), *_KEY, "input_sha256"):
            if (rows := self.legacy.get((dataset, config))) is not None:
                rows[key] = sha

    def is_done(self, dataset: str, config_hash: str, key: str, fingerprint: str | None) -> bool:
        """Whether the image was restored under this config with this fingerprint (None, unknown: never done)."""
        index = self.done.get((dataset, config_hash))
        return index is not None and fingerprint is not None and index.holds(key, fingerprint)

    def owns(self, dataset: str, key: str) -> bool:
        """Whether a run into this root restored the image `key` of `dataset` under any settings, so that its
        output's place holds the root's own file (`pipelines.ownership`)."""
        kd = np.uint64(_digest(key))
        keys = self.owned.get(dataset)
        if keys is not None and (i := int(np.searchsorted(keys, kd))) < len(keys) and keys[i] == kd:
            return True
        return any(key in rows for (d, _), rows in self.legacy.items() if d == dataset)

    def owned_count(self, dataset: str) -> int | None:
        """How many images of `dataset` runs into this root restored, under any settings (None: the root has no
        state to say it)."""
        keys = self.owned.get(dataset)
        return None if keys is None else len(keys)

    def legacy_sha256(self, dataset: str, config_hash: str, key: str) -> str | None:
        """The content hash of an image done according to an old report only (see the module)."""
        return self.legacy.get((dataset, config_hash), {}).get(key)

    def __len__(self) -> int:
        return sum(len(v) for v in self.done.values()) + sum(len(v) for v in self.legacy.values())


class StateWriter:
    """Adds the done rows of one run to the state, buffered like its report rows; `close` merges the state's files
    into one when there are more than `MERGE_AT` (see the module)."""

    def __init__(self, output_root: str, run_id: str, so: dict | None, *, merge_at: int = MERGE_AT) -> None:
        self.output_root, self.run_id, self.so, self.merge_at = output_root, run_id, so, merge_at
        self.buffer: list[dict[str, Any]] = []
        self.adopted: list[dict[str, Any]] = []  # rows of images done earlier, recorded anew (`adopt`)
        self.seq = 0
        self.files_written = 0
        self.merged: int | None = None  # files merged by close, if it merged
        self.abandoned = False  # the run lost its lease: nothing more is written
        self._lock = threading.Lock()

    def add(self, row: Mapping[str, Any]) -> None:
        """One finished image (a report row of status ``ok``)."""
        with self._lock:
            self.buffer.append(self._row(row))

    def adopt(self, row: Mapping[str, Any]) -> None:
        """An image done by an earlier run, recorded anew (matched by content to an old report, or by a fingerprint
        of the format before the ctime, `jobs.plan_stream`). Its report rows were written by that run, so unlike
        `add`'s rows these need not wait for the report: every `ADOPT_EVERY` of them are written at once, and a run
        that adopts 10⁶ images holds no more than that many."""
        with self._lock:
            self.adopted.append(self._row(row))
            if len(self.adopted) < ADOPT_EVERY:
                return
        self.flush(adopted_only=True)

    def _row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "dataset": row["dataset"],
            "config_hash": row["config_hash"],
            "image_key": row["image_key"],
            "input_fingerprint": row.get("input_fingerprint"),
            "input_sha256": row.get("input_sha256"),
            "output_uri": row.get("output_uri"),
            "run_id": self.run_id,
            "finished_at": row.get("finished_at") or datetime.now(UTC),
        }

    def flush(self, *, adopted_only: bool = False) -> None:
        with self._lock:
            rows = self.adopted if adopted_only else self.buffer + self.adopted
            if not rows or self.abandoned:
                return
            table = pa.Table.from_pylist(rows, schema=STATE_SCHEMA)
            if self.files_written == 0:  # a reopened run (a retried flow) never overwrites its own earlier files
                self.seq = max(self.seq, _next_seq(self.output_root, self.run_id, self.so))
            name = f"done-{self.run_id}-{self.seq:05d}.parquet"
            storage.write_bytes_atomic(storage.join(state_dir(self.output_root), name), _parquet(table), self.so)
            self.seq += 1
            self.files_written += 1
            self.adopted.clear()
            if not adopted_only:
                self.buffer.clear()

    def abandon(self) -> None:
        """Drop what is buffered and write nothing more, no merge either: the run lost its output root's lease
        (`pipelines.lease`) to a run that restores those images again."""
        with self._lock:
            self.buffer.clear()
            self.abandoned = True

    def close(self) -> None:
        if self.abandoned:
            return
        self.flush()
        uris = _files(self.output_root, self.so)
        if len(uris) > self.merge_at:
            merged = _latest(_read(uris, self.so, None, None))
            target = storage.join(state_dir(self.output_root), f"merged-{self.run_id}.parquet")
            replaces = sorted(u.rpartition("/")[2] for u in uris if u != target)  # what `tidy` deletes after a crash
            merged = merged.replace_schema_metadata({**STATE_SCHEMA.metadata, _REPLACES: json.dumps(replaces)})
            storage.write_bytes_atomic(target, _parquet(merged), self.so)  # whole, before any file it replaces goes
            for uri in uris:
                if uri != target:
                    storage.remove_file(uri, self.so)
            self.merged = len(uris)


def _next_seq(output_root: str, run_id: str, so: dict | None) -> int:
    mine = re.compile(rf"done-{re.escape(run_id)}-(\d+)\.parquet")
    numbers = [int(m.group(1)) for u in _files(output_root, so) if (m := mine.fullmatch(u.rpartition("/")[2]))]
    return max(numbers, default=-1) + 1


def tidy(output_root: str, so: dict | None = None) -> int:
    """Delete what an interrupted merge left in the state (the files a merged file names as replaced, still there)
    and the temporaries of interrupted writes; how many files. What a run does first, under its lease."""
    uris = _files(output_root, so)
    present = {u.rpartition("/")[2]: u for u in uris}
    removed = 0
    for uri in uris:
        if not uri.rpartition("/")[2].startswith("merged-") or uri.rpartition("/")[2] not in present:
            continue  # not a merge, or one a later merge replaced (deleted just now)
        fs, path = storage.filesystem(uri, so)
        metadata = ds.dataset([path], format="parquet", filesystem=fs).schema.metadata or {}
        for name in json.loads(metadata.get(_REPLACES, b"[]")):
            if name in present:
                storage.remove_file(present.pop(name), so)
                removed += 1
    return removed + layout.remove_temporaries(state_dir(output_root), so)


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=65_536)
    return sink.getvalue().to_pybytes()
