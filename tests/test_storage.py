"""pipelines.storage: listing with side inputs, atomic writes, safe output keys, redaction — local, memory://, S3."""

from __future__ import annotations

import os
import uuid

import fsspec.implementations.memory
import pytest
from whole_plan import listing as listing_of

from pipelines import storage
from pipelines.storage import StorageError, StorageNotFoundError, UnsafeKeyError


def _touch(root, rel: str, data: bytes = b"x") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    for rel, data in {
        "a.png": b"aaaa",
        "a_mask.png": b"m",
        "notes.txt": b"hello",
        "sub/b.JPG": b"bb",
        "sub/deep/c.tiff": b"ccc",
        "sub/deep/README": b"",
        "sub/x.png": b"x",
        "sub/x_flash.jpg": b"f",
        "orphan_mask.png": b"o",
    }.items():
        _touch(root, rel, data)
    return root


def test_local_listing_nested_with_masks_guides_and_skips(dataset):
    listing = listing_of(str(dataset), guide_suffix="_flash")
    keys = [e.key for e in listing.images]
    assert keys == ["a.png", "sub/b.JPG", "sub/deep/c.tiff", "sub/x.png"]
    by_key = {e.key: e for e in listing.images}
    assert by_key["a.png"].uri == f"file://{dataset}/a.png"
    assert by_key["a.png"].size == 4
    assert by_key["a.png"].mask_uri == f"file://{dataset}/a_mask.png"
    assert by_key["a.png"].guide_uri is None
    assert by_key["sub/x.png"].guide_uri == f"file://{dataset}/sub/x_flash.jpg"
    assert by_key["sub/x.png"].mask_uri is None
    assert by_key["sub/b.JPG"].mask_uri is None
    skipped = dict(listing.skipped)
    assert skipped == {
        "a_mask.png": "mask of a.png",
        "notes.txt": "not an image extension",
        "orphan_mask.png": "mask with no matching image",
        "sub/deep/README": "not an image extension",
        "sub/x_flash.jpg": "guide of sub/x.png",
    }
    # every file is accounted for exactly once
    assert len(keys) + len(listing.skipped) == sum(1 for p in dataset.rglob("*") if p.is_file())


def test_without_guide_suffix_flash_files_are_images(dataset):
    keys = [e.key for e in listing_of(f"file://{dataset}").images]
    assert "sub/x_flash.jpg" in keys and "a_mask.png" not in keys


def test_glob_selects_images_and_reports_the_rest(dataset):
    listing = listing_of(str(dataset), glob="**/*.png")
    assert [e.key for e in listing.images] == ["a.png", "sub/x.png"]
    assert dict(listing.skipped)["sub/b.JPG"].startswith("does not match glob")
    assert [e.key for e in listing_of(str(dataset), glob="*.png").images] == ["a.png"]
    assert [e.key for e in listing_of(str(dataset), glob="sub/*").images] == [
        "sub/b.JPG",
        "sub/x.png",
        "sub/x_flash.jpg",
    ]


def test_mask_dir_outside_and_inside_the_source(tmp_path, dataset):
    masks = tmp_path / "masks"
    _touch(masks, "sub/b.png")
    _touch(masks, "x_mask.png")
    listing = listing_of(str(dataset), mask_dir=str(masks))
    by_key = {e.key: e for e in listing.images}
    assert by_key["sub/b.JPG"].mask_uri == f"file://{masks}/sub/b.png"
    assert by_key["sub/x.png"].mask_uri == f"file://{masks}/x_mask.png"  # top-level fallback by stem
    assert by_key["a.png"].mask_uri == f"file://{dataset}/a_mask.png"  # the sibling mask wins

    _touch(dataset, "m/sub/deep/c.png")
    _touch(dataset, "m/unused.png")
    listing = listing_of(str(dataset), mask_dir=str(dataset / "m"))
    keys = [e.key for e in listing.images]
    assert not any(k.startswith("m/") for k in keys)
    assert {e.key: e for e in listing.images}["sub/deep/c.tiff"].mask_uri == f"file://{dataset}/m/sub/deep/c.png"
    skipped = dict(listing.skipped)
    assert skipped["m/sub/deep/c.png"] == skipped["m/unused.png"] == "in the mask folder"


