"""Storage credentials kept out of a flow's parameters (Prefect stores and shows those): options merged into the
flows run inside `storage_credentials`, and redacted URLs swapped back for the real ones on a flow's entry."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from pipelines import storage

_SECRETS: ContextVar[dict | None] = ContextVar("dipflow_storage_credentials", default=None)
_URLS: ContextVar[dict[str, str] | None] = ContextVar("dipflow_storage_urls", default=None)


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for name, value in b.items():
        out[name] = (
            _merge(out[name], value) if isinstance(out.get(name), Mapping) and isinstance(value, Mapping) else value
        )
    return out


@contextlib.contextmanager
def storage_credentials(options: Mapping[str, Any] | None, urls: Mapping[str, str] | None = None) -> Iterator[None]:
    """Storage options merged into those of flows run inside this block, without becoming flow parameters; and
    `urls`, ``{redacted URL: real URL}`` (`storage.url_secrets`): a flow given a redacted URL as a parameter uses
    the real one."""
    token, url_token = _SECRETS.set(dict(options or {})), _URLS.set(dict(urls or {}))
    try:
        yield
    finally:
        _SECRETS.reset(token)
        _URLS.reset(url_token)


def real_url(url: str | None) -> str | None:
    """The URL a redacted parameter stands for (`storage_credentials`); a URL still redacted is refused."""
    if url is None:
        return None
    real = (_URLS.get() or {}).get(url, url)
    if real == url and "***" in url and storage.redact(url) == url:
        raise storage.StorageOptionError(
            f"{url} is a redacted URL: pass the real one with flows.storage_credentials(urls=storage.url_secrets([…]))"
        )
    return real


def merged_options(parameters: Mapping[str, Any] | None) -> dict | None:
    merged = _merge(parameters or {}, _SECRETS.get() or {})
    return merged or None
