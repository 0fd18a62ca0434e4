"""Nothing that is not the run's is overwritten (issue 25, item 1): a file at an output's place that no run into the
output root wrote is kept, and its image gets an error row before any fit; ``--overwrite`` replaces it. What is the
root's own — recorded in its done-state, or marked in the file by a run into it (a crash's leftover between the write
and the state row) — is replaced as before. The fault suite generalises it (tests/faults/test_foreign_files.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dipcore
from pipelines import cli, ownership, storage
from pipelines.reporting import reports, state
from pipelines.settings import RestoreSettings, RunOptions

CLI_FAST = ["--task", "denoise", "--preset", "fast", "--iterations", "2", "--channels", "4", "--quiet"]
FAST = {"preset": "fast", "iterations": 2, "channels": 4}
INLINE = {"executor": "inline"}


def test_restore_keeps_a_file_already_in_the_output_folder(ray_local, prefect_harness, tmp_path, write_images, capsys):
    """docs/cli.md: "Nothing that is not the run's is overwritten" — `mkdir clean; cp mine.png clean/img0.png`."""
    noisy, clean = tmp_path / "noisy", tmp_path / "clean"
    write_images(str(noisy), ["img0.png", "img1.png"], size=16)
    clean.mkdir()
    mine = (noisy / "img1.png").read_bytes()  # some PNG of the user's
    (clean / "img0.png").write_bytes(mine)

    assert cli.main(["restore", str(noisy), "-o", str(clean), *CLI_FAST]) == cli.EXIT_FAILED_IMAGES
    err = capsys.readouterr().err
    assert "img0.png" in err and "--overwrite" in err
    assert (clean / "img0.png").read_bytes() == mine and (clean / "img1.png").is_file()
    rows = {r["image_key"]: r for r in reports.read_report(str(clean)).to_pylist()}
    assert rows["img1.png"]["status"] == "ok"
    assert rows["img0.png"]["status"] == "error" and rows["img0.png"]["iterations_run"] is None  # no fit ran
    assert "is not this output root's" in rows["img0.png"]["error"]

    assert cli.main(["restore", str(noisy), "-o", str(clean), *CLI_FAST]) == cli.EXIT_FAILED_IMAGES  # kept again
    assert (clean / "img0.png").read_bytes() == mine
    assert cli.main(["restore", str(noisy), "-o", str(clean), "--overwrite", *CLI_FAST]) == 0
    replaced = (clean / "img0.png").read_bytes()
    assert replaced != mine and dipcore.decode_image(replaced).shape == (16, 16, 3)
    assert ownership.marked(replaced)["output"] == "img0.png"


def test_evaluate_takes_overwrite_too():
    from pipelines.cli_options import from_args

    args = cli.build_parser().parse_args(["evaluate", "set5", "--data-root", "d", "-o", "o", "--overwrite"])
    assert from_args(RunOptions, args).overwrite is True
    args = cli.build_parser().parse_args(["restore", "s", "-o", "o", "--task", "sr"])
    assert from_args(RunOptions, args).overwrite is False


@pytest.mark.usefixtures("prefect_harness")
def test_the_roots_own_outputs_are_replaced_a_crash_leftover_and_an_unmarked_one_included(tmp_path, write_images):
    from pipelines import flows

    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    write_images(src, ["a.png", "sub/b.png"], size=16)
    flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE)
    b_out = tmp_path / "out" / "sub" / "b.png"
    assert json.loads(json.dumps(ownership.marked(b_out.read_bytes()))) == {
        "root": ownership.root_id(out),
        "output": "sub/b.png",
    }

    # A crash between writing the outputs and recording them: neither the report nor the state knows them.
    for uri in storage.list_files(state.state_dir(out)) + storage.list_files(f"{out}/report"):
        storage.remove_file(uri)
    again = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE)
    assert (again["ok"], again["error"]) == (2, 0)

    # An output written before outputs were marked: the state records it, under other settings too.
    unmarked = dipcore.encode_png(dipcore.decode_image(b_out.read_bytes()))
    b_out.write_bytes(unmarked)
    other = flows.restore_dataset(src, out, {"task": "denoise", **FAST, "iterations": 3}, execution=INLINE)
    assert (other["ok"], other["error"]) == (2, 0) and b_out.read_bytes() != unmarked

    # Another root's output (its mark names another root), where no run into this one wrote: not this root's.
    foreign = ownership.mark(unmarked, json.dumps({"root": "another-root", "output": "sub/c.png"}))
    (tmp_path / "out" / "sub" / "c.png").write_bytes(foreign)
    write_images(src, ["sub/c.png"], size=16)
    last = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE)
    assert (last["ok"], last["error"], last["done_earlier"]) == (0, 1, 2)
    assert (tmp_path / "out" / "sub" / "c.png").read_bytes() == foreign


def test_write_output_never_replaces_a_file_that_appears_after_the_look(where):
    from pipelines import jobs

    root, so = where
    owner = ownership.Owner(f"{root}/out", ownership.root_id(f"{root}/out", so))
    uri = f"{root}/out/deep/er/x.png"
    job = jobs.Job(
        run_id="r", dataset="d", key="deep/er/x.png", input_uri="",
        config=jobs.restore_config(RestoreSettings(task="denoise")), output_uri=uri, provenance=owner.provenance(uri),
    )  # fmt: skip
    png = dipcore.encode_png(np.full((4, 4, 3), 0.5, np.float32))
    ownership.check_free(job, so)  # nothing there yet
    storage.write_bytes_atomic(uri, b"someone else's", so)  # between the look and the write
    with pytest.raises(storage.StorageError, match="pass --overwrite"):
        ownership.write_output(job, png, so)
    assert storage.read_bytes(uri, so) == b"someone else's"
    with pytest.raises(storage.StorageError, match="is not this output root's"):
        ownership.check_free(job, so)
    storage.remove_file(uri, so)
    ownership.write_output(job, png, so)  # new: created, marked
    ownership.check_free(job, so)  # ours now
    ownership.write_output(job, png, so)  # and replaced
    assert ownership.marked(storage.read_bytes(uri, so)) == json.loads(job.provenance)
    assert [u.rpartition("/")[2] for u in storage.list_files(f"{root}/out/deep", so)] == ["x.png"]  # no temporary
