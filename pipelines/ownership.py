"""Whose is a file at an output's place: a run never replaces a file that is not its output root's own.

An output root's own files are the outputs dipflow runs wrote into it. A run knows them two ways:

- **The done-state** (`pipelines.reporting.state`) records every image restored into the root. A job whose key the
  state holds for its dataset (under any settings, `DoneState.owns`) replaces its output without looking: the common
  case of a changed input, and the only way to know outputs written before outputs carried a mark.
- **The file itself.** Every output PNG carries a ``tEXt`` chunk ``dipflow`` naming the output root's id
  (``_dipflow/root-id``, made once by the root's first run) and the output's path under the root (`mark`). A file at
  an output's place that the state does not record is the root's own if and only if it carries that mark.

Why a mark and not the state alone: the output is written before its state row (the row says the output is there),
so a crash between the two leaves an output the state does not know; the next run must still replace it. The mark
is written in the same atomic write as the output, so at every crash point the file says whose it is: absent (the
write had not happened), or present and marked. A claim journal written before each output would also survive the
crash, but it would claim a foreign file that the write then finds, unless it also recorded what was to be written
and the next run read the file back to compare — a read either way, plus one more write per image. The mark costs no
request: it is read only where a file stands at an output's place that the state does not record (a crash's
leftover, or a file that is not the run's). An output in another format than PNG carries no mark; the state alone
then says it is the root's.

Why an error row and not a refusal of the whole run: a nightly run over 10⁶ images should not stop for one foreign
file. The job looks before its fit (`check_free`, in the worker: one existence check per job run, none for images
done earlier), so the image costs no fit; it gets an ``error`` row naming the file and ``--overwrite``, the run ends
with failed images (exit 3), and the next run tries it again. ``--overwrite`` (`Owner.overwrite`) replaces such files.

The write (`write_output`): a new output is created exclusively (`storage.create_exclusive`: a hard link of a complete
file locally, ``If-None-Match: *`` on S3), so a file that appears between the look and the write is never replaced;
a file already there is replaced (atomically, `storage.write_bytes_atomic`) only after its mark was read as ours.
Between that read and the replacement another writer could still put a file there: only a foreign process writing
into the output root during the run, which the lease (`pipelines.lease`) cannot keep out; no store gives a
conditional replacement on every backend.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines import storage
from pipelines.errors import ForeignOutputError

__all__ = ["KEYWORD", "Output", "Owner", "check_free", "mark", "marked", "root_id", "write_output"]

KEYWORD = "dipflow"
"""The PNG text chunk's keyword."""


class Output(Protocol):
    """What this module reads of a job (`pipelines.jobs.Job`): planning builds on ownership, not the reverse."""

    key: str
    output_uri: str
    provenance: str | None
    replace: bool


_PNG = b"\x89PNG\r\n\x1a\n"
_AFTER_IHDR = len(_PNG) + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC


def root_id(output_root: str, storage_options: dict | None = None) -> str:
    """The output root's id (``_dipflow/root-id``), made by the first run that asks (exclusively: two runs racing
    both get the one that was written first). It travels with the root when the root is copied or moved."""
    uri = storage.join(output_root, "_dipflow", "root-id")
    if storage.exists(uri, storage_options):
        return storage.read_bytes(uri, storage_options).decode("ascii").strip()
    storage.create_exclusive(uri, uuid.uuid4().hex.encode("ascii"), storage_options)
    return storage.read_bytes(uri, storage_options).decode("ascii").strip()


@dataclass(frozen=True)
class Owner:
    """A run's output root as its jobs need it: where it is, its id, and whether the run may replace files that are
    not the root's own (``--overwrite``)."""

    root: str
    id: str
    overwrite: bool = False

    def provenance(self, output_uri: str) -> str:
        """The mark of the output at `output_uri` (a URL under `root`)."""
        rel = output_uri[len(self.root.rstrip("/")) :].lstrip("/")
        return json.dumps({"root": self.id, "output": rel}, sort_keys=True)  # ASCII: a tEXt chunk holds Latin-1


def mark(data: bytes, provenance: str) -> bytes:
    """PNG bytes with a ``tEXt`` chunk `KEYWORD` = `provenance` right after the header (the encoder's bytes kept as
    they are; Pillow's own chunk writer makes the chunk). Other formats come back unchanged (see the module)."""
    if not data.startswith(_PNG) or data[12:16] != b"IHDR":
        return data
    from PIL import PngImagePlugin

    chunk = io.BytesIO()
    PngImagePlugin.putchunk(chunk, b"tEXt", KEYWORD.encode("latin-1") + b"\0" + provenance.encode("latin-1"))
    return data[:_AFTER_IHDR] + chunk.getvalue() + data[_AFTER_IHDR:]


def marked(data: bytes) -> dict[str, Any] | None:
    """The mark of a file's bytes (None: not a PNG, or no dipflow mark)."""
    if not data.startswith(_PNG):
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            text = im.info.get(KEYWORD)
        found = json.loads(text) if isinstance(text, str) else None
    except Exception:  # noqa: BLE001 - a file that cannot be read as a marked PNG is not marked
        return None
    return found if isinstance(found, dict) else None


def _foreign(job: Output) -> ForeignOutputError:
    return ForeignOutputError(
        f"{job.key}: its output {storage.redact(job.output_uri)} is already there and is not this output root's "
        "(no run into the root wrote it); it is left as it is — move it away, or pass --overwrite to replace it"
    )


def _check_ours(job: Output, so: dict | None) -> None:
    try:
        found = marked(storage.read_bytes(job.output_uri, so))
    except storage.StorageNotFoundError:
        return  # gone since: nothing to replace
    if found != json.loads(job.provenance or "null"):
        raise _foreign(job)


def check_free(job: Output, storage_options: dict | None = None) -> None:
    """Raise `ForeignOutputError` when the job's output place holds a file that is not the root's own: what a
    worker asks before the fit, so that such an image costs no fit. A job without provenance (a tool's, outside a
    flow) or allowed to replace (`Job.replace`) is not looked at."""
    if job.provenance is None or job.replace or not storage.exists(job.output_uri, storage_options):
        return
    _check_ours(job, storage_options)


def write_output(job: Output, data: bytes, storage_options: dict | None = None) -> None:
    """Write the job's output, marked, without replacing a file that is not the root's own (see the module)."""
    if job.provenance is None:
        storage.write_bytes_atomic(job.output_uri, data, storage_options)
        return
    data = mark(data, job.provenance)
    if not job.replace:
        if storage.create_exclusive(job.output_uri, data, storage_options):
            return
        _check_ours(job, storage_options)
    storage.write_bytes_atomic(job.output_uri, data, storage_options)
