"""Datasets and outputs through fsspec: listing, reading, atomic writing, keys that stay inside the output root.

This package is the only part of the project that imports fsspec; everything else passes URI strings (any fsspec
URL: a local path, ``file://``, ``s3://``, ``gs://``, ``az://``, ``memory://``, ``https://`` …) plus an optional
``storage_options`` dict that goes to the filesystem unchanged. ``storage_options`` values are never logged or put in
an error message; URLs are passed through `redact` before they are.

Callers use the names below (``from pipelines import storage; storage.read_bytes(…)``); each lives in one module:
`secrets` (redaction, secret options), `backend` (the filesystem of a URL, errors in our words, retries), `keys`
(keys that cannot leave their root), `paths` (where a URL lies, where an output root may lie), `io` (reading and
writing whole files), `fingerprints`, `globs`, `walk` (a source folder by folder) and `listing` (images and side
inputs). A test that patches one of them patches it in its home module (``storage.backend.RETRY_PAUSES``), where
its callers look it up.
"""

from pipelines.errors import (
    OutputOverlapError,
    StorageAccessError,
    StorageError,
    StorageNotFoundError,
    StorageOptionError,
    UnsafeKeyError,
)
from pipelines.pairing import MASK_SUFFIX
from pipelines.storage.backend import check_url, exists, filesystem, is_transient
from pipelines.storage.fingerprints import fingerprint, without_ctime
from pipelines.storage.globs import check_glob
from pipelines.storage.io import (
    check_source,
    check_writable,
    create_exclusive,
    list_files,
    open_output,
    read_bytes,
    read_head,
    remove_file,
    sha256_hex,
    write_bytes_atomic,
)
from pipelines.storage.keys import join, output_uri, safe_key
from pipelines.storage.listing import IMAGE_EXTENSIONS, ImageEntry, Listing, is_image_key, iter_listing
from pipelines.storage.paths import (
    DIPFLOW_FOLDERS,
    absolute,
    check_output_root,
    fold,
    folds_case,
    is_local,
    name_check,
    overlap,
)
from pipelines.storage.secrets import parse_storage_options, redact, split_secret_options, url_secrets

__all__ = [
    "DIPFLOW_FOLDERS",
    "IMAGE_EXTENSIONS",
    "MASK_SUFFIX",
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
    "check_source",
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
    "is_transient",
    "iter_listing",
    "join",
    "list_files",
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
