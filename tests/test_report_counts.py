"""A report counts images, not versions of them (issue 25, item 7): an input changed between runs is one image (its
latest row), and a run says how many outputs belong to inputs it no longer lists (deleted or renamed), in one line
and in the runs table, without deleting them."""

from __future__ import annotations

import json
import shutil

from pipelines import cli
from pipelines.reporting import runs

CLI_FAST = ["--task", "denoise", "--preset", "fast", "--iterations", "2", "--channels", "4", "--quiet", "--json"]


def test_report_counts_a_changed_input_once_and_the_run_names_outputs_of_inputs_gone(
    ray_local, prefect_harness, tmp_path, write_images, capsys
):
    src, out = tmp_path / "src", tmp_path / "out"
    write_images(str(src), ["a.png", "b.png", "c.png", "d.png"], size=16)
    assert cli.main(["restore", str(src), "-o", str(out), *CLI_FAST]) == 0
    capsys.readouterr()

    shutil.copyfile(src / "d.png", src / "a.png")  # a.png changed: restored again, one image still
    (src / "b.png").rename(src / "b2.png")  # renamed: its old output stays
    (src / "c.png").unlink()  # deleted: its output stays
    assert cli.main(["restore", str(src), "-o", str(out), *CLI_FAST]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["ok"], summary["done_earlier"], summary["unlisted_outputs"]) == (2, 1, 2)
    assert "2 output(s) belong to images that earlier runs restored and this run did not list" in captured.err
    assert (out / "b.png").is_file() and (out / "c.png").is_file()  # kept
    row = runs.read_runs(str(out), run_id=summary["run_id"]).to_pylist()[0]
    assert row["unlisted_outputs"] == 2

    assert cli.main(["report", str(out), "--json"]) == 0
    (line,) = json.loads(capsys.readouterr().out)["summary"]
    assert (line["images"], line["ok"]) == (5, 5)  # a, b, b2, c, d: a's two versions are one image
