"""Datasets and outputs through fsspec: listing, reading, atomic writing, keys that stay inside the output root.

This is the only module of the project that imports fsspec; everything else passes URI strings (any fsspec URL:
a local path, ``file://``, ``s3://``, ``gs://``, ``az://``, ``memory://``, ``https://`` …) plus an optional
``storage_options`` dict that goes to the filesystem unchanged. ``storage_options`` values are never logged or put in
an error message; URLs are passed through `redact` before they are.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from hashlib import sha256
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipelines.errors import (
    OutputOverlapError,
    StorageAccessError,
    StorageError,
    StorageNotFoundError,
    StorageOptionError,
    UnsafeKeyError,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageEntry",
    "Listing",
    "OutputOverlapError",
    "StorageAccessError",
    "StorageError",
    "StorageNotFoundError",
    "StorageOptionError",
    "UnsafeKeyError",
    "absolute",
    "check_glob",
    "check_output_root",
    "check_url",
    "check_writable",
    "create_exclusive",
    "exists",
    "filesystem",
    "fingerprint",
    "fold",
    "folds_case",
    "is_image_key",
    "is_local",
    "iter_listing",
    "join",
    "list_files",
    "list_images",
    "name_check",
    "open_output",
    "output_uri",
    "overlap",
    "parse_storage_options",
    "read_bytes",
    "read_head",
    "redact",
    "remove_file",
    "safe_key",
    "sha256_hex",
    "split_secret_options",
    "url_secrets",
    "without_ctime",
    "write_bytes_atomic",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm"}
)
"""Lower-case extensions of the files taken as images (matched case-insensitively): every format
``dipcore.decode_image`` reads (`dipcore.imageio.FORMATS`), so that `restore` and `restore-image` take the same
files. An animated or multi-frame file is listed, and its decode fails with the reason in its row."""

MASK_SUFFIX = "_mask"
"""``<stem>_mask.<ext>`` beside an image is its inpainting mask; such files are never images of their own."""

# Protocols whose single PUT is atomic: the object becomes visible only when the upload completes
# (S3/GCS/Azure multipart and resumable uploads included), and memory:// swaps one dict entry.
_ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "oss"})


@dataclass(frozen=True)
class ImageEntry:
    """One image of a dataset: its full URL, its key relative to the source root, its side inputs, and what the
    listing says of them (`fingerprint`): a run compares it with the last one's to skip what is unchanged."""

    uri: str  # full URL with protocol, e.g. "s3://bucket/data/sub/a.png", "file:///data/sub/a.png"
    key: str  # POSIX path relative to the source root, e.g. "sub/a.png"
    size: int  # bytes
    mask_uri: str | None = None  # inpainting mask (1 = known pixel)
    guide_uri: str | None = None  # flash image for flash/no-flash
    fingerprint: str | None = None  # e.g. "size=…;etag=…|mask:size=…;etag=…"; None: unknown (always redone)


@dataclass
class Listing:
    """What `list_images` found (or `iter_listing` in one folder): the images, and every other file with the reason
    it is not one."""

    images: list[ImageEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason): not images
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (key, reason): image-like, not restored (links)


# --------------------------------------------------------------------------------------------------- filesystems


