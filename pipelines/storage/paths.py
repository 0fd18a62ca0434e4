"""Where a URL lies: on this machine or not (`is_local`, `absolute`), what names its store can hold (`name_check`),
how two locations relate (`overlap`, with the filesystem's case folding) and so where an output root may lie
(`check_output_root`: never the source, never around it)."""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Callable, Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipelines.errors import OutputOverlapError
from pipelines.storage.backend import _is_local, _protocols, exists, filesystem
from pipelines.storage.io import list_files
from pipelines.storage.keys import join
from pipelines.storage.secrets import redact


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
    inputs). Returns whether the output lies inside the source — then `iter_listing(…, exclude=output)` must leave
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
