"""Typed errors of pipelines, under one root: callers catch `PipelineError` (or one of its kinds) by type and show its
message, which says what went wrong and what to do — as Ray's ``RayError`` and dipcore's ``DipcoreError`` do.

Errors that also mean what a built-in exception means derive from it too (a missing file is a ``FileNotFoundError``, a
bad value a ``ValueError``), so code that catches the built-in keeps working. Each is re-exported by the module that
raises it (``storage.StorageError``, ``reports.SchemaMismatchError``, ``workers.WorkerStartError``,
``cli.CLIError``). Imports nothing: the CLI loads it before any command runs.
"""

from __future__ import annotations

__all__ = [
    "CLIError",
    "ForeignOutputError",
    "LeaseHeldError",
    "LeaseLostError",
    "LocalPathError",
    "OutputOverlapError",
    "PipelineError",
    "RayConnectError",
    "SchemaMismatchError",
    "StorageAccessError",
    "StorageError",
    "StorageNotFoundError",
    "StorageOptionError",
    "UnsafeKeyError",
    "UsageError",
    "WorkerStartError",
]


class PipelineError(Exception):
    """Base class of every error pipelines raises on purpose."""

    exit_code = 1
    """What the ``dipflow`` command exits with when this error ends it (its exit codes: `pipelines.cli`)."""


class CLIError(PipelineError):
    """A command line the user can fix; the message says how."""


class UsageError(CLIError, ValueError):
    """A command line that is wrong before anything is read or run (a bad option value, options that do not go
    together): the command exits 2, as argparse does, before any engine starts."""


class StorageError(PipelineError):
    """A storage problem worth one clear message (the URL in it is redacted)."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """A source, file or folder that does not exist."""


class StorageAccessError(StorageError, PermissionError):
    """The store refused an operation (wrong or missing credentials, a policy, file permissions); the message
    names the operation, the URL (redacted) and what to check."""


class UnsafeKeyError(StorageError, ValueError):
    """A relative key that could escape the output root (``..``, absolute, encoded separators, …)."""


class StorageOptionError(StorageError, ValueError):
    """A malformed ``--storage-option key=value``."""


class OutputOverlapError(StorageError, ValueError):
    """An output that would overwrite what is not the run's own: an output root equal to its source, a source (or
    mask folder) inside the output root, an output file on its own input. Refused before anything runs."""


class ForeignOutputError(StorageError):
    """A file stands where an image's output goes, and it is not the output root's own (`pipelines.ownership`): it
    is not replaced; the image gets an error row (``--overwrite`` replaces it)."""


class LeaseHeldError(PipelineError):
    """Another run holds the output root's lease (`pipelines.lease`): one writer per output root. The message names
    the holder and how to override a lease left by a run that died."""


class LeaseLostError(PipelineError):
    """Another run took over the output root's lease while this run held it (its heartbeat had gone stale, or
    ``--break-lease``): this run stopped writing to the output root. The message names the new holder. The
    command exits 4: the output root is that run's now, and there is nothing of this run's to resume."""

    exit_code = 4


class LocalPathError(PipelineError, ValueError):
    """A local path given to a run whose Ray workers may run on other machines (a cluster of several nodes, or Ray
    Client): each would read and write its own disk. The message suggests object storage, or declaring the path
    shared. The command exits 2, as for a usage error: nothing was restored."""

    exit_code = 2


class SchemaMismatchError(PipelineError, ValueError):
    """Report rows whose columns or values do not fit the pinned schema."""


class WorkerStartError(PipelineError, RuntimeError):
    """No worker could start (no resources of the requested kind, or the actor fails in its constructor)."""


class RayConnectError(PipelineError, ConnectionError):
    """The Ray cluster a run was given cannot be joined within the connect timeout (nothing listens there, a wrong
    token, no head found for ``auto``): refused before anything is written; the message names the address, what
    was tried and what to check."""