def filesystem(uri: str, storage_options: dict | None = None) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and the protocol-less path of `uri` (for pyarrow and other fsspec-aware readers)."""
    try:
        return fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except (ImportError, ValueError) as exc:  # unknown protocol, missing s3fs/gcsfs/adlfs, malformed URL
        raise StorageError(f"cannot open {redact(uri)}: {redact(str(exc))}") from exc


def check_url(url: str) -> None:
    """`StorageError` unless `url` can name a file or folder: not empty, no control character, and every protocol
    of it (``simplecache::s3://…`` chains included) known to fsspec with its package installed. Reads nothing."""
    if not isinstance(url, str) or not url.strip():
        raise StorageError("an empty URL or path")
    if _CONTROL.search(url):
        raise StorageError(f"{redact(url)!r} contains a control character")
    bits = url.split("::")
    for i, bit in enumerate(bits):
        protocol, _ = fsspec.core.split_protocol(bit)
        if protocol is None and i < len(bits) - 1:
            protocol = bit  # "simplecache::s3://…": a chained protocol named alone
        if protocol is None:
            continue
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise StorageError(f"{redact(url)}: unknown protocol {protocol!r}") from None
        except ImportError as exc:
            raise StorageError(f"{redact(url)}: {redact(str(exc))}") from None


def is_local(url: str) -> bool:
    """Whether `url` names this machine's files (a path, ``file://``, ``local://``): another machine's process
    reading it finds its own disk, not this one's. Reads nothing."""
    if "::" in url:  # a chain (simplecache::…) is its outer filesystem's business
        return False
    protocol, _ = fsspec.core.split_protocol(url)
    try:
        return protocol is None or issubclass(fsspec.get_filesystem_class(protocol), LocalFileSystem)
    except (ImportError, ValueError):  # unknown: `check_url` says so
        return False


def absolute(url: str) -> str:
    """`url` with a local path made absolute against this process's working directory, in the form given
    (``out`` → ``/home/me/out``, ``file://out`` → ``file:///home/me/out``; ``~`` expanded, ``..`` folded, symbolic
    links kept); any other URL as it is. A run resolves its paths once, where it starts: its Ray workers, whose
    working directory is not the driver's, then write where the user asked."""
    if not is_local(url):
        return url
    protocol, _ = fsspec.core.split_protocol(url)
    path = os.path.abspath(LocalFileSystem._strip_protocol(url))
    return path if protocol is None else f"{protocol}://{path}"


def _is_local(fs: AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _protocols(fs: AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)


def _check_hint(fs: AbstractFileSystem) -> str:
    """What to check when a store refuses an operation."""
    if _is_local(fs):
        return "check the permissions of the file or folder and of the folders above it"
    if _protocols(fs) & {"s3", "s3a"}:
        return (
            "check the credentials (--storage-option key=… secret=…, AWS_* variables or the profile), "
            "the endpoint (client_kwargs.endpoint_url) and the bucket's policy"
        )
    return "check the credentials, the endpoint and the access policy of the bucket, container or server"


@contextlib.contextmanager
def _doing(operation: str, uri: str, fs: AbstractFileSystem) -> Any:
    """Turn the store's refusal of `operation` ("listing", "reading", "writing" …) on `uri` into a
    `StorageAccessError` that says which URL (redacted), which operation and what to check, and any other failure of
    the store into a `StorageError` that says which URL and which operation. The store's own exception is not
    chained: its text may quote the URL with its credentials (it is shown redacted)."""
    try:
        yield
    except StorageError:
        raise
    except PermissionError as exc:
        said = redact(str(exc).strip()) or "permission denied"
        raise StorageAccessError(f"permission denied {operation} {redact(uri)} ({said}); {_check_hint(fs)}") from None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise  # the callers say these in their own words (no such file, a folder)
    except OSError as exc:  # the store failed, after the retries of transient errors: a full disk, a reset, a 5xx
        said = redact(str(exc).strip()) or type(exc).__name__
        raise StorageError(f"{operation} {redact(uri)} failed: {said}") from None


def _fresh(fs: AbstractFileSystem, path: str) -> None:
    # s3fs/gcsfs cache listings per instance (and instances per storage_options); another process (a Ray worker)
    # may have written since, so every listing and existence check starts from the store itself.
    with contextlib.suppress(Exception):  # a cache that cannot be cleared is not worth failing a listing for
        fs.invalidate_cache(path)


def exists(uri: str, storage_options: dict | None = None) -> bool:
    """Whether a file or folder exists at `uri` (fresh, not from a listing cache)."""
    fs, path = filesystem(uri, storage_options)
    _fresh(fs, path)
    with _doing("checking", uri, fs):
        return bool(fs.exists(path))


T = TypeVar("T")

# Transient storage errors (a reset connection, a timeout, throttling, a 5xx) are retried this many times more, after
# these pauses in seconds. Whole-file reads and writes are idempotent, so a retry cannot duplicate anything. Backends
# retry inside too (botocore, gcsfs); this covers what reaches us regardless, and every backend alike.
RETRY_PAUSES: tuple[float, ...] = (0.2, 1.0, 3.0)
_TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.EPIPE})
_TRANSIENT_WORDS = ("SlowDown", "Throttl", "TooManyRequests", "RequestTimeout", "InternalError", "ServiceUnavailable")


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error is worth retrying: the network or the service, not the request (a missing file, a
    refused permission and a full disk stay as they are)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    text = str(exc)
    return any(word in text for word in _TRANSIENT_WORDS) or re.search(r"\bHTTP 5\d\d\b", text) is not None


def _retrying(call: Callable[[], T]) -> T:
    """`call()`, again after each of `RETRY_PAUSES` while it fails transiently; the last error is raised."""
    for pause in RETRY_PAUSES:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
        time.sleep(pause)
    return call()


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


# --------------------------------------------------------------------------------------------------------- keys


_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|2e|00)", re.IGNORECASE)  # "/", "\", ".", NUL


def safe_key(key: str) -> str:
    """The normalised POSIX form of a relative key, or `UnsafeKeyError` if it could leave the root it is joined to.

    Rejected: empty keys and empty segments (``a//b``, a leading or trailing ``/``), ``..`` and other dot-only
    segments, absolute paths, backslashes, drive letters (``C:``), NUL and control characters, and percent-encoded
    separators or dots (``%2f``, ``%5c``, ``%2e``, ``%00``, also double-encoded as ``%252f``) — a store or proxy that
    decodes them once more would otherwise see ``../``. ``.`` segments are dropped.
    """
    if not isinstance(key, str) or not key:
        raise UnsafeKeyError(f"empty or non-string key: {key!r}")

    def reject(why: str) -> UnsafeKeyError:
        return UnsafeKeyError(f"unsafe key {key!r}: {why}")

    # Check the key as given, as a store would decode it, and as Unicode compatibility folding would (U+FF0F "／"
    # folds to "/"), so that no decoding step downstream can turn it into a traversal.
    forms = [key]
    decoded = key
    for _ in range(3):
        decoded = unquote(decoded)
        forms.append(decoded)
    forms.append(unicodedata.normalize("NFKC", key))
    for form in forms:
        if _CONTROL.search(form):
            raise reject("contains NUL or a control character")
        if "\\" in form:
            raise reject("contains a backslash")
    if any(form.count("/") != key.count("/") for form in forms):  # e.g. U+FF0F "／" folding to "/"
        raise reject("contains a character that folds or decodes to '/'")
    if any(_ENCODED_SEPARATOR.search(form) for form in forms):
        raise reject("contains a percent-encoded separator or dot")
    for form in forms:
        if form.startswith("/"):
            raise reject("is an absolute path")
        if _DRIVE.match(form):
            raise reject("starts with a drive letter")
        for seg in form.split("/"):
            if seg == "":
                raise reject("has an empty segment")
            if seg != "." and seg.strip(". ") == "":  # "..", "...", ". ." (Windows strips trailing dots and spaces)
                raise reject("has a '..' segment")
    parts = [seg for seg in key.split("/") if seg != "."]
    if not parts:
        raise reject("names no file")
    return "/".join(parts)


def join(root: str, *parts: str) -> str:
    """`root` (any URL or path) joined with relative parts; the joined parts must pass `safe_key`."""
    rel = safe_key("/".join(parts))
    scheme, sep, path = root.partition("://") if "://" in root else ("", "", root)
    stripped = path.rstrip("/")
    if not stripped and path:  # the root is "/" or "file:///"
        stripped = "/"
    base = f"{scheme}{sep}{stripped}"
    if base.endswith("/") or (sep and not stripped):
        return base + rel
    return f"{base}/{rel}"