def test_missing_source_raises_without_credentials(tmp_path):
    with pytest.raises(StorageNotFoundError, match="does not exist") as err:
        listing_of(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(err.value)
    with pytest.raises(StorageNotFoundError) as err:
        listing_of("memory://nope-" + uuid.uuid4().hex + "?X-Amz-Signature=deadbeef&token=s3cr3t")
    assert "deadbeef" not in str(err.value) and "s3cr3t" not in str(err.value)
    with pytest.raises(StorageNotFoundError):
        storage.read_bytes(str(tmp_path / "missing.png"))


def test_single_file_source(dataset):
    listing = listing_of(str(dataset / "sub" / "x.png"))
    assert [(e.key, e.uri) for e in listing.images] == [("x.png", f"file://{dataset}/sub/x.png")]


def test_sibling_prefix_is_not_listed(tmp_path):
    _touch(tmp_path, "data/a.png")
    _touch(tmp_path, "data2/b.png")
    assert [e.key for e in listing_of(str(tmp_path / "data")).images] == ["a.png"]


def test_memory_listing_reading_writing():
    root = f"memory://ds-{uuid.uuid4().hex}"
    storage.write_bytes_atomic(f"{root}/in/a.png", b"AAA")
    storage.write_bytes_atomic(f"{root}/in/sub/b.webp", b"BB")
    storage.write_bytes_atomic(f"{root}/in/sub/b_mask.bmp", b"M")
    listing = listing_of(f"{root}/in")
    assert [(e.key, e.size) for e in listing.images] == [("a.png", 3), ("sub/b.webp", 2)]
    b = listing.images[1]
    assert b.uri.startswith("memory://") and b.uri.endswith("/in/sub/b.webp")
    assert b.mask_uri is not None and storage.read_bytes(b.mask_uri) == b"M"
    assert storage.read_bytes(listing.images[0].uri) == b"AAA"
    out = storage.output_uri(f"{root}/out", b.key)
    storage.write_bytes_atomic(out, b"PNG")
    assert out == f"{root}/out/sub/b.png" and storage.exists(out) and storage.read_bytes(out) == b"PNG"
    # a fresh listing sees a new write
    storage.write_bytes_atomic(f"{root}/in/c.png", b"C")
    assert len(listing_of(f"{root}/in").images) == 3


def test_write_bytes_atomic_local(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "er" / "out.png"
    storage.write_bytes_atomic(str(target), b"first")
    assert target.read_bytes() == b"first"
    storage.write_bytes_atomic(f"file://{target}", b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["out.png"]  # no temp files left

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StorageError, match=r"writing .*out\.png failed: disk full"):
        storage.write_bytes_atomic(str(target), b"third")
    assert target.read_bytes() == b"second"  # the old file, whole
    assert os.listdir(target.parent) == ["out.png"]  # the temp file was removed


def test_sha256_hex():
    assert storage.sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


ESCAPES = [
    "../x.png",
    "/etc/passwd",
    "a/%2e%2e/%2e%2e/b.png",
    "a/%2E%2E/b.png",
    "a%2f..%2fb.png",
    "a%2F..%2F..%2Fb.png",
    "a%5c..%5cb.png",
    "a%252e%252e/b.png",
    "a\\..\\b.png",
    "a\\b.png",
    "C:/x.png",
    "c:x.png",
    "a/../../b",
    "a/..",
    "..",
    "a//b.png",
    "a/b/",
    "",
    "a\x00.png",
    "a/\uff0e\uff0e/b.png",  # fullwidth dots fold to ".."
    "a\uff0fb.png",  # fullwidth solidus folds to "/"
    ". ./x.png",
]


@pytest.mark.parametrize("key", ESCAPES)
@pytest.mark.parametrize("root", ["/srv/out", "s3://bucket/out", "memory://out"])
def test_output_uri_rejects_escapes(root, key):
    with pytest.raises(UnsafeKeyError):
        storage.output_uri(root, key)


@pytest.mark.parametrize(
    ("root", "key", "expected"),
    [
        ("/srv/out", "a.jpg", "/srv/out/a.png"),
        ("/srv/out/", "sub/deep/a.TIF", "/srv/out/sub/deep/a.png"),
        ("file:///srv/out", "./sub/a.png", "file:///srv/out/sub/a.png"),
        ("file:///", "a.png", "file:///a.png"),
        ("s3://bucket/out", "sub/a.b.jpeg", "s3://bucket/out/sub/a.b.png"),
        ("s3://bucket/out//", "sub/noext", "s3://bucket/out/sub/noext.png"),
        ("s3://bucket", "x y%20z.png", "s3://bucket/x y%20z.png"),
        ("memory://", "k/a.png", "memory://k/a.png"),
        ("gs://b/o", "..a/b..c.png", "gs://b/o/..a/b..c.png"),  # dots inside names are fine
    ],
)
def test_output_uri_mirrors_keys(root, key, expected):
    assert storage.output_uri(root, key) == expected


def test_output_uri_suffix():
    assert storage.output_uri("/o", "a/b.jpg", suffix=".tiff") == "/o/a/b.tiff"
    with pytest.raises(UnsafeKeyError):
        storage.output_uri("/o", "a.png", suffix="/../x")


def test_join():
    assert storage.join("s3://b/root/", "report", "run_id=1", "part-00000.parquet") == (
        "s3://b/root/report/run_id=1/part-00000.parquet"
    )
    with pytest.raises(UnsafeKeyError):
        storage.join("/x", "..", "y")


@pytest.mark.parametrize(
    ("text", "secrets", "kept"),
    [
        ("s3://AKIDUSER:hunter2@bucket/a.png", ["hunter2", "AKIDUSER"], ["bucket/a.png"]),
        ("https://user:pa55@host:8080/x.png?width=3", ["pa55", "user:"], ["host:8080/x.png", "width=3"]),
        (
            "https://b.s3.amazonaws.com/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE"
            "%2F20240101%2Fus-east-1&X-Amz-Signature=abcdef0123&X-Amz-Security-Token=TOK123",
            ["abcdef0123", "AKIAIOSFODNN7EXAMPLE", "TOK123"],
            ["X-Amz-Algorithm=AWS4-HMAC-SHA256", "b.s3.amazonaws.com/a.png"],
        ),
        ("https://acct.blob.core.windows.net/c/a.png?sv=2020&se=2030&sig=SASSIG%3D", ["SASSIG"], ["a.png"]),
        ("http://h/a?AWSAccessKeyId=AKID1&Signature=SIG1&Expires=9", ["AKID1", "SIG1"], ["Expires=9"]),
        (
            "https://h/a?token=T0K&key=K3Y&secret=S3C&api_key=AP1&access_token=AT",
            ["T0K", "K3Y", "S3C", "AP1", "=AT"],
            [],
        ),
        (
            "error reading s3://u:p@b/k: access key AKIAIOSFODNN7EXAMPLE denied",
            ["u:p@", "AKIAIOSFODNN7EXAMPLE"],
            ["error reading", "denied"],
        ),
    ],
)
def test_redact(text, secrets, kept):
    out = storage.redact(text)
    for secret in secrets:
        assert secret not in out
    for part in kept:
        assert part in out


@pytest.mark.parametrize(
    "name", ["key", "secret", "account_key", "sas_token", "aws_access_key_id", "Password", "X-Amz-Credential", "sig"]
)
def test_one_vocabulary_of_secret_names_for_options_and_urls(name):
    plain, secret = storage.split_secret_options({name: "S3CR3T", "client_kwargs": {name: "S3CR3T", "region": "x"}})
    assert secret == {name: "S3CR3T", "client_kwargs": {name: "S3CR3T"}}
    assert plain == {"client_kwargs": {"region": "x"}}
    assert "S3CR3T" not in storage.redact(f"https://h/a.png?{name}=S3CR3T&region=x")


def test_redact_leaves_plain_urls_alone():
    for url in ["s3://bucket/a/b.png", "/data/x.png", "memory://k?v=1", "https://h/p/a@b.png"]:
        assert storage.redact(url) == url


def test_parse_storage_options():
    opts = storage.parse_storage_options(
        [
            "anon=true",
            "use_ssl=False",
            "max_concurrency=8",
            "client_kwargs.endpoint_url=http://127.0.0.1:9000/?a=b",
            "client_kwargs.region_name=eu-west-1",
            "config_kwargs.retries.max_attempts=5",
            "token=abc=def",
        ]
    )
    assert opts == {
        "anon": True,
        "use_ssl": False,
        "max_concurrency": 8,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000/?a=b", "region_name": "eu-west-1"},
        "config_kwargs": {"retries": {"max_attempts": 5}},
        "token": "abc=def",
    }
    assert storage.parse_storage_options([]) == {}
    for bad in (["novalue"], ["=x"], ["a..b=1"], ["a=1", "a.b=2"], ["a.b=2", "a=1"]):
        with pytest.raises(storage.StorageOptionError):
            storage.parse_storage_options(bad)
    with pytest.raises(storage.StorageOptionError) as err:
        storage.parse_storage_options(["secret.x=SUPERSECRET", "secret=SUPERSECRET2"])
    assert "SUPERSECRET" not in str(err.value)


def test_unknown_protocol_is_a_storage_error():
    with pytest.raises(storage.StorageError, match="cannot open"):
        storage.read_bytes("nosuchproto://user:pw@x/y")
    try:
        storage.read_bytes("nosuchproto://user:pw@x/y")
    except storage.StorageError as exc:
        assert "pw@" not in str(exc)


# ---------------------------------------------------------------------------------------------------- S3 (moto)


def test_s3_list_read_write(s3_server, s3_root):
    so = s3_server.storage_options
    assert not storage.exists(f"{s3_root}/in", so)
    with pytest.raises(StorageNotFoundError):
        listing_of(f"{s3_root}/in", storage_options=so)
    storage.write_bytes_atomic(f"{s3_root}/in/a.png", b"AAAA", so)
    storage.write_bytes_atomic(f"{s3_root}/in/sub/b.jpg", b"BB", so)
    storage.write_bytes_atomic(f"{s3_root}/in/sub/b_mask.png", b"M", so)
    storage.write_bytes_atomic(f"{s3_root}/in/meta.json", b"{}", so)
    storage.write_bytes_atomic(f"{s3_root}/in2/other.png", b"O", so)  # shares the prefix "in"
    listing = listing_of(f"{s3_root}/in", storage_options=so)
    assert [(e.key, e.size) for e in listing.images] == [("a.png", 4), ("sub/b.jpg", 2)]
    assert listing.images[0].uri == f"{s3_root}/in/a.png"
    assert listing.images[1].mask_uri == f"{s3_root}/in/sub/b_mask.png"
    assert dict(listing.skipped) == {"meta.json": "not an image extension", "sub/b_mask.png": "mask of sub/b.jpg"}
    assert storage.read_bytes(listing.images[1].uri, so) == b"BB"

    out = storage.output_uri(f"{s3_root}/out", "sub/b.jpg")
    assert out == f"{s3_root}/out/sub/b.png"
    storage.write_bytes_atomic(out, b"PNG1", so)
    storage.write_bytes_atomic(out, b"PNG2", so)
    assert storage.read_bytes(out, so) == b"PNG2"
    # listings are fresh: a write after a listing shows up in the next one
    storage.write_bytes_atomic(f"{s3_root}/in/c.png", b"C", so)
    assert [e.key for e in listing_of(f"{s3_root}/in", storage_options=so).images] == ["a.png", "c.png", "sub/b.jpg"]
    assert storage.list_files(f"{s3_root}/out", so) == [out]
    with pytest.raises(StorageNotFoundError):
        storage.read_bytes(f"{s3_root}/nope.png", so)


def test_s3_write_from_another_client_is_seen(s3_server, s3_root):
    import s3fs

    so = s3_server.storage_options
    storage.write_bytes_atomic(f"{s3_root}/a.png", b"A", so)
    assert [e.key for e in listing_of(s3_root, storage_options=so).images] == ["a.png"]
    other = s3fs.S3FileSystem(skip_instance_cache=True, **so)  # e.g. a Ray worker in another process
    other.pipe_file(f"{s3_root[5:]}/b.png", b"B")
    assert [e.key for e in listing_of(s3_root, storage_options=so).images] == ["a.png", "b.png"]
    assert storage.exists(f"{s3_root}/b.png", so)


# --- transient errors, partial writes, listings that fail part-way (tests/faults runs them end to end)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (OSError(5, "InternalError (HTTP 500)"), True),
        (OSError("SlowDown: Please reduce your request rate"), True),
        (FileNotFoundError(2, "No such file"), False),
        (PermissionError(13, "Access Denied"), False),
        (OSError(28, "No space left on device"), False),
        (ValueError("Image size (500 pixels) is odd"), False),
    ],
)
def test_only_the_network_and_the_service_count_as_transient(error, transient):
    assert storage.is_transient(error) is transient


