"""Credentials kept out of sight: `redact` for URLs and messages, storage options parsed from ``key=value`` and split
into their plain and secret halves, and the URLs that hold a credential. One vocabulary of secret names for all."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from pipelines.errors import StorageOptionError

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
