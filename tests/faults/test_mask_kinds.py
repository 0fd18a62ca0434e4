"""Every kind of mask (issue 25, item 9), in a mask folder on local files and the moto S3 server: a grey mask at any
depth and an RGB one whose channels agree restore their image; an all-black mask, a coloured one, a mask that is no
image and a missing one give the image a readable error row before its fit, and leave the others."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
from invariants import Outcome, check_outputs, check_rows
from PIL import Image

import dipcore
from pipelines import storage
from pipelines.reporting import reports

FAST = {"preset": "fast", "iterations": 2, "channels": 4}
INLINE = {"executor": "inline"}

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _half() -> np.ndarray:
    m = np.full((16, 16), 255, np.uint8)
    m[:, :8] = 0
    return m


def _encode(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    image = Image.fromarray(array)
    buf = io.BytesIO()
    (image.convert(mode) if mode else image).save(buf, fmt)
    return buf.getvalue()


def _red() -> np.ndarray:
    m = np.zeros((16, 16, 3), np.uint8)
    m[4:12, 4:12, 0] = 255
    return m


@dataclass(frozen=True)
class MaskCase:
    name: str  # the image's key; its mask is <mask folder>/<name> (None: no mask)
    what: str
    mask: bytes | None
    expect: Literal["ok", "error"]
    says: str = ""  # what the error row must say


MASKS = (
    MaskCase("one-bit.png", "a 1-bit mask", _encode(_half(), "1"), "ok"),
    MaskCase("grey8.png", "an 8-bit grey mask", _encode(_half()), "ok"),
    MaskCase("grey16.png", "a 16-bit grey mask", _encode(_half().astype(np.uint16) * 257), "ok"),
    MaskCase("rgb-grey.png", "a grey mask saved as RGB", _encode(np.stack([_half()] * 3, -1)), "ok"),
    MaskCase("rgb-jpeg.jpg", "a grey mask saved as RGB JPEG", _encode(np.stack([_half()] * 3, -1), fmt="JPEG"), "ok"),
    MaskCase("black.png", "an all-black mask", _encode(np.zeros((16, 16), np.uint8)), "error", "all black"),
    MaskCase("red.png", "a coloured mask", _encode(_red()), "error", "in colour"),
    MaskCase("broken.png", "a mask that is no image", b"\x89PNG\r\n\x1a\nnot a mask", "error", "its mask broken.png"),
    MaskCase("missing.png", "no mask", None, "error", "in a mask folder (--mask-dir)"),
)


@pytest.mark.slow
def test_every_kind_of_mask_ends_in_one_readable_row(where, ledger):
    from pipelines import flows

    root, so = where  # conftest: a local folder, then a prefix on the moto S3 server
    backend = "local" if so is None else "s3"
    image = dipcore.encode_png(np.random.default_rng(0).random((16, 16, 3)).astype(np.float32))
    for case in MASKS:
        storage.write_bytes_atomic(f"{root}/src/{case.name}", image, so)
        if case.mask is not None:
            storage.write_bytes_atomic(f"{root}/masks/{case.name}", case.mask, so)
    summary = flows.restore_dataset(
        f"{root}/src",
        f"{root}/out",
        {"task": "inpaint", **FAST},
        selection={"mask_dir": f"{root}/masks"},
        execution=INLINE,
        storage_options=so,
    )
    rows = reports.read_report(f"{root}/out", so, run_id=summary["run_id"]).to_pylist()
    check_outputs(Outcome("", "", "", ""), f"{root}/out", rows, so)
    for case in MASKS:
        outcome = Outcome(f"mask: {case.what}", "mask", backend, f"an inpainting job whose mask is {case.what}")
        mine = [r for r in rows if r["image_key"] == case.name]
        check_rows(outcome, {case.name}, mine, expect={case.name: case.expect})
        for row in mine:
            if row["status"] == "error" and (case.says not in row["error"] or row["iterations_run"] is not None):
                outcome.fail("expected_missed", f"{case.name}: {row['error']!r} (a fit ran, or not {case.says!r})")
            elif row["status"] == "error":
                outcome.notes.append(row["error"])
        check_outputs(outcome, f"{root}/out", [*mine, *(r for r in rows if r["image_key"] != case.name)], so)
        ledger(outcome)