def test_transient_errors_are_retried_and_the_rest_raise_at_once(monkeypatch):
    monkeypatch.setattr(storage.backend, "RETRY_PAUSES", (0.0, 0.0))  # read where `_retrying` lives
    calls = []

    def flaky(fails: int, error: Exception):
        def call():
            calls.append(1)
            if len(calls) <= fails:
                raise error
            return "done"

        return call

    assert storage.backend._retrying(flaky(2, ConnectionResetError(104, "reset"))) == "done" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionResetError):  # one more failure than there are pauses: the last error stands
        storage.backend._retrying(flaky(3, ConnectionResetError(104, "reset")))
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(PermissionError):
        storage.backend._retrying(flaky(1, PermissionError(13, "denied")))
    assert len(calls) == 1


class _MvFails(fsspec.implementations.memory.MemoryFileSystem):
    """memory:// without atomic PUT (so writes go through a temporary sibling) whose rename fails."""

    protocol = "mvfails"

    def mv(self, path1, path2, **kwargs):
        raise OSError(28, "No space left on device")


def test_a_failed_write_leaves_no_temporary_file(monkeypatch):
    fsspec.register_implementation("mvfails", _MvFails, clobber=True)
    root = f"/{uuid.uuid4().hex}"  # memory filesystems share one store
    with pytest.raises(StorageError, match=r"writing mvfails://.*/a\.png failed: \[Errno 28\] No space left"):
        storage.write_bytes_atomic(f"mvfails://{root}/a.png", b"PNG")
    assert storage.list_files(f"mvfails://{root}") == []


