"""What goes in comes back: every mode Pillow reads (`image_modes.modes`: 8/16-bit grey, grey+alpha, RGB, RGBA,
palette + tRNS, 16-bit TIFF, with and without an ICC profile; CMYK, float TIFF and EXIF where something cannot be
kept) through the user's paths — ``dipflow restore`` over a dataset of them all, ``dipflow restore-image`` to every
format its ``-o`` names — each output held to the input's depth, grey or colour, alpha samples and ICC profile, or
to a note that says what it could not keep."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from image_modes import SRGB, fidelity_problems, modes
from invariants import Outcome, check_rows
from PIL import Image

import dipcore
from pipelines import cli, storage
from pipelines.reporting import reports

FIT = ["--iterations", "2", "--channels", "4", "--quiet"]
MODES = {m.key: m for m in modes()}


@pytest.mark.parametrize("key", list(MODES))
def test_every_mode_is_written_back_like_its_input_without_the_fit(key):
    mode = MODES[key]
    decoded = dipcore.decode_with_info(mode.data, name=key)
    encoded = dipcore.encode_like(decoded.image, decoded.info)
    assert fidelity_problems(mode, encoded.data, "; ".join(encoded.notes) or None) == []
    if mode.note is None:  # what was read is written: the same samples, bit for bit, at 8 or 16 bits
        assert np.array_equal(dipcore.decode_with_info(encoded.data).image, decoded.image)


def test_the_check_finds_what_an_8bit_png_loses():
    mode = MODES["rgba16-icc.png"]
    flat = dipcore.encode_png(dipcore.decode_image(mode.data))  # what dipflow wrote before
    assert fidelity_problems(mode, flat, None) == [
        "8-bit colour output",
        "ICC profile not kept",
        "alpha samples changed",
    ]


@pytest.mark.parametrize(
    ("ext", "magic", "note"),
    [
        ("png", b"\x89PNG", None),
        ("tif", b"II*\x00", None),
        ("jpg", b"\xff\xd8\xff", "JPEG holds 8 bits per channel: 16-bit samples written as 8-bit; JPEG has no alpha"),
        ("webp", b"RIFF", "WebP holds 8 bits per channel: 16-bit samples written as 8-bit"),
    ],
)
def test_restore_image_writes_the_format_its_extension_names(tmp_path, capsys, ext, magic, note):
    mode = MODES["rgba16-icc.png"]
    src, out = tmp_path / mode.key, tmp_path / f"out.{ext}"
    src.write_bytes(mode.data)
    assert cli.main(["restore-image", str(src), "-o", str(out), "--task", "denoise", "--json", *FIT]) == 0
    captured = capsys.readouterr()
    result, data = json.loads(captured.out), out.read_bytes()
    assert data.startswith(magic) and Image.open(io.BytesIO(data)).info.get("icc_profile") == SRGB
    if note is None:  # PNG and TIFF hold it all: 16-bit RGBA, the same alpha samples
        info = dipcore.decode_with_info(data).info
        assert (info.mode, result["notes"]) == ("RGBA;16", []) and np.array_equal(info.alpha, mode.alpha)
        assert "note" not in captured.err
    else:  # said once, on one line
        assert captured.err.count("dipflow: note:") == 1 and note in captured.err
        assert note.split("; ")[0] in result["notes"]


@pytest.mark.parametrize("key", ["la16.png", "p-trns-icc.png", "tif-rgb16-icc.tif", "tif-l16.tif"])
def test_restore_image_keeps_depth_grey_alpha_and_profile(tmp_path, capsys, key):
    mode = MODES[key]
    (tmp_path / key).write_bytes(mode.data)
    out = tmp_path / "out.png"
    assert cli.main(["restore-image", str(tmp_path / key), "-o", str(out), "--task", "denoise", *FIT]) == 0
    assert fidelity_problems(mode, out.read_bytes(), None) == [] and "note" not in capsys.readouterr().err


def test_restore_image_refuses_an_unknown_extension_before_reading_anything(tmp_path, capsys):
    # The input does not exist: an exit 1 "no such file" would mean it was read first.
    code = cli.main(["restore-image", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out.bmp"), "--task", "sr"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot tell the output format from 'out.bmp'" in err and ".tif" in err
    assert not (tmp_path / "out.bmp").exists()


@pytest.mark.slow
def test_every_mode_pillow_reads_comes_back_from_a_dataset_run(ray_local, prefect_harness, tmp_path, capsys, ledger):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for key, mode in MODES.items():
        (src / key).write_bytes(mode.data)
    code = cli.main(["restore", str(src), "-o", str(out), "--task", "denoise", "--json", *FIT])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == 0 and summary["ok"] == len(MODES)
    rows = reports.read_report(str(out), run_id=summary["run_id"]).to_pylist()

    noted = {key for key, mode in MODES.items() if mode.note}
    assert captured.err.count("output(s) kept less than their input") == 1  # printed once for the run …
    assert f"{len(noted)} output(s) kept less" in captured.err
    assert all(captured.err.count(f"/{key}: ") == 1 for key in noted)  # … each noted image once
    for key, mode in MODES.items():
        outcome = Outcome(f"mode: {key}", "image mode", "local", mode.what)
        mine = [r for r in rows if r["image_key"] == key]
        check_rows(outcome, {key}, mine, expect={key: "ok"})
        for row in mine:
            assert row["output_uri"].endswith(key.rsplit(".", 1)[0] + ".png")  # the dataset run's rule: <name>.png
            for problem in fidelity_problems(mode, storage.read_bytes(row["output_uri"]), row["notes"]):
                outcome.fail("fidelity_lost", f"{key}: {problem}")
            if row["notes"]:
                outcome.notes.append(row["notes"])
        ledger(outcome)
