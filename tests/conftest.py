# --- S3 through a real moto server on 127.0.0.1 (tests of pipelines.storage / reports / flows) -------------------
import os as _os
import socket as _socket
import uuid as _uuid
from dataclasses import dataclass as _dataclass

import pytest as _pytest


@_dataclass(frozen=True)
class S3Server:
    """A running moto S3 server: its endpoint, the storage_options that reach it, and a bucket made for the tests."""

    endpoint_url: str
    storage_options: dict
    bucket: str

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts…>``."""
        return "/".join([f"s3://{self.bucket}", *parts])


def _free_port() -> int:
    with _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@_pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (a free port) for the whole session, with a bucket ``dipflow-test``.

    Sets fake AWS credentials and region in the environment (restored afterwards) so that nothing reaches a real
    account; pass ``s3_server.storage_options`` to pipelines.storage. Skips when moto or s3fs is not installed.
    """
    server_mod = _pytest.importorskip("moto.server")
    _pytest.importorskip("s3fs")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": _os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": _os.devnull,
    }
    with _pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        try:  # moto >= 5 reports the port it bound, so port 0 lets the OS choose
            server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
        except (AttributeError, TypeError):
            port = _free_port()
            server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            host = "127.0.0.1"
        endpoint = f"http://{host}:{port}"
        try:
            import s3fs

            options = {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"}
            bucket = "dipflow-test"
            s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir(bucket)
            yield S3Server(endpoint_url=endpoint, storage_options=options, bucket=bucket)
        finally:
            server.stop()


@_pytest.fixture
def s3_root(s3_server):
    """A fresh ``s3://dipflow-test/<uuid>`` prefix for one test."""
    return s3_server.url(_uuid.uuid4().hex)
