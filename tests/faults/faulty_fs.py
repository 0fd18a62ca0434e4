"""``faulty://``: a filesystem (the local one, or any fsspec target such as the moto S3 server) with storage faults
injected by rule, for the fault suite.

A rule is a dict: ``op`` ("list", "read" or "write"), ``path`` (an fnmatch pattern of the protocol-less path),
``error`` (a key of `ERRORS`) and ``times`` (how many matching calls fail; absent: every one). Rules travel in the
storage options (``{"faults": [...]}``), so every `pipelines.storage` call of a run sees them; fsspec caches one
instance per options, which keeps the counts for the run's process (the suite runs these cases inline).

``target_protocol`` and ``target_options`` (storage options too) say what lies beneath: ``faulty:///tmp/x`` over
``file``, ``faulty://bucket/key`` over ``s3``. Writes take the path of filesystems without atomic PUT (a hidden
temporary sibling, then ``mv``), so a fault between the two shows whether a partial file can be left behind.
"""

from __future__ import annotations

import errno
import fnmatch
from typing import Any

import fsspec
from fsspec import AbstractFileSystem


def _throttled() -> OSError:
    return OSError(errno.EBUSY, "SlowDown: Please reduce your request rate (HTTP 503)")


# What real stores raise, as fsspec backends surface it.
ERRORS = {
    "reset": lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "throttle": _throttled,
    "server": lambda: OSError(errno.EIO, "InternalError: We encountered an internal error (HTTP 500)"),
    "full": lambda: OSError(errno.ENOSPC, "No space left on device"),
    "denied": lambda: PermissionError(errno.EACCES, "Access Denied"),
}


class FaultyFileSystem(AbstractFileSystem):
    protocol = "faulty"
    root_marker = "/"

    def __init__(
        self,
        faults: list[dict[str, Any]] | tuple = (),
        target_protocol: str = "file",
        target_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.faults = [dict(rule) for rule in faults]
        self.inner = fsspec.filesystem(target_protocol, **(target_options or {}))

    def _inject(self, op: str, path: str) -> None:
        for rule in self.faults:
            if rule["op"] == op and fnmatch.fnmatchcase(path, rule["path"]):
                left = rule.get("times")
                if left is None or left > 0:
                    if left is not None:
                        rule["times"] = left - 1
                    raise ERRORS[rule["error"]]()

    # listing
    def ls(self, path: str, detail: bool = True, **kwargs: Any):
        self._inject("list", path)
        return self.inner.ls(path, detail=detail, **kwargs)

    def info(self, path: str, **kwargs: Any):
        return self.inner.info(path, **kwargs)

    def invalidate_cache(self, path: str | None = None) -> None:
        self.inner.invalidate_cache(path)

    # reading
    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        self._inject("read", path)
        return self.inner.cat_file(path, start=start, end=end, **kwargs)

    # writing
    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        self._inject("write", path)
        self.inner.pipe_file(path, value, **kwargs)

    def mv(self, path1: str, path2: str, **kwargs: Any) -> None:
        self._inject("write", path2)
        self.inner.mv(path1, path2, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.inner.makedirs(path, exist_ok=exist_ok)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.inner.mkdir(path, create_parents=create_parents, **kwargs)

    def rm_file(self, path: str) -> None:
        self.inner.rm_file(path)

    def _rm(self, path: str) -> None:
        self.inner.rm_file(path)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any):
        self._inject("read" if "r" in mode else "write", path)
        if "r" not in mode:
            self.inner.makedirs(self._parent(path), exist_ok=True)
        return self.inner._open(path, mode=mode, **kwargs)


def register() -> None:
    """Make ``faulty://`` known to fsspec in this process."""
    fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
