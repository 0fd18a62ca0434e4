"""Globs relative to a source (``*`` and ``?`` within a segment, ``**`` across): what ``--glob`` selects."""

from __future__ import annotations

import re


def check_glob(pattern: str) -> None:
    """`ValueError` unless `pattern` is a glob `iter_listing` can use (relative to the source, well formed)."""
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
