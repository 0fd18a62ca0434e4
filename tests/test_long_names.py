"""Names the filesystem accepts are restored (issue 25, item 5): a temporary file's name no longer grows with its
target's, so an input named with as many bytes as the filesystem allows gets its output; an output name the output's
store cannot hold (a longer name than its NAME_MAX, an object key over 1,024 bytes) fails at planning — an error row,
no fit — rather than after the fit, every night."""

from __future__ import annotations

import os

import pytest
import whole_plan

from pipelines import jobs, storage
from pipelines.reporting import reports
from pipelines.settings import RestoreSettings

CLI_FAST = ["--preset", "fast", "--iterations", "2", "--channels", "4", "--quiet"]


def test_write_bytes_atomic_takes_a_name_of_the_longest_length(tmp_path):
    name = "x" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 4) + ".png"  # as long as the filesystem holds
    storage.write_bytes_atomic(str(tmp_path / name), b"data")
    assert storage.create_exclusive(str(tmp_path / "sub" / name), b"data")
    assert (tmp_path / name).read_bytes() == b"data" and (tmp_path / "sub" / name).read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted([name, "sub", name])  # no temporary file stays


def test_restore_cli_takes_an_input_named_with_the_longest_name(ray_local, prefect_harness, tmp_path, write_images):
    from pipelines import cli

    name = "n" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 4) + ".png"
    write_images(str(tmp_path / "src"), [name, "short.png"], size=16)
    out = tmp_path / "out"
    assert cli.main(["restore", str(tmp_path / "src"), "-o", str(out), "--task", "denoise", *CLI_FAST]) == 0
    assert (out / name).is_file() and (out / "short.png").is_file()
    rows = reports.read_report(str(out)).to_pylist()
    assert sorted((r["image_key"], r["status"]) for r in rows) == [(name, "ok"), ("short.png", "ok")]


def test_an_output_name_the_store_cannot_hold_fails_at_planning(tmp_path, write_images):
    deep = "/".join(["d" * 200] * 6) + "/a.png"  # a local path of 1,211 bytes below the root: fine here
    write_images(str(tmp_path / "src"), ["fine.png", deep], size=16)
    config = jobs.restore_config(RestoreSettings(task="denoise", preset="fast", iterations=2, channels=4))
    plan = whole_plan.plan(str(tmp_path / "src"), output="s3://bucket/restored/x", config=config)
    assert [j.key for j in plan.jobs] == ["fine.png"]
    ((key, why),) = plan.rejected.items()
    assert key == deep and "1024" in why and "bytes long" in why and "rename the input" in why
    assert storage.name_check("s3://bucket/out")("s3://bucket/out/" + "k" * 1000) is None
    check = storage.name_check(str(tmp_path / "not-yet" / "out"))  # a root not made yet: its nearest folder says
    assert check(str(tmp_path / "not-yet" / "out" / ("z" * 255))) is None
    assert "bytes long" in check(str(tmp_path / "not-yet" / "out" / ("z" * 256)))


@pytest.mark.usefixtures("prefect_harness")
def test_restore_gives_an_unholdable_name_an_error_row_and_restores_the_rest(tmp_path, write_images):
    from pipelines import flows

    src = "memory://long-names/src"  # a store that holds any name; the output lies on the local filesystem
    long = "q" * 300 + ".png"
    write_images(src, [long, "ok.png"], size=16)
    out = str(tmp_path / "out")
    fast = {"task": "denoise", "preset": "fast", "iterations": 2, "channels": 4}
    summary = flows.restore_dataset(src, out, fast, execution={"executor": "inline"})
    assert (summary["ok"], summary["error"]) == (1, 1)
    (failed,) = summary["failures"]
    assert failed["image_key"] == long and "304 bytes long" in failed["error"]
    row = next(r for r in reports.read_report(out).to_pylist() if r["image_key"] == long)
    assert row["attempts"] == 0 and row["iterations_run"] is None  # refused at planning: no fit ran
