"""A store that refuses an operation says which URL (redacted), which operation and what to check — on S3 with
wrong credentials (a moto server that enforces authentication) and on a local folder that cannot be read."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
from whole_plan import listing as listing_of

from pipelines import cli, storage


@pytest.fixture(scope="module")
def strict_s3():
    """A moto S3 server in its own process that checks every request's credentials (INITIAL_NO_AUTH_ACTION_COUNT=0:
    no request passes unauthenticated), on a free port of 127.0.0.1; yields its endpoint."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the moto server did not start")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def wrong_credentials(strict_s3, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    secret = f"wrong{uuid.uuid4().hex}"
    return secret, {"key": "AKIDWRONG", "secret": secret, "client_kwargs": {"endpoint_url": strict_s3}}


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("listing", lambda url, so: listing_of(url, storage_options=so)),
        ("listing", lambda url, so: storage.list_files(url, so)),
        ("reading", lambda url, so: storage.read_bytes(f"{url}/a.png", so)),
        ("writing", lambda url, so: storage.write_bytes_atomic(f"{url}/a.png", b"x", so)),
        ("checking", lambda url, so: storage.exists(f"{url}/a.png", so)),
    ],
)
def test_wrong_s3_credentials_say_url_operation_and_what_to_check(wrong_credentials, operation, call):
    secret, so = wrong_credentials
    url = "s3://dipflow-denied/data"
    with pytest.raises(storage.StorageAccessError) as raised:
        call(url, so)
    message = str(raised.value)
    assert message.startswith(f"permission denied {operation} {url}")
    assert "check the credentials" in message and "endpoint" in message and "bucket's policy" in message
    assert secret not in message and raised.value.__cause__ is None
    assert isinstance(raised.value, PermissionError)  # code that catches the built-in keeps working


@pytest.mark.usefixtures("prefect_harness")
def test_the_cli_names_the_refused_listing_in_one_line(wrong_credentials, tmp_path, capsys, monkeypatch):
    secret, so = wrong_credentials
    monkeypatch.delenv("DIPFLOW_DEBUG", raising=False)
    argv = ["restore", "s3://dipflow-denied/data", "-o", str(tmp_path / "out"), "--task", "denoise", "--quiet"]
    argv += ["--storage-option", "key=AKIDWRONG", "--storage-option", f"secret={secret}"]
    argv += ["--storage-option", f"client_kwargs.endpoint_url={so['client_kwargs']['endpoint_url']}"]
    assert cli.main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dipflow: error: permission denied listing s3://dipflow-denied/data")
    assert "check the credentials" in lines[0] and secret not in lines[0]


def test_an_unreadable_local_folder_says_so(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    (tmp_path / "src").mkdir()

    def refuse(self, path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(LocalFileSystem, "find", refuse)
    with pytest.raises(storage.StorageAccessError) as raised:
        listing_of(str(tmp_path / "src"))
    message = str(raised.value)
    assert message.startswith(f"permission denied listing {tmp_path / 'src'}")
    assert "check the permissions of the file or folder" in message


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any folder")
def test_a_folder_without_read_permission_says_so(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"x")
    src.chmod(0)
    try:
        with pytest.raises(storage.StorageAccessError, match="permission denied listing"):
            listing_of(str(src))
    finally:
        src.chmod(0o755)
