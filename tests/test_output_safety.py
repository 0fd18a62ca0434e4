"""Never overwrite what is not the run's own (issue 12, item 6), on local files and the moto S3 server: an output root
equal to the source or holding it is refused, one inside the source is left out of the listing, images whose
outputs would be one file get error rows, evaluate's benchmarks cannot share an output folder, and ``restore-image``
does not write onto its input."""

from __future__ import annotations

import pytest
import whole_plan
from whole_plan import listing as listing_of

from pipelines import jobs, storage
from pipelines.reporting import reports
from pipelines.settings import RestoreSettings

FAST = {"preset": "fast", "iterations": 2, "channels": 8}
INLINE = {"executor": "inline"}
CLI_FAST = ["--preset", "fast", "--iterations", "2", "--channels", "8", "--quiet"]


def test_overlap_relations_local(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "src")
    src = str(tmp_path / "src")
    assert storage.overlap(src, src + "/") == "same"
    assert storage.overlap(f"{tmp_path}/src/../src", src) == "same"
    assert storage.overlap(str(tmp_path / "link"), src) == "same"  # a symbolic link to the source is the source
    assert storage.overlap(f"file://{src}/out", src) == "inside"
    assert storage.overlap(str(tmp_path), src) == "contains"
    assert storage.overlap(f"{tmp_path}/src2", src) is None  # a sibling that shares the prefix is apart
    assert storage.overlap("memory://x", "memory://x/") == "same"
    assert storage.overlap("memory://x", src) is None  # another store


def test_output_root_checks(where):
    root, so = where
    src, out = f"{root}/src", f"{root}/src/out"
    storage.write_bytes_atomic(f"{src}/a.png", b"x", so)
    with pytest.raises(storage.OutputOverlapError, match="is the source itself"):
        storage.check_output_root(src, src + "/", so)
    with pytest.raises(storage.OutputOverlapError, match="lies inside the output"):
        storage.check_output_root(root, src, so)
    with pytest.raises(storage.OutputOverlapError, match="side-input folder"):
        storage.check_output_root(f"{root}/out", src, so, side_inputs=[f"{root}/out/masks"])
    assert storage.check_output_root(f"{root}/elsewhere", src, so) is False
    assert storage.check_output_root(out, src, so) is True  # inside the source, not there yet: allowed, excluded
    storage.write_bytes_atomic(f"{src}/photos/b.png", b"x", so)  # the user's images, not a dipflow output
    with pytest.raises(storage.OutputOverlapError, match="holds files that are not a dipflow output"):
        storage.check_output_root(f"{src}/photos", src, so)
    storage.write_bytes_atomic(f"{out}/a.png", b"o", so)
    storage.write_bytes_atomic(f"{out}/report/run_id=r/part-00000.parquet", b"p", so)
    assert storage.check_output_root(out, src, so) is True  # a dipflow output root (it has report/)


def test_listing_leaves_an_output_inside_the_source_out(where):
    root, so = where
    src = f"{root}/src"
    for key in ("a.png", "sub/b.png", "out/a.png", "out/html/run_id=r/thumbs/x-input.png", "out/report/p.parquet"):
        storage.write_bytes_atomic(f"{src}/{key}", b"x", so)
    listing = listing_of(src, storage_options=so, exclude=f"{src}/out")
    assert [e.key for e in listing.images] == ["a.png", "sub/b.png"]
    assert listing.skipped == [] and listing.excluded == []  # the run's own files are not "not images" either
    apart = listing_of(src, storage_options=so, exclude=f"{root}/elsewhere")
    assert len(apart.images) == 4


def test_inputs_whose_outputs_collide_are_both_refused(where, write_images):
    root, so = where
    write_images(f"{root}/src", ["a.png", "a.jpg", "b.png", "sub/c.PNG", "sub/c.tif"], size=16, storage_options=so)
    config = jobs.restore_config(RestoreSettings(task="denoise", **FAST))
    plan = whole_plan.plan(f"{root}/src", output=f"{root}/out", config=config, storage_options=so)
    assert [j.key for j in plan.jobs] == ["b.png"]
    why = plan.rejected
    assert sorted(why) == ["a.jpg", "a.png", "sub/c.PNG", "sub/c.tif"]
    assert "would also be the output of a.png" in why["a.jpg"] and "rename one of them" in why["a.jpg"]
    assert "would also be the output of sub/c.tif" in why["sub/c.PNG"]


