"""The invariants every fault case is held to, checked from what a run leaves behind, and its outcome as a ledger row.

For each listed input: exactly one final row (``ok``, or ``error`` with a readable one-line message), or none when an
earlier run finished it (the run's summary counts it as done earlier). For the output
root: every output belongs to an ``ok`` row and decodes, no temporary or partial file stays, nothing was written
outside the root, the inputs are byte for byte what they were. Across runs: nothing done is redone. Around the run: no
process is left behind and no secret is at rest.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import dipcore
from pipelines import storage

# What a run writes beside its outputs; every other file under the output root must be an image's output.
RUN_FOLDERS = ("report/", "curves/", "html/", "runs/", "_dipflow/")


@dataclass
class Outcome:
    """One case's line in the ledger (and on docs/reliability.md)."""

    case: str
    group: str
    backend: str
    what: str
    listed: int = 0
    rows_lost: int = 0  # listed inputs without exactly one final row
    unreadable_errors: int = 0  # error rows whose message is empty, multi-line or a traceback
    outputs_corrupt: int = 0  # outputs that do not decode, or that no ok row claims
    partial_files: int = 0  # temporary files left in the output root
    outside_root: int = 0  # files written outside the output root (inputs changed included)
    redone: int = 0  # inputs done in an earlier run and done again
    processes_left: int = 0
    secrets_at_rest: int = 0  # files holding a secret of the run
    expected_missed: int = 0  # inputs that ended otherwise than the case says they must (ok / error)
    fidelity_lost: int = 0  # outputs that lost the input's depth, grey, alpha or ICC profile without a note
    notes: list[str] = field(default_factory=list)

    COUNTS = (
        "rows_lost",
        "unreadable_errors",
        "outputs_corrupt",
        "partial_files",
        "outside_root",
        "redone",
        "processes_left",
        "secrets_at_rest",
        "expected_missed",
        "fidelity_lost",
    )

    @property
    def passed(self) -> bool:
        return all(getattr(self, name) == 0 for name in self.COUNTS)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}

    def fail(self, count: str, note: str) -> None:
        setattr(self, count, getattr(self, count) + 1)
        self.notes.append(note)


def readable(message: str | None) -> bool:
    """An error a user can read: one non-empty line, not a traceback, not a bare exception type."""
    text = (message or "").strip()
    return bool(text) and "\n" not in text and "Traceback" not in text and len(text) < 1000 and ":" in text


def snapshot(root: str, storage_options: dict | None = None) -> dict[str, str]:
    """``{url: sha256}`` of every file under `root` (empty when it does not exist; what cannot be read as a
    file, such as a broken link or a link to a folder: "unreadable")."""
    found = {}
    for url in storage.list_files(root, storage_options):
        try:
            found[url] = sha256(storage.read_bytes(url, storage_options)).hexdigest()
        except storage.StorageError:  # a broken link, a link to a folder
            found[url] = "unreadable"
    return found


def local_tree(folder: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, int]:
    """``{path: mtime_ns}`` of every file under a local folder, except under `skip` (to catch writes outside)."""
    found = {}
    for dirpath, _, files in os.walk(folder):
        if any(Path(dirpath).is_relative_to(s) for s in skip):
            continue
        for name in files:
            path = os.path.join(dirpath, name)
            found[path] = os.lstat(path).st_mtime_ns
    return found


def check_rows(
    outcome: Outcome,
    listed: set[str],
    rows: list[dict],
    *,
    expect: dict[str, str] | None = None,
    done: set[str] = frozenset(),
    done_earlier: int | None = None,
) -> None:
    """Exactly one final row per listed input — none for those in `done`, finished by an earlier run, which the
    run's summary counts instead (`done_earlier`, when given, must be their number) —, readable errors, and the
    expected ending where the case fixes one."""
    outcome.listed = len(listed)
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        by_key.setdefault(row["image_key"], []).append(row)
    if done_earlier is not None and done_earlier != len(done & listed):
        outcome.fail("rows_lost", f"the run's summary counts {done_earlier} done earlier, not {len(done & listed)}")
    for key in sorted(listed):
        mine = by_key.get(key, [])
        if key in done:
            if mine:
                outcome.fail("redone", f"{key!r} was done, and the rerun gave {[r['status'] for r in mine]}")
            continue
        if len(mine) != 1 or mine[0]["status"] not in ("ok", "error", "skipped"):
            outcome.fail("rows_lost", f"{key!r}: {len(mine)} rows ({[r['status'] for r in mine]})")
            continue
        row = mine[0]
        if row["status"] == "error" and not readable(row["error"]):
            outcome.fail("unreadable_errors", f"{key!r}: {row['error']!r}")
        wanted = (expect or {}).get(key, "either")
        if wanted != "either" and row["status"] != wanted:
            outcome.fail("expected_missed", f"{key!r}: {row['status']} ({row['error']}), expected {wanted}")
    for key in sorted(set(by_key) - listed):
        outcome.fail("rows_lost", f"a row for {key!r}, which was not listed")