def output_uri(output_root: str, key: str, *, suffix: str = ".png") -> str:
    """Where the output of the input `key` goes: the same relative path under `output_root`, its extension
    replaced by `suffix` (``"sub/a.jpg"`` → ``"<root>/sub/a.png"``). Raises `UnsafeKeyError` for a key that
    could escape the root."""
    if suffix and (not suffix.startswith(".") or "/" in suffix or "\\" in suffix or suffix.strip(".") == ""):
        raise UnsafeKeyError(f"bad output suffix {suffix!r}: expected e.g. '.png'")
    rel = PurePosixPath(safe_key(key))
    return join(output_root, str(rel.with_name(rel.stem + suffix)))


_OBJECT_KEY_BYTES = 1024  # the longest object key S3, GCS and Azure blob storage hold (UTF-8 bytes)


def name_check(output_root: str, storage_options: dict | None = None) -> Callable[[str], str | None]:
    """For URLs under `output_root`: why the store could not hold a file there (None: it can) — a name longer than
    the local filesystem's NAME_MAX (pathconf of the nearest existing folder, 255 bytes on most; the output may lie
    on another filesystem than the source, eCryptfs holds 143) or a path longer than its PATH_MAX, an object key
    longer than 1,024 bytes on S3, GCS and Azure. Planning asks it, so that such an image fails before its fit."""
    fs, root = filesystem(output_root, storage_options)
    if _is_local(fs):
        folder = os.path.abspath(root)
        while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        try:
            name_max, path_max = os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
        except (OSError, ValueError):  # not POSIX, or the filesystem does not say
            name_max, path_max = 255, None

        def local(uri: str) -> str | None:
            path = os.path.abspath(filesystem(uri)[1])
            for seg in path.split(os.sep):
                if (n := len(os.fsencode(seg))) > name_max:
                    return f"its output name {seg[:40]!r}… is {n} bytes long; the output's filesystem holds {name_max}"
            if path_max and (n := len(os.fsencode(path))) >= path_max:
                return f"its output path is {n} bytes long; the output's filesystem holds {path_max - 1}"
            return None

        return local
    if _protocols(fs) & {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}:

        def keyed(uri: str) -> str | None:
            key = filesystem(uri, storage_options)[1].partition("/")[2]  # the path less its bucket or container
            if (n := len(key.encode("utf-8"))) > _OBJECT_KEY_BYTES:
                return f"its output key is {n} bytes long; the store holds keys of {_OBJECT_KEY_BYTES} at most"
            return None

        return keyed
    return lambda uri: None


# ------------------------------------------------------------------------------------- what is not the run's own


def folds_case(uri: str, storage_options: dict | None = None) -> bool:
    """Whether names under `uri` may be folded by the filesystem (``A.png`` and ``a.png`` one file): local files on
    macOS and Windows, whose usual filesystems fold case and Unicode forms. Object stores and Linux do not."""
    fs, _ = filesystem(uri, storage_options)
    return _is_local(fs) and sys.platform in ("darwin", "win32")


def fold(name: str) -> str:
    """`name` as a case- and Unicode-folding filesystem compares it."""
    return unicodedata.normalize("NFC", name).casefold()


def _place(uri: str, storage_options: dict | None) -> tuple[str, str]:
    """(which store, the path in it) of `uri`, for comparing locations: local paths resolved (symbolic links, ``..``,
    a relative path), trailing slashes dropped, names folded where the filesystem folds them."""
    fs, path = filesystem(uri, storage_options)
    if _is_local(fs):
        path = os.path.realpath(path)
    path = path.rstrip("/") or "/"
    if _is_local(fs) and sys.platform in ("darwin", "win32"):
        path = fold(path)
    return f"{type(fs).__module__}.{type(fs).__qualname__}", path


def overlap(a: str, b: str, storage_options: dict | None = None) -> str | None:
    """How the locations `a` and `b` relate: ``"same"``, ``"inside"`` (`a` lies inside `b`), ``"contains"`` (`b`
    inside `a`), or None (apart, or on different stores). Reads nothing but, for local paths, symbolic links."""
    (store_a, pa), (store_b, pb) = _place(a, storage_options), _place(b, storage_options)
    if store_a != store_b:
        return None
    if pa == pb:
        return "same"
    if pa.startswith(pb.rstrip("/") + "/"):
        return "inside"
    if pb.startswith(pa.rstrip("/") + "/"):
        return "contains"
    return None


DIPFLOW_FOLDERS = ("report", "curves", "html", "_dipflow")
"""The folders a run writes at the top of its output root beside the outputs (reports, curves, the HTML page and
its thumbnails, the lease): one of them there marks a folder as a dipflow output root."""


def check_output_root(
    output: str, source: str, storage_options: dict | None = None, *, side_inputs: Iterable[str | None] = ()
) -> bool:
    """Refuse (`OutputOverlapError`) an output root that would overwrite what the run reads: the source itself, a
    folder that holds the source, a folder that holds or lies in a side-input folder (`side_inputs`: masks), or a
    folder inside the source that already holds files and is not a dipflow output root (they are the user's
    inputs). Returns whether the output lies inside the source — then `list_images(…, exclude=output)` must leave
    it out, so that the run's outputs, reports and thumbnails are never inputs of the next run."""
    how = overlap(output, source, storage_options)
    out, src = redact(output), redact(source)
    if how == "same":
        raise OutputOverlapError(
            f"the output {out} is the source itself: the restored images would overwrite the originals; "
            "write them to another folder (e.g. -o restored/)"
        )
    if how == "contains":
        raise OutputOverlapError(
            f"the source {src} lies inside the output {out}: outputs, reports and thumbnails would be written "
            "among the inputs (and could overwrite them); write them to a folder outside the source"
        )
    for side in side_inputs:
        if side is not None and overlap(output, side, storage_options) is not None:
            raise OutputOverlapError(
                f"the output {out} overlaps the side-input folder {redact(side)}: outputs could overwrite masks, "
                "or be taken for masks; write them to a separate folder"
            )
    if how != "inside":
        return False
    marked = any(exists(join(output, name), storage_options) for name in DIPFLOW_FOLDERS)
    if not marked and exists(output, storage_options) and list_files(output, storage_options):
        raise OutputOverlapError(
            f"the output {out} lies inside the source {src} and already holds files that are not a dipflow "
            "output (no report/ folder): they are inputs, which outputs could overwrite; write the outputs to an "
            "empty folder or one outside the source"
        )
    return True


