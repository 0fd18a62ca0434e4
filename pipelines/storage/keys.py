"""Keys that cannot leave the root they are joined to: `safe_key` refuses every way out (``..``, absolute paths,
encoded separators, characters that fold to ``/``), `join` and `output_uri` build URLs from checked keys."""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath
from urllib.parse import unquote

from pipelines.errors import UnsafeKeyError

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
