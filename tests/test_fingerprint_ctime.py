"""An input rewritten in place with its size, mtime and inode kept is restored again (issue 25, item 8): a local
fingerprint holds the ctime, which no user call sets back. An output root whose state holds fingerprints of the
format before (``size=…;mtime_ns=…;ino=…``) redoes none of its unchanged images after the upgrade: they match on
the fields they have, and the run records the new fingerprint."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import cli, storage
from pipelines.reporting import state

CLI_FAST = ["--task", "denoise", "--preset", "fast", "--iterations", "2", "--channels", "4", "--quiet", "--json"]
FAST = {"preset": "fast", "iterations": 2, "channels": 4}
INLINE = {"executor": "inline"}


def _rewrite_in_place(path, data: bytes) -> None:
    """New bytes of the same size into the same inode, its mtime put back (``cp -p`` onto it, ``touch -r``)."""
    before = os.stat(path)
    assert len(data) == before.st_size
    time.sleep(0.01)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def _bmps(folder, keys) -> None:
    """Uncompressed images (BMP): another picture of the same size is a file of the same size."""
    rng = np.random.default_rng(0)
    for key in keys:
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(folder / key, "BMP")


def _flipped(data: bytes) -> bytes:
    """The same BMP with its last pixel byte changed: another picture, the same size."""
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def test_restore_cli_redoes_an_input_rewritten_with_its_mtime_kept(ray_local, prefect_harness, tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _bmps(src, ["a.bmp", "b.bmp"])
    assert cli.main(["restore", str(src), "-o", str(out), *CLI_FAST]) == 0
    capsys.readouterr()
    _rewrite_in_place(src / "a.bmp", _flipped((src / "a.bmp").read_bytes()))
    cli.main(["restore", str(src), "-o", str(out), *CLI_FAST])
    summary = json.loads(capsys.readouterr().out)
    assert summary["done_earlier"] == 1 and summary["ok"] == 1  # a.bmp again, b.bmp done


@pytest.mark.usefixtures("prefect_harness")
def test_an_old_format_state_redoes_nothing_and_records_the_new_fingerprints(tmp_path):
    from pipelines import flows

    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    _bmps(tmp_path / "src", ["a.bmp", "sub/b.bmp", "c.bmp"])
    flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE)
    for uri in storage.list_files(state.state_dir(out)):  # the state as a version before the ctime wrote it
        path = storage.filesystem(uri)[1]
        table = pq.read_table(path)
        old = [storage.without_ctime(f) for f in table.column("input_fingerprint").to_pylist()]
        assert all(f is not None and "ctime" not in f for f in old)
        pq.write_table(table.set_column(3, "input_fingerprint", pc.cast(old, "string")), path)

    upgraded = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE)
    assert (upgraded["done_earlier"], upgraded["ok"]) == (3, 0)  # nothing redone
    latest = state._latest(pq.read_table(storage.filesystem(state.state_dir(out))[1]))
    assert all(";ctime_ns=" in f for f in latest.column("input_fingerprint").to_pylist())  # recorded anew

    _rewrite_in_place(tmp_path / "src" / "c.bmp", _flipped((tmp_path / "src" / "c.bmp").read_bytes()))
    after = flows.restore_dataset(src, out, {"task": "denoise", **FAST}, execution=INLINE)
    assert (after["done_earlier"], after["ok"]) == (2, 1)  # the old format no longer hides the rewrite


def test_without_ctime_takes_the_ctime_out_of_an_image_and_its_side_inputs():
    fp = "size=1;mtime_ns=2;ino=3;ctime_ns=4|mask:size=5;mtime_ns=6;ino=7;ctime_ns=8"
    assert storage.without_ctime(fp) == "size=1;mtime_ns=2;ino=3|mask:size=5;mtime_ns=6;ino=7"
    assert storage.without_ctime("size=1;etag=x") is None and storage.without_ctime(None) is None