# ---------------------------------------------------------------------------------------------------- redaction


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s?#]+)@")
_QUERY_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&#\s?;]+)=(?P<value>[^&#\s\"'<>;]*)")
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
# The one vocabulary of credentials, for URL query parameters (`redact`) and storage options
# (`split_secret_options`): a name that contains one of the words (access_key_id, X-Amz-Security-Token, sas_token,
# Authorization …), or that is one of the short names, which as substrings would match ordinary words (Azure SAS
# fields such as sig, se, sv). When in doubt, secret: a secret option only stays out of Prefect's parameters.
_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "signature", "auth", "sas")
_SECRET_NAMES = frozenset({"sig", "pwd", "pass", "code", "se", "sv", "sp", "st", "skoid", "sktid"})


def _is_secret_name(name: str) -> bool:
    lowered = unquote(name).lower()
    return lowered in _SECRET_NAMES or any(word in lowered for word in _SECRET_WORDS)


def redact(url_or_text: str) -> str:
    """`url_or_text` with credentials removed: ``user:password@`` in URLs, signing and token query parameters
    (``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``Signature``, ``AWSAccessKeyId``, Azure
    SAS ``sig``/``se``/…, ``token``, ``key``, ``secret``, …) and AWS access key ids. Works on whole messages too."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", str(url_or_text))

    def param(m: re.Match[str]) -> str:
        if _is_secret_name(m["name"]):
            return f"{m['lead']}{m['name']}=***"
        return m.group(0)

    text = _QUERY_PARAM.sub(param, text)
    return _AWS_KEY_ID.sub("***", text)


# ------------------------------------------------------------------------------------------- storage options


def _convert(value: str) -> Any:
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    return value


def parse_storage_options(pairs: list[str] | tuple[str, ...] | None) -> dict:
    """``["anon=true", "client_kwargs.endpoint_url=http://…"]`` → ``{"anon": True, "client_kwargs":
    {"endpoint_url": "http://…"}}``: ``true``/``false`` become bools, integers ints, dotted keys nested dicts.
    Errors name the key, never the value (it may be a secret)."""
    options: dict[str, Any] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise StorageOptionError("a storage option must look like key=value (got one without '=' or a key)")
        path = name.split(".")
        if any(not p for p in path):
            raise StorageOptionError(f"storage option {name!r}: empty part in a dotted key")
        node = options
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise StorageOptionError(f"storage option {name!r}: {'.'.join(path[: i + 1])!r} is already a value")
            node = child
        leaf = path[-1]
        if isinstance(node.get(leaf), dict):
            raise StorageOptionError(f"storage option {name!r} is already a group of options")
        node[leaf] = _convert(value)
    return options


def split_secret_options(options: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """(plain, secret) halves of storage options, nested dicts included, by the names `redact` treats as secret
    (key, secret, token, password, credential, signature, auth, sas …) and by the values it would change (a URL
    with ``user:password@`` or a signed query): the flows keep the secret half out of their parameters, which
    Prefect stores and shows."""
    plain: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            p, s = split_secret_options(value)
            if p:
                plain[name] = p
            if s:
                secret[name] = s
        elif _is_secret_name(name) or (isinstance(value, str) and redact(value) != value):
            secret[name] = value  # a secret name, or a value holding one (an endpoint_url with user:password@)
        else:
            plain[name] = value
    return plain, secret


def url_secrets(urls: Iterable[str | None]) -> dict[str, str]:
    """``{redact(url): url}`` for each of `urls` that holds a credential (``user:password@``, a signed or token
    query, an access key id): the flows take the redacted URLs as parameters, which Prefect stores, and the real
    ones through `flows.storage_credentials`, which it does not. Two URLs that redact alike but differ raise
    `StorageOptionError` (the redacted form could not say which is meant)."""
    out: dict[str, str] = {}
    for url in urls:
        if not url or redact(url) == url:
            continue
        public = redact(url)
        if out.setdefault(public, url) != url:
            raise StorageOptionError(f"two URLs with different credentials redact to the same {public}; use one")
    return out


# --------------------------------------------------------------------------------------------------- listing


def is_image_key(key: str) -> bool:
    """Whether `key` has an image extension (case-insensitive)."""
    return PurePosixPath(key).suffix.lower() in IMAGE_EXTENSIONS


def _split(key: str) -> tuple[str, str]:
    """``"sub/a.png"`` → ``("sub/", "a")``: the folder prefix and the stem."""
    folder, _, name = key.rpartition("/")
    return (f"{folder}/" if folder else ""), PurePosixPath(name).stem


def check_glob(pattern: str) -> None:
    """`ValueError` unless `pattern` is a glob `list_images` can use (relative to the source, well formed)."""
    _glob_regex(pattern)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob relative to the root: ``*`` and ``?`` stay within a segment, ``**`` crosses segments. A pattern that
    is empty, absolute or malformed (``[z-a]``) raises `ValueError`."""
    if not pattern:
        raise ValueError("an empty glob matches nothing; leave --glob out to take every image")
    if pattern.startswith("/"):
        raise ValueError(f"glob {pattern!r} is absolute; globs are relative to the source (e.g. '**/*.png')")
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : end]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    try:
        return re.compile("".join(out) + r"\Z", re.DOTALL)
    except re.error as exc:
        raise ValueError(f"bad glob {pattern!r}: {exc}") from None