def check_outputs(
    outcome: Outcome,
    output_root: str,
    rows: list[dict],
    storage_options: dict | None = None,
    *,
    hidden_temporaries_allowed: bool = False,
    kept: frozenset[str] = frozenset(),
) -> None:
    """Every file under the output root is a run's own (report, curves, HTML) or an ``ok`` row's output that decodes
    in full; no temporary file stays (a hidden one is only noted where `hidden_temporaries_allowed`: a process killed
    inside a write leaves it, and readers skip names that start with "."). `kept`: paths under the root (relative)
    of files that are not the run's, which it must leave as they are (the caller compares their bytes)."""
    claimed = {_path(row["output_uri"]) for row in rows if row["status"] in ("ok", "skipped") and row["output_uri"]}
    root = _path(output_root).rstrip("/") + "/"
    for url in storage.list_files(output_root, storage_options):
        path = _path(url)
        rel = path.removeprefix(root)
        name = rel.rsplit("/", 1)[-1]
        if name.endswith(".tmp") or (name.startswith(".") and ".tmp" in name):
            if hidden_temporaries_allowed and name.startswith("."):
                outcome.notes.append(f"a hidden temporary file stays: {rel!r}")
            else:
                outcome.fail("partial_files", f"temporary file left: {rel!r}")
        elif rel.startswith(RUN_FOLDERS) or rel in kept:
            continue
        elif path not in claimed:
            outcome.fail("outputs_corrupt", f"an output no ok row claims: {rel!r}")
        else:
            try:
                dipcore.decode_image(storage.read_bytes(url, storage_options))
            except dipcore.DipcoreError as exc:
                outcome.fail("outputs_corrupt", f"{rel!r} does not decode: {exc}")


def _path(url: str) -> str:
    """The protocol-less path of a URL or local path, so that listings and report rows compare."""
    return storage.filesystem(url)[1]


def check_unchanged(outcome: Outcome, before: dict[str, object], after: dict[str, object], where: str) -> None:
    """What lies outside the output root (the inputs included) is as it was."""
    for path in sorted(set(before) | set(after)):
        if before.get(path) != after.get(path):
            state = "new" if path not in before else "gone" if path not in after else "changed"
            outcome.fail("outside_root", f"{where}: {state} {path}")


def done_keys(rows: list[dict]) -> set[str]:
    """The keys a run finished (``ok`` rows): a rerun gives them no row."""
    return {row["image_key"] for row in rows if row["status"] == "ok"}


def check_not_redone(outcome: Outcome, first: list[dict], second: list[dict]) -> None:
    """A second run restores nothing that the first finished: it has no row for it (the runs table counts it)."""
    done = done_keys(first)
    for row in second:
        if row["image_key"] in done:
            outcome.fail("redone", f"{row['image_key']!r} was done, and the rerun gave {row['status']}")


def outside_rows(output_root: str, kind: str = "report") -> dict[str, list[tuple]]:
    """The rows that readers other than dipflow's see under a local output root, read the way docs/reports.md says —
    DuckDB ``read_parquet('<out>/report/**/*.parquet', hive_partitioning=true)`` and ``pyarrow.dataset`` with hive
    partitioning —, each reader's as a list of (run_id, image_key) (curves: with the iteration)."""
    import duckdb
    import pyarrow.dataset as ds

    folder = Path(output_root) / kind
    key = ["run_id", "image_key"] + (["iteration"] if kind == "curves" else [])
    if not any(folder.glob("**/*.parquet")):  # DuckDB refuses a glob that matches nothing
        return {"duckdb": [], "pyarrow.dataset": []}
    query = f"SELECT {', '.join(key)} FROM read_parquet('{folder}/**/*.parquet', hive_partitioning=true)"
    table = ds.dataset(str(folder), format="parquet", partitioning="hive").to_table(columns=key)
    return {
        "duckdb": [tuple(r) for r in duckdb.sql(query).fetchall()],
        "pyarrow.dataset": [tuple(r.values()) for r in table.to_pylist()],
    }


def check_outside_readers(outcome: Outcome, output_root: str, ours: dict[str, list[tuple]], *, all_of_it: bool) -> None:
    """Outside readers (`outside_rows`) see no row twice and none that dipflow's readers (`ours`: kind → rows) do
    not; with `all_of_it` (nothing pending any more), every row that dipflow's readers see."""
    from collections import Counter

    for kind, mine in ours.items():
        for reader, rows in outside_rows(output_root, kind).items():
            seen, known = Counter(rows), Counter(mine)
            twice = sorted(k for k, n in seen.items() if n > 1)
            if twice:
                outcome.fail("rows_lost", f"{reader} sees {len(twice)} {kind} row(s) twice, e.g. {twice[0]}")
            if extra := sorted(set(seen) - set(known)):
                outcome.fail("rows_lost", f"{reader} sees {kind} rows dipflow does not: {extra[:3]}")
            if all_of_it and (missing := known - seen):
                outcome.fail("rows_lost", f"{reader} misses {sum(missing.values())} {kind} row(s) dipflow reads")


def check_secret(outcome: Outcome, secret: str, folders: list[Path]) -> None:
    """No file under `folders` holds `secret` (bytes: SQLite databases and Parquet files included)."""
    needle = secret.encode()
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for name in files:
                path = Path(dirpath) / name
                try:
                    if needle in path.read_bytes():
                        outcome.fail("secrets_at_rest", f"the secret is in {path}")
                except OSError:
                    continue


def check_processes(outcome: Outcome, pids: set[int], *, within: float = 30.0) -> None:
    """Every process of `pids` (what a run started) has ended within `within` seconds."""
    import psutil

    deadline = time.monotonic() + within
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _alive(psutil, pid)}
        if alive:
            time.sleep(0.5)
    for pid in sorted(alive):
        outcome.fail("processes_left", f"pid {pid} ({_describe(psutil, pid)}) outlived its run")


def restore_workers() -> set[int]:
    """The pids of live dipflow Ray actors on this machine (Ray titles an actor's process ``ray::<Class>``)."""
    import psutil

    found = set()
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or []) or proc.info["name"] or ""
        if title.startswith("ray::RestoreWorker"):
            found.add(proc.info["pid"])
    return found


def _alive(psutil, pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(psutil, pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:120]
    except psutil.Error:
        return "gone"