@pytest.mark.usefixtures("prefect_harness")
def test_restore_refuses_its_own_source_and_excludes_an_output_inside_it(where, write_images):
    from pipelines import flows

    root, so = where
    src = f"{root}/src"
    write_images(src, ["a.png", "a.jpg", "b.png"], size=16, storage_options=so)
    before = {u: storage.read_bytes(u, so) for u in storage.list_files(src, so)}
    for output in (src, f"{src}/", root):
        with pytest.raises(storage.OutputOverlapError):
            flows.restore_dataset(src, output, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so)
    assert {u: storage.read_bytes(u, so) for u in storage.list_files(src, so)} == before  # nothing written

    out = f"{src}/restored"
    first = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so)
    assert (first["images"], first["ok"], first["error"]) == (3, 1, 2)
    failed = {f["image_key"]: f["error"] for f in first["failures"]}
    assert set(failed) == {"a.png", "a.jpg"} and all("would also be the output of" in e for e in failed.values())
    assert not storage.exists(f"{out}/a.png", so) and storage.exists(f"{out}/b.png", so)
    second = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE, storage_options=so)
    assert second["images"] == 3 and second["not_images"] == 0  # the outputs, reports and thumbnails are not inputs
    rows = reports.read_report(out, so, run_id=second["run_id"]).to_pylist()
    assert sorted(r["image_key"] for r in rows) == ["a.jpg", "a.png"]  # refused again; b.png is done (no row)
    assert second["done_earlier"] == 1
    assert all(storage.read_bytes(u, so) == data for u, data in before.items())


@pytest.mark.usefixtures("prefect_harness")
def test_evaluate_refuses_shared_output_folders(where, write_images):
    from pipelines import flows

    root, so = where
    write_images(f"{root}/a/imgs", ["x.png"], size=16, storage_options=so)
    write_images(f"{root}/b/imgs", ["y.png"], size=16, storage_options=so)
    kw = {"settings": {"task": "denoise", **FAST}, "execution": INLINE, "storage_options": so}
    with pytest.raises(storage.OutputOverlapError, match="would both write to"):
        flows.evaluate([f"{root}/a/imgs", f"{root}/b/imgs"], root, f"{root}/eval", **kw)
    with pytest.raises(storage.OutputOverlapError, match="would both write to"):
        flows.evaluate([f"{root}/a/imgs", f"{root}/a/imgs"], root, f"{root}/eval", **kw)
    with pytest.raises(storage.OutputOverlapError, match="lies inside the output"):
        flows.evaluate([f"{root}/a/imgs"], root, f"{root}/a", **kw)  # outputs at <root>/a/imgs/: the inputs
    assert not storage.exists(f"{root}/eval", so) and not storage.exists(f"{root}/a/report", so)


def test_cli_refuses_to_write_onto_its_inputs(tmp_path, write_images, capsys):
    from pipelines import cli

    src = tmp_path / "src"
    (a,) = write_images(str(src), ["a.png"], size=16)
    data = (src / "a.png").read_bytes()
    for argv in (
        ["restore", str(src), "-o", str(src), "--task", "denoise"],
        ["restore", str(src), "-o", str(tmp_path), "--task", "denoise"],
        ["evaluate", "set5", "--data-root", str(tmp_path), "-o", str(tmp_path), "--task", "denoise"],
        ["restore-image", a, "-o", a, "--task", "denoise"],
        ["restore-image", a, "-o", f"{src}/../src/a.png", "--task", "denoise"],
        ["restore-image", a, "-o", str(tmp_path / "ok.png"), "--mask", str(tmp_path / "ok.png"), "--task", "inpaint"],
    ):
        assert cli.main([*argv, *CLI_FAST]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("dipflow: error: ") and ("itself" in err or "inside the output" in err), err
    assert (src / "a.png").read_bytes() == data and sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "src"]