_LINK_TO_FOLDER = "symbolic link to a folder: not followed (its files would be listed twice, or without end)"


# ---------------------------------------------------------------------------------------------------- fingerprints

# What each backend's listing says of a file, beyond its size, that changes when the file does (see `fingerprint`).
_BACKEND_KEYS: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = (
    (frozenset({"s3", "s3a"}), ("ETag", "VersionId")),
    (frozenset({"gs", "gcs"}), ("generation", "md5Hash", "etag")),
    (frozenset({"az", "abfs", "abfss"}), ("etag", "last_modified")),
    (frozenset({"http", "https"}), ("ETag", "Content-MD5", "Last-Modified")),
    (frozenset({"memory"}), ("created",)),
)
_LOCAL_KEYS = ("mtime", "ino", "ctime")  # "ctime": fsspec's "created", which is st_ctime (see `fingerprint`)
_ANY_KEYS = tuple(dict.fromkeys([*_LOCAL_KEYS[:2], *(key for _, keys in _BACKEND_KEYS for key in keys)]))
_CTIME = re.compile(r";ctime_ns=\d+")
_LABELS = {
    "mtime": "mtime_ns",
    "ctime": "ctime_ns",
    "ETag": "etag",
    "VersionId": "version",
    "md5Hash": "md5",
    "Content-MD5": "md5",
    "Last-Modified": "last_modified",
}


def _fingerprint_value(key: str, info: Mapping[str, Any]) -> str | None:
    value = info.get("created" if key == "ctime" else key)
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        value = value.timestamp()
    if key in ("mtime", "ctime"):  # float seconds (os.stat's st_mtime as fsspec gives it): nanoseconds to its precision
        return str(round(float(value) * 1e9))
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value).strip('"')


def fingerprint(info: Mapping[str, Any], fs: AbstractFileSystem) -> str | None:
    """A short canonical string of what a listing says of one file (an fsspec info dict, as ``ls``/``find``/``info``
    give it), e.g. ``"size=1234;mtime_ns=1796236351138014000;ino=42"``: equal while the file is untouched, different
    once it is replaced or rewritten — so that a scheduled run can skip what it did before without reading a byte of
    it. None when the info says nothing usable (no size, no tag).

    What each backend gives, and what a user loses where it gives little:

    - local files: size, mtime and ctime (fsspec gives ``st_mtime`` and, as ``created``, ``st_ctime`` as float
      seconds: nanoseconds to about a quarter of a microsecond) and inode; a followed symbolic link, its target's.
      A rewrite in place that keeps the size and puts the old mtime back (``cp -p`` or ``touch -r`` onto the existing
      file, ``rsync -t --inplace``) is seen by its ctime, which no user call sets back; so is a file replaced by a
      rename (an editor's save, plain ``rsync``: a new inode). A copied or restored tree is new throughout (new
      inodes). The ctime also moves when only the file's metadata changes (``chmod``, ``chown``, a new hard link):
      such an image is restored again, a redo, never a miss. Fingerprints recorded before the ctime was part of them
      (``size=…;mtime_ns=…;ino=…``) still match on those fields (`without_ctime`), once: the run records the new one.
    - s3 (s3fs): size, ETag and, on versioned listings, VersionId. The ETag of a single-part upload is the content's
      MD5, of a multipart one a hash of the parts: the same content uploaded in other parts looks changed (a redo,
      never a miss).
    - gs (gcsfs): size, generation (new at every write), md5Hash and etag (which changes with metadata too).
    - az/abfs (adlfs): size, etag and last_modified.
    - http(s): size, ETag, Content-MD5 and Last-Modified, each where the server sends it: a single URL's info does,
      a folder page's scraped links carry none of them (nor a size), so they have no fingerprint — always redone.
      A server that sends only a size: an edit that keeps the size is not seen.
    - memory://: size and creation time (every write makes a new file).
    - other backends: the size and whichever of the keys above the info holds; with the size alone, an edit that
      keeps the size is not seen as a change.
    """
    if _is_local(fs):
        keys = _LOCAL_KEYS
    else:
        protocols = _protocols(fs)
        keys = next((keys for names, keys in _BACKEND_KEYS if protocols & names), _ANY_KEYS)
    parts = [f"size={int(info['size'])}"] if info.get("size") is not None else []
    labels: set[str] = set()
    for key in keys:
        label = _LABELS.get(key, key)
        value = _fingerprint_value(key, info)
        if value is not None and label not in labels:
            labels.add(label)
            parts.append(f"{label}={value}")
    return ";".join(parts) or None


def without_ctime(fingerprint: str | None) -> str | None:
    """A local fingerprint as it was recorded before it held the ctime (its image's, mask's and guide's
    ``;ctime_ns=…`` taken out); None when it holds none (nothing older to match)."""
    if fingerprint is None or ";ctime_ns=" not in fingerprint:
        return None
    return _CTIME.sub("", fingerprint)


def _with_side_inputs(
    image: str | None, mask: str | None, guide: str | None, *, has_mask: bool, has_guide: bool
) -> str | None:
    """The image's fingerprint with its side inputs' (``"<image>|mask:<mask>|guide:<guide>"``): a new mask or guide
    changes the output as a new image does. None when any of them is unknown."""
    if image is None or (has_mask and mask is None) or (has_guide and guide is None):
        return None
    return image + (f"|mask:{mask}" if has_mask else "") + (f"|guide:{guide}" if has_guide else "")


# --------------------------------------------------------------------------------------------------------- walk


@dataclass(frozen=True, slots=True)
class _Found:
    """A file as the listing found it (a followed symbolic link: its target)."""

    size: int
    fingerprint: str | None


