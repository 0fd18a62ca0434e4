"""Whole files in and out: reads (whole or the header), atomic writes, exclusive creation, deletes, the checks a run
makes before it writes (`check_source`, `check_writable`), and the plain recursive `list_files` of an output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from hashlib import sha256
from typing import IO, Any

from pipelines.errors import StorageAccessError, StorageError, StorageNotFoundError
from pipelines.storage.backend import _doing, _fresh, _is_local, _protocols, _retrying, filesystem
from pipelines.storage.keys import join
from pipelines.storage.secrets import redact

# Protocols whose single PUT is atomic: the object becomes visible only when the upload completes
# (S3/GCS/Azure multipart and resumable uploads included), and memory:// swaps one dict entry.
_ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "oss"})


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    """The whole content of the file at `uri` (transient errors retried)."""
    return _read(uri, storage_options)


def read_head(uri: str, storage_options: dict | None = None, nbytes: int = 65536) -> bytes:
    """The first `nbytes` bytes of the file at `uri` (all of it when shorter; transient errors retried): enough for
    an image's header, so that a driver learns its size (`dipcore.image_shape`) without downloading the pixels. One
    ranged read on object stores and http."""
    if nbytes < 0:
        raise ValueError(f"nbytes must be 0 or more, not {nbytes}")
    return _read(uri, storage_options, start=0, end=nbytes)


def _read(uri: str, storage_options: dict | None, **byte_range: int) -> bytes:
    fs, path = filesystem(uri, storage_options)
    try:
        with _doing("reading", uri, fs):
            return _retrying(lambda: fs.cat_file(path, **byte_range))
    except FileNotFoundError as exc:
        raise StorageNotFoundError(f"no such file: {redact(uri)}") from exc
    except IsADirectoryError as exc:
        raise StorageError(f"{redact(uri)} is a folder, not a file") from exc


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of `data` (the content hash that identifies an input across runs)."""
    return sha256(data).hexdigest()


