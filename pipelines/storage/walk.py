"""The walk of a source, folder by folder (`_walk`): one ``find`` where the backend has its own, else one ``ls`` per
folder; each file with its size and fingerprint; local symbolic links followed only to files inside the source."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import fsspec

from pipelines.errors import StorageError, StorageNotFoundError
from pipelines.storage.backend import T, _doing, _fresh, _is_local, _protocols, _retrying
from pipelines.storage.fingerprints import fingerprint
from pipelines.storage.secrets import redact

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

_LINK_TO_FOLDER = "symbolic link to a folder: not followed (its files would be listed twice, or without end)"


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
