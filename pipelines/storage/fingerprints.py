"""What a listing says of a file that changes when the file does (`fingerprint`, per backend): a run compares it with
the last one's to skip what is unchanged, without reading a byte."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipelines.storage.backend import _is_local, _protocols

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

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