class _SubFolderRefused(fsspec.implementations.memory.MemoryFileSystem):
    """memory:// that walks like the local filesystem (fsspec's generic find) and cannot list folders named sub."""

    protocol = "subrefused"
    find = fsspec.AbstractFileSystem.find

    def ls(self, path, detail=True, **kwargs):
        if path.rstrip("/").endswith("/sub"):
            raise PermissionError(13, "Permission denied")
        return super().ls(path, detail=detail, **kwargs)


def test_a_folder_that_cannot_be_listed_fails_the_listing_instead_of_shrinking_it():
    fsspec.register_implementation("subrefused", _SubFolderRefused, clobber=True)
    src = f"subrefused://{uuid.uuid4().hex}/src"  # memory filesystems share one store
    storage.write_bytes_atomic(f"{src}/a.png", b"A")
    storage.write_bytes_atomic(f"{src}/sub/b.png", b"B")
    with pytest.raises(StorageError, match=r"permission denied listing subrefused://.*/src"):
        listing_of(src)


def test_an_output_that_cannot_be_written_is_refused_before_anything_runs(tmp_path):
    storage.check_writable(str(tmp_path / "new" / "out"))  # created on the way, and no probe stays behind
    assert list((tmp_path / "new" / "out").iterdir()) == []
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match=r"cannot write to the output .*file.*check that it exists"):
        storage.check_writable(str(tmp_path / "file"))
