"""What a source holds and the run does not restore is never silent: symbolic links, animated images, files that are
not images, an empty source — one policy in `restore`, `restore-image` and `evaluate`, each case in the run's
summary and, for image-like inputs, as a row of the report."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image
from whole_plan import listing as listing_of

import dipcore
from pipelines import cli, storage
from pipelines.reporting import reports

FAST = {"preset": "fast", "iterations": 2, "channels": 8}


def _gif(path, frames: int) -> None:
    rng = np.random.default_rng(frames)
    images = [Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")) for _ in range(frames)]
    images[0].save(path, save_all=frames > 1, append_images=images[1:])


@pytest.fixture
def source(tmp_path, write_images):
    """a.png, b.gif (one frame), anim.gif (3 frames), notes.txt; links: to a.png (in), to a file outside, to a
    folder, broken."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    write_images(str(src), ["a.png"], size=16)
    write_images(str(outside), ["o.png"], size=16)
    _gif(src / "b.gif", 1)
    _gif(src / "anim.gif", 3)
    (src / "notes.txt").write_text("not an image")
    os.symlink("a.png", src / "inside.png")
    os.symlink(outside / "o.png", src / "outside.png")
    os.symlink(outside, src / "folder")
    os.symlink(tmp_path / "missing.png", src / "broken.png")
    return src


def test_listing_follows_links_inside_the_source_and_reports_the_others(source):
    listing = listing_of(str(source))
    assert [e.key for e in listing.images] == ["a.png", "anim.gif", "b.gif", "inside.png"]
    assert dict(listing.excluded) == {
        "broken.png": "broken symbolic link",
        "folder": storage.walk._LINK_TO_FOLDER,
        "outside.png": "symbolic link to outside the source: not followed",
    }
    assert dict(listing.skipped) == {"notes.txt": "not an image extension"}
    only_png = listing_of(str(source), glob="*.png")
    assert set(dict(only_png.excluded)) == {"broken.png", "outside.png"}  # the glob applies to links too


def test_animated_images_are_refused_by_the_decoder_and_the_formats_named_are_the_real_ones(source, tmp_path):
    assert dipcore.decode_image((source / "b.gif").read_bytes()).shape == (16, 16, 3)
    with pytest.raises(dipcore.ImageDecodeError, match=r"animated or multi-frame images are not supported \(GIF, 3"):
        dipcore.decode_image((source / "anim.gif").read_bytes())
    pages = io.BytesIO()
    Image.new("L", (4, 4)).save(pages, format="TIFF", save_all=True, append_images=[Image.new("L", (4, 4))])
    with pytest.raises(dipcore.ImageDecodeError, match="multi-frame"):
        dipcore.decode_image(pages.getvalue())
    with pytest.raises(dipcore.ImageDecodeError, match="expected PNG, JPEG, TIFF, BMP, WebP, GIF or PBM/PGM/PPM"):
        dipcore.decode_image(b"neither image nor anything")
    for fmt in dipcore.imageio.FORMATS:  # every format the decoder reads is an extension `restore` lists
        assert any(Image.registered_extensions().get(ext) == fmt for ext in storage.IMAGE_EXTENSIONS), fmt


@pytest.mark.usefixtures("prefect_harness")
def test_restore_reports_every_input_it_does_not_restore(source, tmp_path):
    from pipelines import flows

    out = tmp_path / "out"
    summary = flows.restore_dataset(
        str(source), str(out), {"task": "denoise", **FAST}, execution={"executor": "inline", "pack": 1}
    )
    rows = {r["image_key"]: r for r in reports.read_report(str(out)).to_pylist()}
    assert {k: r["status"] for k, r in rows.items()} == {
        "a.png": "ok",
        "b.gif": "ok",
        "inside.png": "ok",
        "anim.gif": "error",
        "outside.png": "skipped",
        "broken.png": "skipped",
        "folder": "skipped",
    }
    assert "animated or multi-frame" in rows["anim.gif"]["error"]
    assert rows["outside.png"]["error"].startswith("symbolic link to outside the source")
    assert rows["outside.png"]["input_uri"] is None  # nothing reads through it, the HTML page included
    assert (summary["ok"], summary["error"], summary["skipped"], summary["not_images"]) == (3, 1, 3, 1)
    assert {f["image_key"] for f in summary["not_restored"]} == {"outside.png", "broken.png", "folder"}
    assert summary["not_images_shown"] == [
        {"dataset": summary["not_images_shown"][0]["dataset"], "key": "notes.txt", "reason": "not an image extension"}
    ]
    assert not (out / "outside.png").exists() and (out / "b.png").is_file()


def test_restore_image_refuses_an_animated_gif_like_restore(source, tmp_path, capsys):
    code = cli.main(["restore-image", str(source / "anim.gif"), "-o", str(tmp_path / "x.png"), "--task", "denoise"])
    err = capsys.readouterr().err
    assert code == 1 and "animated or multi-frame images are not supported" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "the source holds no files"),
        ({"readme.txt": b"x", "data.csv": b"1"}, "2 file(s), none to restore (2 not an image extension)"),
    ],
)
def test_an_empty_source_is_an_error_that_says_why_and_names_no_report(files, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DIPFLOW_DEBUG", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    argv = ["restore", str(src), "-o", str(tmp_path / "out"), "--task", "denoise", "--quiet"]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"dipflow: error: no images in dataset {src}: {message}"]
    assert "report" not in captured.out and not (tmp_path / "out" / "report").exists()


def test_the_summary_lists_what_was_not_restored_and_what_was_not_an_image(capsys):
    import argparse

    summary = {
        "run_id": "r",
        "summary": [],
        "report": "out/report/run_id=r",
        "ok": 1,
        "error": 0,
        "skipped": 3,
        "not_images": 1,
        "not_images_shown": [{"dataset": "d", "key": "notes.txt", "reason": "not an image extension"}],
        "not_restored": [{"dataset": "d", "image_key": "outside.png", "reason": "symbolic link to outside"}],
        "failures": [],
    }
    assert cli.finish(summary, argparse.Namespace(json=False)) == 0
    captured = capsys.readouterr()
    assert "1 ok, 0 failed, 2 done by earlier runs, 1 not restored — report: out/report/run_id=r" in captured.out
    assert "d/notes.txt: not an image extension" in captured.err
    assert "d/outside.png: symbolic link to outside" in captured.err
