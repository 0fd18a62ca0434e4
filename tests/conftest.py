# --- S3 through a real moto server on 127.0.0.1 (tests of pipelines.storage / reports / flows) -------------------
import os as _os
import socket as _socket
import tempfile as _tempfile
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


@_pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(root URL, storage options) of an empty folder, once a local one and once a prefix on the moto S3 server."""
    if request.param == "local":
        return str(tmp_path / "root"), None
    server = request.getfixturevalue("s3_server")
    return request.getfixturevalue("s3_root"), server.storage_options


# --- Ray and Prefect for the pipelines tests: one local Ray instance and one Prefect harness per session ----------

# Before Ray or Prefect is imported anywhere: no usage reports, Prefect's home and database in a temp dir. Not
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: users do not set it, and dipflow binds loopback without it (start_ray).
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
_XDIST_WORKER = _os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", … under pytest-xdist (`make test`)
if _XDIST_WORKER:
    # One intra-op thread per worker: two workers' OpenMP pools of two threads each on two cores spin against each
    # other (measured: a 12 s fit took 76 s), the pytest-xdist suite then no faster than the serial one.
    _os.environ["OMP_NUM_THREADS"] = "1"
# A Prefect home of its own for each worker: the workers inherit the controller's environment, and two Prefect
# servers on one home would share its SQLite database.
if _XDIST_WORKER or "PREFECT_HOME" not in _os.environ:
    _os.environ["PREFECT_HOME"] = _tempfile.mkdtemp(prefix=f"dipflow-prefect-home-{_XDIST_WORKER or 'main'}-")
# As the CLI does (`cli._engine_env`): Prefect's 20 s for its ephemeral server is short on a busy 2-core runner.
_os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

_RAY_TEST_OPTIONS = {"num_cpus": 2, "object_store_memory": 128 * 1024 * 1024}


@_pytest.fixture(scope="session")
def ray_session():
    """A private local Ray instance (2 CPUs, no GPU, loopback) shared by the whole session; shut down at its end."""
    ray = _pytest.importorskip("ray")
    from pipelines.execution import workers

    workers.start_ray(**_RAY_TEST_OPTIONS)
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@_pytest.fixture
def ray_local(ray_session):
    """The session's local Ray instance, started again if a test (the multi-node cluster one) replaced it."""
    if not ray_session.is_initialized():
        from pipelines.execution import workers

        workers.start_ray(**_RAY_TEST_OPTIONS)
    return ray_session


@_pytest.fixture
def test_cluster(monkeypatch):
    """`ray.cluster_utils.Cluster` (several nodes, logical resources), kept off the machine's Ray address file:
    Cluster writes /tmp/ray/ray_current_cluster and deletes it on shutdown, and that file is what `ray start` leaves
    for `--ray-address auto` (tests/test_deploy_laptop.py, on another xdist worker at the same time). Shut down
    after."""
    _pytest.importorskip("ray")
    import ray._common.utils
    import ray._private.utils
    from ray.cluster_utils import Cluster

    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
    monkeypatch.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
    clusters: list = []

    def make(**head_node_args):
        # no dashboard: with Ray's `default` extra installed it would take 8265, the documented head's port
        head_node_args.setdefault("include_dashboard", False)
        clusters.append(Cluster(initialize_head=True, head_node_args=head_node_args))
        return clusters[-1]

    yield make
    for cluster in clusters:
        cluster.shutdown()


@_pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server with a temporary database for every flow of the session."""
    utilities = _pytest.importorskip("prefect.testing.utilities")
    with utilities.prefect_test_harness(server_startup_timeout=180):
        yield


@_pytest.fixture
def write_images():
    """``write_images(root, keys, size=32, storage_options=None)``: smooth RGB PNGs (a different one per key) at
    ``<root>/<key>`` through pipelines.storage, so any fsspec URL works; returns the URLs."""
    import numpy as np

    import dipcore
    from pipelines import storage

    def write(root, keys, size=32, storage_options=None):
        yy, xx = np.mgrid[0:size, 0:size] / size
        uris = []
        for i, key in enumerate(keys):
            image = np.stack([xx, yy, (xx + yy) * (i + 1) / (2 * len(keys))], axis=-1).astype(np.float32)
            uri = f"{root.rstrip('/')}/{key}"
            storage.write_bytes_atomic(uri, dipcore.encode_png(image), storage_options)
            uris.append(uri)
        return uris

    return write


@_pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    more threads only add overhead there, badly so on a loaded 2-core CI machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@_pytest.fixture
def keep_torch_threads():
    """Gives torch's thread count back after a test that sets it (a `Restorer(threads=…)`, for instance)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