def write_bytes_atomic(uri: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write `data` to `uri` so that a reader sees either the old file or the whole new one, never a part.

    Local files: write a temporary file in the same folder, fsync it, then `os.replace` it over the target (a rename
    within one filesystem is atomic on POSIX and Windows). Object stores (s3, gcs, azure, memory): one PUT is atomic
    already — the object appears only once the upload completes, multipart uploads included — and a rename there is a
    copy plus delete, which is not, so the bytes are written directly. Other filesystems (sftp, ftp, …) get a temporary
    sibling and `fs.mv`, the best they offer. Parent folders are created.
    """
    fs, path = filesystem(uri, storage_options)
    with _doing("writing", uri, fs):
        if _is_local(fs):
            _write_local_atomic(path, data)
            return
        if _protocols(fs) & _ATOMIC_PUT_PROTOCOLS:
            _retrying(lambda: fs.pipe_file(path, data))
        else:
            parent = path.rpartition("/")[0]
            fs.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/{_TMP_PREFIX}{os.urandom(6).hex()}.tmp"  # short: any name the store holds fits
            try:
                _retrying(lambda: fs.pipe_file(tmp, data))
                _retrying(lambda: fs.mv(tmp, path))
            except BaseException:
                with contextlib.suppress(Exception):  # best effort: the error that matters is the write's
                    fs.rm_file(tmp)
                raise
    _fresh(fs, path.rpartition("/")[0] or path)


def create_exclusive(uri: str, data: bytes, storage_options: dict | None = None) -> bool:
    """Write `data` to `uri` only if nothing is there: True when this call created it, False when a file was there
    already. Atomic where the store allows it — local files: a complete temporary sibling hard-linked to the name
    (``link`` fails when the name exists; no reader sees a partial file); S3: a PUT with ``If-None-Match: *``
    (s3fs ``mode="create"``; AWS S3 and moto honour it; an S3-compatible store that ignores the header would
    overwrite, so callers read back); memory://: one process, a check then a write. Elsewhere a best effort: a check,
    a write, and the caller's read-back — two writers racing within that window can both believe they won."""
    fs, path = filesystem(uri, storage_options)
    with _doing("writing", uri, fs):
        if _is_local(fs):
            tmp = _local_sibling(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return True
        _fresh(fs, path)
        if _protocols(fs) & {"s3", "s3a", "memory"}:
            try:
                fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            return True
        if fs.exists(path):
            return False
        parent = path.rpartition("/")[0]
        if parent:  # filesystems with real folders (sftp, a wrapped local one) need them made first
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(path, data)
        return True


def remove_file(uri: str, storage_options: dict | None = None) -> None:
    """Delete the file at `uri`; a file that is not there is no error."""
    fs, path = filesystem(uri, storage_options)
    with contextlib.suppress(FileNotFoundError), _doing("deleting", uri, fs):
        fs.rm_file(path)
    _fresh(fs, path)


def check_source(url: str, storage_options: dict | None = None) -> None:
    """Raise `StorageNotFoundError` when nothing exists at the source `url`: checked before a run writes anything,
    so that a mistyped source leaves no output folder behind. Its errors name the listing it is the start of."""
    fs, path = filesystem(url, storage_options)
    _fresh(fs, path)
    with _doing("listing", url, fs):
        found = bool(fs.exists(path))
    if not found:
        raise StorageNotFoundError(f"source does not exist: {redact(url)}")


def check_writable(root: str, storage_options: dict | None = None) -> None:
    """Raise `StorageError` unless a file can be written (and removed) under `root`: what a run checks before it
    restores anything, so that an output it cannot write costs nothing but the message."""
    probe = join(root, f".dipflow-write-check-{os.urandom(6).hex()}")
    try:
        write_bytes_atomic(probe, b"", storage_options)
        fs, path = filesystem(probe, storage_options)
        fs.rm_file(path)
    except StorageAccessError as exc:  # says already what to check
        raise StorageAccessError(f"cannot write to the output {redact(root)}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the user needs the same message
        said = str(exc) if isinstance(exc, StorageError) else redact(str(exc)) or type(exc).__name__
        raise StorageError(
            f"cannot write to the output {redact(root)}: {said} "
            "(check that it exists or can be created, its permissions, the free space and the credentials)"
        ) from None


_TMP_PREFIX = ".dipflow-"  # temporary siblings: hidden, and named so that a reader knows whose they are


def _local_sibling(path: str, data: bytes) -> str:
    """A complete, synced, hidden temporary file holding `data` beside `path` (its folder made first), ready to be
    renamed or linked to `path`; removed again if writing it fails."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    # A short name of its own, not the target's plus a suffix: a target whose name is as long as the filesystem
    # allows (255 bytes on most) must still get a temporary sibling.
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=_TMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _write_local_atomic(path: str, data: bytes) -> None:
    tmp = _local_sibling(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def open_output(uri: str, mode: str = "rb", storage_options: dict | None = None) -> IO[Any]:
    """An open fsspec file at `uri` (use as a context manager). Writes through it are NOT atomic; prefer
    `write_bytes_atomic` for whole files."""
    fs, path = filesystem(uri, storage_options)
    if "w" in mode or "a" in mode:
        parent = path.rpartition("/")[0]
        if parent and _is_local(fs):
            fs.makedirs(parent, exist_ok=True)
    try:
        with _doing("writing" if "w" in mode or "a" in mode else "reading", uri, fs):
            return fs.open(path, mode)
    except FileNotFoundError as exc:
        raise StorageNotFoundError(f"no such file: {redact(uri)}") from exc


def list_files(root: str, storage_options: dict | None = None, *, suffix: str | None = None) -> list[str]:
    """Full URLs of every file under `root` (recursive, sorted, fresh), optionally only those ending in `suffix`.
    A missing root gives an empty list."""
    fs, path = filesystem(root, storage_options)
    _fresh(fs, path)
    with _doing("listing", root, fs):
        if not fs.exists(path):
            return []
        found = sorted(fs.find(path))
    if suffix is not None:
        found = [p for p in found if p.endswith(suffix)]
    return [fs.unstrip_protocol(p) for p in found]