_Folder = tuple[str, dict[str, _Found], dict[str, str]]
"""One folder as the walk found it: its key prefix (``""``, ``"sub/"``), key → file for its files (followed links
included) and key → why for its symbolic links not followed, both sorted by key."""


def _link(path: str, real_root: str, fs: AbstractFileSystem) -> tuple[str | None, _Found | None]:
    """(why the symbolic link at `path` is not followed, or None; its target when it is). Followed: a link to a
    file inside the source root. Not: a broken link, a link out of the root (the source would name files it does
    not hold), a link to a folder (a loop, or the same files twice). One ``os.stat`` of the target gives its size and
    its fingerprint."""
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except OSError:
        return "broken symbolic link", None
    if stat.S_ISDIR(st.st_mode):
        return _LINK_TO_FOLDER, None
    if not target.startswith(real_root.rstrip(os.sep) + os.sep):
        return "symbolic link to outside the source: not followed", None
    # As the target's own info (fsspec's "created" is st_ctime): the same fingerprint as the file itself gets.
    info = {"size": st.st_size, "mtime": st.st_mtime, "ino": st.st_ino, "created": st.st_ctime}
    return None, _Found(st.st_size, fingerprint(info, fs))


def _walk(
    fs: AbstractFileSystem, path: str, url: str, *, prune: Callable[[str], bool] | None = None
) -> tuple[str, Iterator[_Folder]]:
    """(the folder the keys are relative to, the folders under `path` one by one, in sorted order, each as soon as it
    is listed). A missing `path` raises `StorageNotFoundError` here, before any folder is listed. A single file as the
    source is a dataset of one, keyed by its name. `prune(prefix)` leaves out a sub-folder (``"out/"``) and all it
    holds. Local symbolic links: see `_link`."""
    _fresh(fs, path)
    with _doing("listing", url, fs):
        if not fs.exists(path):
            if _protocols(fs) & {"http", "https"}:  # a server that refuses (401, 403) looks like one without the file
                raise StorageNotFoundError(
                    f"source does not exist, or is not readable with these credentials: {redact(url)}"
                )
            raise StorageNotFoundError(f"source does not exist: {redact(url)}")
        if fs.isfile(path):
            folder, _, name = path.rstrip("/").rpartition("/")
            if _protocols(fs) & {"http", "https"}:  # the key is the file's name, not its query (a signature, a token)
                name = name.partition("#")[0].partition("?")[0] or "image"
            info = fs.info(path)
            return folder, iter([("", {name: _Found(int(info.get("size") or 0), fingerprint(info, fs))}, {})])
    root = path.rstrip("/")
    real_root = os.path.realpath(root or "/") if _is_local(fs) else ""
    if type(fs).find is not fsspec.AbstractFileSystem.find:
        folders = _found_by_folder(fs, path, root, url, prune)
    else:
        folders = _walk_folders(fs, root, url, prune)
    return root, (_folder(fs, root, real_root, prefix, found) for prefix, found in folders)


def _listing_call(call: Callable[[], T], fs: AbstractFileSystem, url: str) -> T:
    """`call()` (an ``ls`` or a ``find``), transient errors retried, in the listing's own words."""
    with _doing("listing", url, fs):
        try:
            return _retrying(call)
        except (FileNotFoundError, PermissionError, StorageError):  # the listing's own messages (`_doing`)
            raise
        except Exception as exc:  # a listing that fails part-way must not pass for a shorter dataset
            raise StorageError(f"cannot list {redact(url)}: {redact(str(exc)) or type(exc).__name__}") from exc


def _under(name: str, root: str) -> bool:
    return name.startswith(root + "/") or not root  # never a sibling that merely shares the prefix


def _prefix(root: str, folder: str) -> str:
    rel = folder[len(root) :].strip("/")
    return f"{rel}/" if rel else ""


def _walk_folders(
    fs: AbstractFileSystem, root: str, url: str, prune: Callable[[str], bool] | None
) -> Iterator[tuple[str, list[tuple[str, dict]]]]:
    """(key prefix, [(path, info) of each file]) of each folder under `root`, one ``fs.ls`` at a time, depth-first
    with sub-folders in sorted order, each folder yielded as soon as it is listed; only the folders still to visit
    are held.

    This replaces ``fs.find`` for backends without a find of their own (local, sftp, ftp …): fsspec's generic
    find walks with ``on_error="omit"`` and does not pass ``on_error`` down to sub-folders (fsspec 2026.9), so an
    unreadable sub-folder would drop its images without a word; here it raises."""
    stack = [root or "/"]
    while stack:
        folder = stack.pop()
        subfolders, files = [], []
        for info in _listing_call(lambda folder=folder: fs.ls(folder, detail=True), fs, url):
            name = info["name"].rstrip("/")
            if not _under(name, root) or name == folder:
                continue
            if info["type"] != "directory":
                files.append((name, info))
            elif prune is None or not prune(_prefix(root, name)):
                subfolders.append(name)
        yield _prefix(root, folder), files
        stack.extend(sorted(subfolders, reverse=True))


def _found_by_folder(
    fs: AbstractFileSystem, path: str, root: str, url: str, prune: Callable[[str], bool] | None
) -> Iterator[tuple[str, list[tuple[str, dict]]]]:
    """(key prefix, [(path, info) of each file]) of each folder under `root`, in sorted order, from one
    ``fs.find``: backends with a find of their own (s3fs, gcsfs, adlfs; memory:// too) list a whole prefix in the
    fewest requests and raise on a failure. The listing arrives whole (s3fs pages through 1,000 keys a request
    before it returns), so the first folder waits for all of it, and all of it is held until then."""
    found = _listing_call(lambda: fs.find(path, detail=True), fs, url)
    by_folder: dict[str, list[tuple[str, dict]]] = {}
    for name, info in found.items():
        name = name.rstrip("/")
        if not _under(name, root):
            continue
        prefix = _prefix(root, name.rpartition("/")[0])
        if prefix and prune is not None and prune(prefix):
            continue
        by_folder.setdefault(prefix, []).append((name, info))
    del found
    for prefix in sorted(by_folder, key=lambda p: p.split("/")):  # by segments: depth-first, as the walk
        yield prefix, by_folder.pop(prefix)


