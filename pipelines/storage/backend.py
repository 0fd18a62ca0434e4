"""The filesystem behind a URL (fsspec), and what every storage call shares: the store's refusals and failures in
our words (`_doing`), listings fresh from the store (`_fresh`), transient errors retried (`_retrying`)."""

from __future__ import annotations

import contextlib
import errno
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipelines.errors import StorageAccessError, StorageError
from pipelines.storage.keys import _CONTROL
from pipelines.storage.secrets import redact

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


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
