"""What a mask may be (issue 25, item 9): grey at any depth (1-bit included), or RGB whose channels agree; refused
with a clear error row: a mask without a known pixel (all black) and a coloured one. A missing mask names the files
it was looked for under, a mask folder included."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import dipcore
from dipcore.observation import binary_mask
from pipelines import cli
from pipelines.reporting import reports

CLI_FAST = ["--task", "inpaint", "--preset", "fast", "--iterations", "2", "--channels", "4", "--quiet"]


def _save(path, array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path, fmt)


def _half(h: int = 16, w: int = 16) -> np.ndarray:
    m = np.full((h, w), 255, np.uint8)
    m[:, : w // 2] = 0
    return m


def test_restore_cli_takes_grey_masks_and_refuses_black_and_coloured_ones(
    ray_local, prefect_harness, tmp_path, write_images, capsys
):
    src, masks, out = tmp_path / "src", tmp_path / "masks", tmp_path / "out"
    write_images(str(src), ["bit.png", "rgb.png", "black.png", "colour.png", "none.png"], size=16)
    _save(masks / "bit.png", _half(), "1")  # a 1-bit mask
    _save(masks / "rgb.png", np.stack([_half()] * 3, axis=-1))  # grey saved as RGB: the channels agree
    _save(masks / "black.png", np.zeros((16, 16), np.uint8))
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = 255  # a red drawing
    _save(masks / "colour.png", colour)
    code = cli.main(["restore", str(src), "-o", str(out), "--mask-dir", str(masks), *CLI_FAST])
    assert code == cli.EXIT_FAILED_IMAGES
    rows = {r["image_key"]: r for r in reports.read_report(str(out)).to_pylist()}
    assert {k: r["status"] for k, r in rows.items()} == {
        "bit.png": "ok",
        "rgb.png": "ok",
        "black.png": "error",
        "colour.png": "error",
        "none.png": "error",
    }
    assert "its mask black.png: the mask is all black" in rows["black.png"]["error"]
    assert "its mask colour.png: the mask is in colour" in rows["colour.png"]["error"]
    assert "none.<ext> or none_mask.<ext> at its place in a mask folder (--mask-dir)" in rows["none.png"]["error"]
    assert "pass a mask folder" not in capsys.readouterr().err
    assert all(rows[k]["iterations_run"] is None for k in ("black.png", "colour.png", "none.png"))  # no fit


def test_binary_mask_rules():
    half = _half()
    assert binary_mask(half).tolist() == (half > 127).astype(np.float32).tolist()
    assert binary_mask(half.astype(np.uint16) * 257).sum() == 128  # 16-bit grey
    buf = io.BytesIO()
    Image.fromarray(np.stack([half] * 3, axis=-1)).save(buf, "JPEG", quality=75)  # colour noise on a grey mask
    assert binary_mask(dipcore.decode_image(buf.getvalue())).sum() == pytest.approx(128, abs=8)
    with pytest.raises(dipcore.ConfigError, match="all black"):
        binary_mask(np.zeros((4, 4), np.uint8))
    with pytest.raises(dipcore.ConfigError, match="in colour"):
        binary_mask(np.stack([half, half, np.zeros_like(half)], axis=-1))
    with pytest.raises(dipcore.ConfigError, match="all black"):
        dipcore.restore(np.zeros((16, 16, 3), np.float32), task="inpaint", mask=np.zeros((16, 16)), iterations=1)