def _folder(fs: AbstractFileSystem, root: str, real_root: str, prefix: str, found: list[tuple[str, dict]]) -> _Folder:
    files: dict[str, _Found] = {}
    links: dict[str, str] = {}
    for name, info in found:
        rel = name[len(root) :].lstrip("/")
        if info.get("islink") and _is_local(fs):
            why, target = _link(name, real_root, fs)
            if target is not None:
                files[rel] = target
            else:
                links[rel] = str(why)
        elif info.get("type", "file") == "file":
            files[rel] = _Found(int(info.get("size") or 0), fingerprint(info, fs))
    return prefix, dict(sorted(files.items())), dict(sorted(links.items()))


# ------------------------------------------------------------------------------------------------------ listing


@dataclass
class _Lister:
    """What `iter_listing` knows before the first folder: the source, the glob, the side-input rules and the masks
    of `mask_dir`; `folder` turns one folder of the walk into its `Listing`."""

    fs: AbstractFileSystem
    root: str
    glob: str | None
    matcher: re.Pattern[str] | None
    guide_suffix: str | None
    masks_in_dir: dict[str, tuple[str, str, str | None]]  # "<folder><stem>" → (URL, key in the mask folder, fp)
    mask_dir_prefix: str | None  # the mask folder's key prefix when it lies inside the source

    def uri(self, rel: str) -> str:
        return self.fs.unstrip_protocol(f"{self.root}/{rel}")

    def folder(self, files: dict[str, _Found], links: dict[str, str], claims: dict[str, str] | None) -> Listing:
        """The folder's `Listing`. Masks and guides lie beside their image, so one folder holds all they need;
        `claims` (mask-folder key → the greatest key of an image using it) collects the masks that a `mask_dir`
        inside the source lends to images of other folders."""
        by_stem: dict[str, list[str]] = {}  # "<folder><stem>" → image-extension keys, sorted
        for rel in files:
            if is_image_key(rel):
                folder, stem = _split(rel)
                by_stem.setdefault(f"{folder}{stem}", []).append(rel)

        def side_input(folder: str, stem: str, tag: str) -> str | None:
            keys = by_stem.get(f"{folder}{stem}{tag}", [])
            keys = sorted(keys, key=lambda k: (PurePosixPath(k).suffix.lower() != ".png", k))
            return keys[0] if keys else None

        prefix, glob, guide_suffix = self.mask_dir_prefix, self.glob, self.guide_suffix
        listing = Listing()
        claimed: dict[str, str] = {}  # side-input key → reason
        candidates: list[str] = []
        for rel in files:
            folder, stem = _split(rel)
            if prefix is not None and rel.startswith(prefix):
                claimed.setdefault(rel, "in the mask folder")
            elif not is_image_key(rel):
                listing.skipped.append((rel, "not an image extension"))
            elif stem.endswith(MASK_SUFFIX):
                claimed.setdefault(rel, "mask with no matching image")
            elif guide_suffix and stem.endswith(guide_suffix):
                claimed.setdefault(rel, "guide with no matching image")
            elif self.matcher is not None and not self.matcher.match(rel):
                listing.skipped.append((rel, f"does not match glob {glob!r}"))
            else:
                candidates.append(rel)

        for rel in candidates:
            folder, stem = _split(rel)
            mask_key = side_input(folder, stem, MASK_SUFFIX)
            mask, mask_fp = (self.uri(mask_key), files[mask_key].fingerprint) if mask_key else (None, None)
            if mask_key:
                claimed[mask_key] = f"mask of {rel}"
            elif self.masks_in_dir:
                found = self.masks_in_dir.get(f"{folder}{stem}") or self.masks_in_dir.get(stem)
                if found:
                    mask, mask_fp = found[0], found[2]
                    if prefix is not None and claims is not None:
                        key = prefix + found[1]
                        claims[key] = max(claims.get(key, rel), rel)
            guide = guide_fp = None
            if guide_suffix:
                guide_key = side_input(folder, stem, guide_suffix)
                if guide_key:
                    claimed[guide_key] = f"guide of {rel}"
                    guide, guide_fp = self.uri(guide_key), files[guide_key].fingerprint
            fp = _with_side_inputs(
                files[rel].fingerprint, mask_fp, guide_fp, has_mask=mask is not None, has_guide=guide is not None
            )
            listing.images.append(
                ImageEntry(
                    uri=self.uri(rel), key=rel, size=files[rel].size, mask_uri=mask, guide_uri=guide, fingerprint=fp
                )
            )

        for rel, why in links.items():
            if prefix is not None and rel.startswith(prefix):
                listing.skipped.append((rel, why))
            elif self.matcher is not None and not self.matcher.match(rel):
                listing.skipped.append((rel, f"does not match glob {glob!r}"))
            elif is_image_key(rel) or why == _LINK_TO_FOLDER:
                listing.excluded.append((rel, why))
            else:
                listing.skipped.append((rel, why))
        listing.skipped.extend(claimed.items())
        listing.skipped.sort()
        return listing


