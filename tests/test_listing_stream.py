"""pipelines.storage for sources of 10^6 images: a listing that streams folder by folder (`iter_listing`), a
fingerprint per image from the listing alone, and a header read (`read_head`) — local files, memory:// and S3."""

from __future__ import annotations

import io
import os
import uuid

import fsspec.implementations.memory
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from whole_plan import listing as listing_of
from whole_plan import merge

import dipcore
from pipelines import storage


def _png(value: int, size: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, 255 - value, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


def _put(root: str, key: str, data: bytes, so: dict | None = None) -> None:
    storage.write_bytes_atomic(f"{root}/{key}", data, so)


TREE = {
    "a.png": _png(1),
    "a_mask.png": _png(2),
    "notes.txt": b"hello",
    "orphan_mask.png": _png(3),
    "sub/b.png": _png(4),
    "sub/b_flash.jpg": _png(5),  # a guide with guide_suffix="_flash", else an image (its extension lies; unread)
    "sub/deep/c.tiff": _png(6),
    "sub/deep/README": b"",
    "sub-x/d.png": _png(7),  # "sub-x/" sorts before "sub/" as a string, after "sub/deep/" depth-first
    "z/e.jpg": _png(8),
    "out/a.png": _png(9),  # the run's output root inside the source: never listed
    "out/report/part.parquet": b"p",
}
FOLDERS = ["", "sub/", "sub/deep/", "sub-x/", "z/"]


def _folder_of(chunk: storage.Listing) -> str:
    keys = [e.key for e in chunk.images] + [k for k, _ in chunk.skipped] + [k for k, _ in chunk.excluded]
    folders = {key.rpartition("/")[0] + "/" if "/" in key else "" for key in keys}
    assert len(folders) == 1, f"one chunk spans several folders: {keys}"
    return folders.pop()


@pytest.fixture
def tree(where):
    root, so = where
    src = f"{root}/src"
    for key, data in TREE.items():
        _put(src, key, data, so)
    folders = list(FOLDERS)
    if so is None:  # local: symbolic links, followed inside the source and reported otherwise
        _put(root, "outside/o.png", _png(10))
        os.symlink("../a.png", f"{src}/sub/inside.png")
        os.symlink(f"{root}/outside/o.png", f"{src}/z/outside.png")
        os.symlink(f"{root}/outside", f"{src}/folder")
        os.symlink(f"{root}/missing.png", f"{src}/broken.png")
    return src, so, folders


@pytest.mark.parametrize(
    "options",
    [{}, {"guide_suffix": "_flash"}, {"glob": "**/*.png"}, {"glob": "sub/*", "guide_suffix": "_flash"}],
    ids=["plain", "guides", "glob", "glob-guides"],
)
def test_iter_listing_yields_each_folder_in_order(tree, options):
    src, so, folders = tree
    chunks = list(storage.iter_listing(src, storage_options=so, exclude=f"{src}/out", **options))
    assert [_folder_of(chunk) for chunk in chunks] == folders
    for chunk in chunks:
        assert [e.key for e in chunk.images] == sorted(e.key for e in chunk.images)
        assert chunk.skipped == sorted(chunk.skipped) and chunk.excluded == sorted(chunk.excluded)
    listing = merge(chunks)
    assert not any(key.startswith("out/") for key in [e.key for e in listing.images] + [k for k, _ in listing.skipped])
    assert all(e.fingerprint for e in listing.images)
    by_key = {e.key: e for e in listing.images}
    if "glob" not in options:
        assert by_key["a.png"].mask_uri == f"{storage.filesystem(src, so)[0].unstrip_protocol(src)}/a_mask.png"
        assert "|mask:" in by_key["a.png"].fingerprint
    if options.get("guide_suffix"):
        assert "|guide:" in by_key["sub/b.png"].fingerprint
    if so is None:
        links = {
            "broken.png": "broken symbolic link",
            "folder": storage.walk._LINK_TO_FOLDER,
            "z/outside.png": "symbolic link to outside the source: not followed",
        }
        kept = {None: set(links), "**/*.png": {"broken.png", "z/outside.png"}, "sub/*": set()}[options.get("glob")]
        assert dict(listing.excluded) == {key: why for key, why in links.items() if key in kept}
        if "a.png" in by_key:  # a followed link's fingerprint is its target's
            assert by_key["sub/inside.png"].fingerprint == by_key["a.png"].fingerprint.partition("|")[0]


def test_mask_dir_inside_and_outside_the_source(tmp_path):
    src, masks = str(tmp_path / "src"), str(tmp_path / "masks")
    for key in ("a.png", "sub/b.png", "m/a.png", "m/sub/b.png", "m/unused.png"):
        _put(src, key, _png(len(key)))
    _put(masks, "sub/b_mask.png", _png(1))
    chunks = list(storage.iter_listing(src, mask_dir=f"{src}/m"))
    assert [_folder_of(chunk) for chunk in chunks] == ["", "m/", "m/sub/", "sub/"]
    assert dict(chunks[1].skipped) == {"m/a.png": "in the mask folder", "m/unused.png": "in the mask folder"}
    listing = merge(chunks)
    assert [e.key for e in listing.images] == ["a.png", "sub/b.png"]
    assert dict(listing.skipped) == {
        "m/a.png": "in the mask folder",
        "m/sub/b.png": "in the mask folder",
        "m/unused.png": "in the mask folder",
    }

    before = {e.key: e.fingerprint for e in listing_of(src, mask_dir=masks).images}
    assert "|mask:" in before["sub/b.png"] and "|mask:" not in before["a.png"]
    _put(masks, "sub/b_mask.png", _png(2))  # a new mask from the side folder redoes its image, and only that one
    os.utime(f"{masks}/sub/b_mask.png", ns=(1_000_000_000, 1_000_000_000))
    after = {e.key: e.fingerprint for e in listing_of(src, mask_dir=masks).images}
    assert after["sub/b.png"] != before["sub/b.png"] and after["a.png"] == before["a.png"]


def test_a_single_file_and_a_missing_source(tmp_path):
    _put(str(tmp_path), "sub/x.png", _png(1))
    chunks = list(storage.iter_listing(str(tmp_path / "sub" / "x.png")))
    assert [[(e.key, e.uri) for e in chunk.images] for chunk in chunks] == [[("x.png", f"file://{tmp_path}/sub/x.png")]]
    assert chunks[0].images[0].fingerprint.startswith(f"size={len(_png(1))};mtime_ns=")
    with pytest.raises(storage.StorageNotFoundError, match="does not exist"):
        storage.iter_listing(str(tmp_path / "nope"))  # at the call, before anything is iterated
    with pytest.raises(ValueError, match="absolute"):
        storage.iter_listing(str(tmp_path), glob="/x")


# ----------------------------------------------------------------------------------------------------- laziness


class _Walked(fsspec.implementations.memory.MemoryFileSystem):
    """memory:// without its one-pass find: walked folder by folder, as sftp or ftp are."""

    protocol = "walkedmemory"
    find = fsspec.AbstractFileSystem.find


@pytest.mark.parametrize("backend", ["local", "walkedmemory"])
def test_the_first_folder_comes_before_the_next_is_listed(backend, tmp_path, monkeypatch):
    fsspec.register_implementation("walkedmemory", _Walked, clobber=True)
    cls = LocalFileSystem if backend == "local" else _Walked
    src = str(tmp_path / "src") if backend == "local" else f"walkedmemory://{uuid.uuid4().hex}/src"
    for key in ("a.png", "b/c.png", "b/d/e.png", "f/g.png", "out/x.png"):
        _put(src, key, _png(1))
    listed: list[str] = []
    ls = cls.ls

    def recording(self, path, *args, **kwargs):
        listed.append(path.rstrip("/").rpartition("/src")[2])
        return ls(self, path, *args, **kwargs)

    monkeypatch.setattr(cls, "ls", recording)
    chunks = storage.iter_listing(src, exclude=f"{src}/out")
    assert listed == []  # the call checks the source, lists nothing
    assert [e.key for e in next(chunks).images] == ["a.png"]
    assert listed == [""]  # b/, b/d/ and f/ are not listed yet
    assert [e.key for e in next(chunks).images] == ["b/c.png"]
    assert listed == ["", "/b"]
    assert [[e.key for e in chunk.images] for chunk in chunks] == [["b/d/e.png"], ["f/g.png"]]
    assert listed == ["", "/b", "/b/d", "/f"]  # the output folder inside the source is never listed


def test_memory_lists_in_one_pass_and_streams_the_same_folders():
    src = f"memory://{uuid.uuid4().hex}/src"
    for key in ("a.png", "b/c.png", "b/d/e.png", "b-x/h.png", "f/g.png"):
        _put(src, key, _png(1))
    chunks = list(storage.iter_listing(src))
    assert [[e.key for e in chunk.images] for chunk in chunks] == [
        ["a.png"],
        ["b/c.png"],
        ["b/d/e.png"],
        ["b-x/h.png"],
        ["f/g.png"],
    ]


class _SubRefused(fsspec.implementations.memory.MemoryFileSystem):
    """memory:// that walks like the local filesystem (fsspec's generic find) and cannot list folders named sub."""

    protocol = "subrefused2"
    find = fsspec.AbstractFileSystem.find

    def ls(self, path, detail=True, **kwargs):
        if path.rstrip("/").endswith("/sub"):
            raise PermissionError(13, "Permission denied")
        return super().ls(path, detail=detail, **kwargs)


def test_a_folder_that_cannot_be_listed_fails_the_stream_where_it_is_met(monkeypatch, tmp_path):
    fsspec.register_implementation("subrefused2", _SubRefused, clobber=True)
    src = f"subrefused2://{uuid.uuid4().hex}/src"  # memory filesystems share one store
    _put(src, "a.png", b"A")
    _put(src, "sub/b.png", b"B")
    chunks = storage.iter_listing(src)
    assert [e.key for e in next(chunks).images] == ["a.png"]
    with pytest.raises(storage.StorageAccessError, match=r"permission denied listing subrefused2://.*/src"):
        next(chunks)

    # The local filesystem alike (a refused os.scandir; root reads any folder, so the refusal is simulated).
    local = tmp_path / "src"
    _put(str(local), "a.png", b"A")
    _put(str(local), "sub/b.png", b"B")
    ls = LocalFileSystem.ls

    def refusing(self, path, *args, **kwargs):
        if path.rstrip("/").endswith("/sub"):
            raise PermissionError(13, "Permission denied", path)
        return ls(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", refusing)
    with pytest.raises(storage.StorageAccessError, match=f"permission denied listing {local}"):
        list(storage.iter_listing(str(local)))
    with pytest.raises(storage.StorageAccessError, match=f"permission denied listing {local}"):
        listing_of(str(local))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any folder")
def test_a_sub_folder_without_read_permission_fails_the_stream(tmp_path):
    src = tmp_path / "src"
    _put(str(src), "a.png", b"A")
    _put(str(src), "sub/b.png", b"B")
    (src / "sub").chmod(0)
    try:
        with pytest.raises(storage.StorageAccessError, match="permission denied listing"):
            list(storage.iter_listing(str(src)))
    finally:
        (src / "sub").chmod(0o755)


# ------------------------------------------------------------------------------------------------- fingerprints


def _fingerprints(src: str, so: dict | None = None, **options) -> dict[str, str | None]:
    return {e.key: e.fingerprint for e in listing_of(src, storage_options=so, **options).images}


def test_local_fingerprints_follow_content_changes_of_the_same_size(tmp_path):
    src = str(tmp_path / "src")
    for key, data in {"a.png": _png(1), "a_mask.png": _png(2), "b.png": _png(3), "b_flash.png": _png(4)}.items():
        _put(src, key, data)
        os.utime(f"{src}/{key}", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    first = _fingerprints(src, guide_suffix="_flash")
    assert first == _fingerprints(src, guide_suffix="_flash")  # untouched: equal
    assert first["a.png"].startswith(f"size={len(_png(1))};mtime_ns=1700000000000000000;ino=")
    assert "|mask:size=" in first["a.png"] and "|guide:size=" in first["b.png"]

    other = _png(200)
    assert len(other) == len(_png(1))
    with open(f"{src}/a.png", "r+b") as f:  # in place: the same inode, the same size, other bytes
        f.write(other)
    os.utime(f"{src}/a.png", ns=(1_700_000_001_000_000_000, 1_700_000_001_000_000_000))
    second = _fingerprints(src, guide_suffix="_flash")
    assert second["a.png"] != first["a.png"] and second["b.png"] == first["b.png"]

    _put(src, "a_mask.png", _png(9))  # a new mask redoes its image
    os.utime(f"{src}/a_mask.png", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    third = _fingerprints(src, guide_suffix="_flash")
    assert third["a.png"] != second["a.png"] and third["a.png"].partition("|")[0] == second["a.png"].partition("|")[0]
    _put(src, "b_flash.png", _png(8))  # and so does a new guide
    assert _fingerprints(src, guide_suffix="_flash")["b.png"] != first["b.png"]


def test_s3_fingerprints_carry_the_etag_and_follow_a_reupload(s3_server, s3_root):
    so = s3_server.storage_options
    _put(s3_root, "a.png", _png(1), so)
    _put(s3_root, "sub/b.png", _png(2), so)
    first = _fingerprints(s3_root, so)
    assert first == _fingerprints(s3_root, so)
    assert first["a.png"].startswith(f"size={len(_png(1))};etag=") and '"' not in first["a.png"]
    _put(s3_root, "a.png", _png(200), so)  # the same size, other bytes
    second = _fingerprints(s3_root, so)
    assert second["a.png"] != first["a.png"] and second["sub/b.png"] == first["sub/b.png"]
    chunks = list(storage.iter_listing(s3_root, storage_options=so))
    assert [[e.fingerprint for e in chunk.images] for chunk in chunks] == [[second["a.png"]], [second["sub/b.png"]]]


def test_memory_fingerprints_and_the_keys_of_other_backends():
    src = f"memory://{uuid.uuid4().hex}/src"
    _put(src, "a.png", _png(1))
    fp = _fingerprints(src)["a.png"]
    assert fp.startswith(f"size={len(_png(1))};created=") and fp == _fingerprints(src)["a.png"]
    memory = fsspec.filesystem("memory")
    assert storage.fingerprint({"name": "x"}, memory) is None  # nothing to go by
    ftp_like = fsspec.AbstractFileSystem()  # another backend: the size and whichever known key the info holds
    assert storage.fingerprint({"size": 3, "ETag": '"abc"', "owner": "me"}, ftp_like) == "size=3;etag=abc"
    assert storage.fingerprint({"size": 3}, ftp_like) == "size=3"


# ------------------------------------------------------------------------------------------------------ headers


def _noise(height: int, width: int, fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def test_read_head_gives_an_image_shape_without_the_pixels(where):
    root, so = where
    png, jpeg = _noise(200, 150, "PNG"), _noise(300, 260, "JPEG")
    assert len(png) > 65536 and len(jpeg) > 65536
    _put(root, "a.png", png, so)
    _put(root, "sub/b.jpg", jpeg, so)
    head = storage.read_head(f"{root}/a.png", so)
    assert head == png[:65536]
    assert dipcore.image_shape(head) == (200, 150, 3)
    assert dipcore.image_shape(storage.read_head(f"{root}/sub/b.jpg", so)) == (300, 260, 3)
    assert storage.read_head(f"{root}/a.png", so, nbytes=8) == png[:8]
    _put(root, "small.png", _png(1), so)
    assert storage.read_head(f"{root}/small.png", so) == _png(1)  # shorter than nbytes: all of it
    with pytest.raises(storage.StorageNotFoundError, match="no such file"):
        storage.read_head(f"{root}/missing.png", so)
