"""No credential reaches what a run leaves behind: Prefect's home and database, the outputs, the Parquet report, the
HTML page, the logs and the console — whatever its spelling (``user:password@`` in a URL, a signed query, a secret
storage option, an endpoint URL with a password)."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from pipelines import storage


@pytest.mark.parametrize(
    ("options", "secret_paths"),
    [
        ({"client_kwargs": {"endpoint_url": "http://minio:S3CRET@host:9000"}}, [("client_kwargs", "endpoint_url")]),
        ({"client_kwargs": {"endpoint_url": "http://host:9000"}}, []),
        ({"headers": {"X-Api-Token": "t", "Accept": "image/png"}}, [("headers", "X-Api-Token")]),
        ({"url": "https://h/x?X-Amz-Signature=abc", "anon": True}, [("url",)]),
    ],
)
def test_a_value_holding_a_credential_is_a_secret_option(options, secret_paths):
    plain, secret = storage.split_secret_options(options)
    for path in secret_paths:
        node = secret
        for part in path:
            node = node[part]
    assert storage.redact(json.dumps(plain)) == json.dumps(plain)  # nothing left in the plain half to redact


def test_url_secrets_maps_redacted_urls_back():
    urls = ["http://u:pw@h/src", "/local/out", None, "https://h/x.png?sig=abc"]
    assert storage.url_secrets(urls) == {"http://***@h/src": urls[0], "https://h/x.png?sig=***": urls[3]}
    with pytest.raises(storage.StorageOptionError):
        storage.url_secrets(["http://u:a@h/x", "http://u:b@h/x"])


def test_a_flow_given_a_redacted_url_without_the_real_one_refuses_it():
    from pipelines import credentials, flows

    with pytest.raises(storage.StorageOptionError, match="redacted URL"):
        credentials.real_url("http://***@host/src")
    with flows.storage_credentials(None, {"http://***@host/src": "http://u:p@host/src"}):
        assert credentials.real_url("http://***@host/src") == "http://u:p@host/src"
    assert credentials.real_url("/plain/path") == "/plain/path"


def _basic_auth_server(directory: Path, user: str, password: str) -> http.server.ThreadingHTTPServer:
    """A static HTTP server on 127.0.0.1 that answers only requests with these Basic credentials."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def _allowed(self) -> bool:
            if self.headers.get("Authorization") == expected:
                return True
            self.send_response(401)
            self.end_headers()
            return False

        def do_GET(self) -> None:
            if self._allowed():
                super().do_GET()

        def do_HEAD(self) -> None:
            if self._allowed():
                super().do_HEAD()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _files_holding(roots: list[Path], secrets: list[bytes]) -> list[str]:
    hits = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:  # a socket, a file Ray removed meanwhile
                    continue
                hits += [f"{path}: {s.decode()}" for s in secrets if s in data]
    return hits


@pytest.mark.slow
def test_a_real_run_leaves_no_credential_anywhere(tmp_path, write_images):
    """`dipflow restore` in a fresh process (ephemeral Prefect server, its own PREFECT_HOME and SQLite database,
    a private Ray) reads an image over HTTP with ``user:password@`` in the URL and a signed query, plus a secret
    header option; then every byte the run left is searched for the three secrets."""
    password, signature, token = (f"{kind}{uuid.uuid4().hex}" for kind in ("pw", "sig", "tok"))
    secrets = [s.encode() for s in (password, signature, token)]
    write_images(str(tmp_path / "www" / "src"), ["a.png"], size=16)
    server = _basic_auth_server(tmp_path / "www", "reader", password)
    host, port = server.server_address[:2]
    source = f"http://reader:{password}@{host}:{port}/src/a.png?X-Amz-Signature={signature}"
    home, out = tmp_path / "prefect-home", tmp_path / "out"
    ray_tmp = Path(tempfile.mkdtemp(prefix="dr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DIPFLOW_"))}
    env.update(PREFECT_HOME=str(home), RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(Path(__file__).parents[1]))
    argv = [sys.executable, "-m", "pipelines.cli", "restore", source, "-o", str(out), "--task", "denoise"]
    argv += ["--preset", "fast", "--iterations", "2", "--channels", "8", "--workers", "1", "--json", "--verbose"]
    argv += ["--storage-option", f"headers.X-Api-Token={token}"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=480, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        assert (summary["ok"], summary["error"]) == (1, 0), summary
        (tmp_path / "console.txt").write_text(done.stdout + done.stderr)
        assert (out / "a.png").is_file() and list((out / "html").rglob("index.html"))
        database = [p for p in home.rglob("*") if p.is_file() and b"***@127.0.0.1" in p.read_bytes()]
        assert database, "the flow run's redacted parameters should be in Prefect's database"
        assert _files_holding([home, out, ray_tmp, tmp_path / "console.txt"], secrets) == []
    finally:
        server.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