def iter_listing(
    source: str,
    *,
    glob: str | None = None,
    storage_options: dict | None = None,
    mask_dir: str | None = None,
    guide_suffix: str | None = None,
    exclude: str | None = None,
) -> Iterator[Listing]:
    """`list_images`, one folder of the source at a time: a `Listing` of the images, skipped files and excluded links
    found directly in each folder (keys sorted), folders in sorted order (depth-first: a folder, then its
    sub-folders by name), so that a run can start on the first folder's images while later ones are still listed.
    Folders that hold no file are not yielded. The arguments and every rule are `list_images`'s.

    How soon a folder comes depends on the backend. Local files and other backends without a find of their own (sftp,
    ftp …) are walked one ``ls`` per folder, and a folder is yielded as soon as it is listed; only the folders still
    to visit are held, never the tree's file list. s3, gs and az list the whole prefix in one ``find`` (the fewest
    requests; s3fs pages through 1,000 keys a request before it returns), and memory:// in one pass over its store
    (its ``ls`` scans the whole store each time), so there the first folder waits for the whole listing.

    A folder that cannot be listed raises where it is met (never a shorter dataset); a missing source, a bad glob
    and a `mask_dir` that cannot be listed raise at the call, before any folder. `exclude`'s folder inside the
    source is not even listed where the source is walked.

    One difference from `list_images`: the files of a `mask_dir` that lies inside the source are skipped "in the
    mask folder" in their own folder's `Listing` (the images that use one, in other folders, name it in their
    `ImageEntry.mask_uri`); `list_images`, which sees every folder, says "mask of <key>" for those.
    """
    return _chunks(
        source,
        glob=glob,
        storage_options=storage_options,
        mask_dir=mask_dir,
        guide_suffix=guide_suffix,
        exclude=exclude,
        claims=None,
    )


def _excluded(exclude: str | None, source: str, storage_options: dict | None) -> Callable[[str], bool] | None:
    """Whether a folder of the source (its key prefix, ``"out/"``) lies in `exclude`, when that lies inside the
    source: the run's own outputs, reports and thumbnails are never listed."""
    if exclude is None or overlap(exclude, source, storage_options) != "inside":
        return None
    own = _place(exclude, storage_options)[1][len(_place(source, storage_options)[1].rstrip("/")) + 1 :] + "/"
    folds = folds_case(source, storage_options)
    return lambda prefix: (fold(prefix) if folds else prefix).startswith(own)


def _chunks(
    source: str,
    *,
    glob: str | None,
    storage_options: dict | None,
    mask_dir: str | None,
    guide_suffix: str | None,
    exclude: str | None,
    claims: dict[str, str] | None,
) -> Iterator[Listing]:
    """`iter_listing`; `claims`, where given, collects the masks that a `mask_dir` inside the source lends (see
    `_Lister.folder`)."""
    fs, path = filesystem(source, storage_options)
    root, folders = _walk(fs, path, source, prune=_excluded(exclude, source, storage_options))

    # Side-input folder: listed whole, up front; inside the source, its files are excluded from the images.
    masks_in_dir: dict[str, tuple[str, str, str | None]] = {}
    mask_dir_prefix: str | None = None
    if mask_dir is not None:
        mfs, mpath = filesystem(mask_dir, storage_options)
        mroot, mfolders = _walk(mfs, mpath, mask_dir)
        if type(mfs) is type(fs) and mroot.startswith(root + "/"):
            mask_dir_prefix = mroot[len(root) + 1 :] + "/"
        for _, mfiles, _ in mfolders:  # each folder's keys sorted, and a stem is only ever met within one folder
            for rel, found in mfiles.items():
                if is_image_key(rel):
                    folder, stem = _split(rel)
                    stem = stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) else stem
                    url = mfs.unstrip_protocol(f"{mroot}/{rel}")
                    masks_in_dir.setdefault(f"{folder}{stem}", (url, rel, found.fingerprint))

    matcher = _glob_regex(glob) if glob is not None else None
    lister = _Lister(fs, root, glob, matcher, guide_suffix, masks_in_dir, mask_dir_prefix)
    return (lister.folder(files, links, claims) for _, files, links in folders if files or links)


def list_images(
    source: str,
    *,
    glob: str | None = None,
    storage_options: dict | None = None,
    mask_dir: str | None = None,
    guide_suffix: str | None = None,
    exclude: str | None = None,
) -> Listing:
    """The images under `source` (any fsspec URL, recursive, sorted by key) with their side inputs.

    - `glob` (relative to the source, e.g. ``"*.png"``, ``"**/*.jpg"``, ``"val/*"``) selects images; side inputs
      are matched among all files.
    - Masks: ``<stem>_mask.<ext>`` beside the image, or in `mask_dir` a file at the image's relative folder named
      ``<stem>.<ext>`` or ``<stem>_mask.<ext>`` (at the folder or at `mask_dir`'s top). Files named ``*_mask.*`` are
      never images; a `mask_dir` inside the source contributes no images.
    - Guides: with `guide_suffix` (e.g. ``"_flash"``), ``<stem><guide_suffix>.<ext>`` beside ``<stem>.<ext>`` is that
      image's guide, not an image of its own.

    Every file that is not an image is in `Listing.skipped` with the reason. Symbolic links (local sources) to
    files inside the source are followed; the others — broken, out of the source, to a folder — are in
    `Listing.excluded` with the reason when they look like images (an image extension, or a folder), so that the
    run reports them, else in `Listing.skipped`. A missing source raises `StorageNotFoundError`.

    `exclude` (the run's output root) names a folder whose files are left out altogether when it lies inside the
    source: they are the run's own outputs, reports and thumbnails, never inputs nor "not images".

    Each image carries its `fingerprint` (with its mask's and guide's) from the listing alone. This is the merge of
    `iter_listing`'s folders; a run that wants to start before the whole source is listed takes those instead.
    """
    claims: dict[str, str] = {}
    merged = Listing()
    chunks = _chunks(
        source,
        glob=glob,
        storage_options=storage_options,
        mask_dir=mask_dir,
        guide_suffix=guide_suffix,
        exclude=exclude,
        claims=claims,
    )
    for chunk in chunks:
        merged.images.extend(chunk.images)
        merged.skipped.extend(chunk.skipped)
        merged.excluded.extend(chunk.excluded)
    merged.images.sort(key=lambda entry: entry.key)
    merged.skipped = sorted((key, f"mask of {claims[key]}" if key in claims else why) for key, why in merged.skipped)
    merged.excluded.sort()
    return merged
