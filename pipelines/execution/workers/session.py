"""Ray for a run: a private instance on the loopback interface, or a cluster joined within a connect timeout
(``auto`` from ``ray start``'s address file, a head on loopback joined on loopback); `check_cluster`, what a run asks
before it writes anything; the caller's SIGTERM handler kept through ``ray.init``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError

from pipelines import signals, storage
from pipelines.errors import RayConnectError, WorkerStartError
from pipelines.execution import reach
from pipelines.execution.workers.messages import first_line

if TYPE_CHECKING:
    from pipelines.execution.options import Execution


def start_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
    connect_timeout: float = 30.0,
) -> bool:
    """Join the cluster at `address` (``auto``, ``host:6379``, ``ray://head:10001``; None: ``RAY_ADDRESS`` when it
    is set) within `connect_timeout` seconds (`RayConnectError` otherwise, see `_join`), or start a private local
    instance when it is None/"local": every process of it listening on the loopback interface only
    (`_loopback_node`; `WorkerStartError` if Ray bound another address), no dashboard, no usage reports,
    `num_cpus`/`num_gpus` as given (Ray 2.60 guards its ports with token authentication). The SIGTERM handler of
    the caller survives ``ray.init`` (`_keep_sigterm_handler`). Returns True when this call connected (so the caller
    shuts Ray down), False when Ray was already up in this process (its owner shuts it down)."""
    if ray.is_initialized():
        return False
    common = {"logging_level": logging.ERROR, "log_to_driver": False}  # Ray's warnings would tear the progress bar
    with _keep_sigterm_handler(), _shut_down_if_interrupted():
        target = _resolve(address)
        if target is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a private instance reports nothing anywhere
            with _loopback_node(), _any_agent_port():
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    object_store_memory=object_store_memory,
                    include_dashboard=False,
                    **common,
                )
            node_ip = ray.util.get_node_ip_address()
            if node_ip not in _LOOPBACK:
                ray.shutdown()
                raise WorkerStartError(f"the private Ray instance bound {node_ip}, not the loopback interface")
        else:
            _join(target, time.monotonic() + connect_timeout, common)
    return True


@contextlib.contextmanager
def _any_agent_port() -> Iterator[None]:
    """While a private instance starts, its dashboard agent (Ray's `default` extra) listens on a free port, not on
    Ray's fixed default 52365: that one is a head's on this machine (docs/deploy.md section 1: Ray Jobs go through
    it), and two private runs would contend for it. ``ray.init`` has no option for it; the private ``RayParams`` it
    builds is given none (Ray then lets the OS pick), and given back afterwards."""
    from ray._private import parameter

    original = parameter.RayParams

    class _Params(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("dashboard_agent_listen_port", None)
            super().__init__(*args, **kwargs)

    parameter.RayParams = _Params
    try:
        yield
    finally:
        parameter.RayParams = original


def check_run_cluster(ex: Execution, paths: Iterable[str | None]) -> None:
    """A run's checks before it writes anything or starts Prefect's server: the cluster `ex` joins answers
    (`check_cluster`) and can reach the run's local `paths` (`reach.check_local_paths`). The CLI asks them, and the
    flows again (a deployment's run has no CLI before it)."""
    nodes = check_cluster(ex.ray_address, ex.ray_connect_timeout)
    local = [storage.redact(u) for u in dict.fromkeys(paths) if u is not None and storage.is_local(u)]
    reach.check_local_paths(local, ex.ray_address, nodes, ex.local_paths_shared)


def check_cluster(address: str | None, connect_timeout: float = 30.0) -> int | None:
    """`RayConnectError` unless the cluster that `start_ray(address)` would join answers within `connect_timeout`
    seconds; what a run asks before it writes anything, connecting nothing. Returns how many nodes the cluster has
    alive now — None for a private instance (nothing to ask) and for Ray Client (its head does not say)."""
    target = _resolve(address)
    if target is None:
        return None
    alive = _probe(target, time.monotonic() + connect_timeout)
    return None if target.client else len(alive)


def _resolve(address: str | None) -> reach.Target | None:
    """The cluster `address` means, or None for a private instance. ``auto`` (and None) take ``RAY_ADDRESS`` when
    it is set, as ``ray.init`` does; ``auto`` then the address file the last ``ray start`` on this machine wrote
    (``/tmp/ray/ray_current_cluster``). Unlike ``ray.init``, ``auto`` never falls back to any GCS process found
    running here: that could be another user's private dipflow instance."""
    if address == "local":
        return None
    if address not in (None, "auto"):
        reach.split(address)  # a malformed one is said before anything else
        return reach.Target(address, address, "given")
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        reach.split(env)
        return reach.Target(address, env, "RAY_ADDRESS")
    if address is None and env != "auto":
        return None
    from ray._private.utils import get_ray_address_file, read_ray_address  # Ray's own reader of its address file

    where = get_ray_address_file(None)
    found = read_ray_address(None)
    if not found:
        raise RayConnectError(
            f"no Ray cluster to join for the address auto: {where} does not exist (`ray start --head` writes it on "
            "the machine it runs on); start a head as docs/deploy.md says, give its host:port, or leave the Ray "
            "address out to run on a private Ray on this machine"
        )
    return reach.Target(address or "RAY_ADDRESS=auto", found, where)


def _probe(target: reach.Target, deadline: float) -> list[str]:
    """Wait until the head answers (TCP, then its GCS lists its nodes; Ray Client: TCP only) or `deadline`
    passes. Returns the addresses of the cluster's nodes alive now (Ray Client: none known)."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.exceptions import AuthenticationError

    if target.source != "given":  # as ray.init does for a cluster it found itself: a token on file is used
        quiet = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its warning that token mode is on would be a second line on stderr
        try:
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        finally:
            quiet.setLevel(level)
    reach.wait_reachable(target, deadline)
    if target.client:
        return []
    while True:
        try:  # Ray's own client: blocks up to 5 s when something that is not a head listens there
            nodes = GcsClient(address=target.address).get_all_node_info(timeout=max(1, deadline - time.monotonic()))
            alive = [n.node_manager_address for n in nodes.values() if n.state == GcsNodeInfo.ALIVE]
            break
        except AuthenticationError:
            raise reach.fail(
                target,
                "the head refused this driver's token",
                "that RAY_AUTH_MODE=token is set here and the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                "~/.ray/auth_token) is the head's",
            ) from None
        except Exception as exc:  # noqa: BLE001 - a head still starting, or no head: retried until the deadline
            if time.monotonic() >= deadline:
                raise reach.fail(
                    target,
                    f"the port answers but not as a Ray head ({first_line(exc)})",
                    "that the port is the one `ray start --head` printed (GCS, 6379 by default)",
                ) from None
            time.sleep(0.5)
    return alive


def _join(target: reach.Target, deadline: float, common: dict[str, Any]) -> None:
    """``ray.init`` on the cluster `target`, once `_probe` has found its head.

    A head on this machine's loopback interface (docs/deploy.md, section 1) is joined on loopback: given
    ``127.0.0.1:6379`` or its address file, ``ray.init`` turns the host into this machine's routable address
    (``services.canonicalize_bootstrap_address`` → ``resolve_ip_for_localhost``), where that head does not listen,
    and retries for minutes — unless Ray's single-machine mode is on, which `_loopback_node` switches on for the
    connection; the driver's node address is then the head's (``_node_ip_address``), so Ray attaches it to that
    node. Any other head is joined as Ray joins it."""
    alive = _probe(target, deadline)
    # a head on this machine started with --node-ip-address=127.0.0.1, given by a loopback address
    loopback = next((ip for ip in alive if reach.is_loopback(ip)), None) if reach.is_loopback(target.host) else None
    try:
        if loopback is not None:
            with _loopback_node():
                port = target.port
                host = f"[{loopback}]" if ":" in loopback else loopback
                ray.init(address=f"{host}:{port}", _node_ip_address=loopback, **common)
        else:
            ray.init(address=target.address, **common)
    except (ConnectionError, RuntimeError, RayError) as exc:
        raise reach.fail(
            target, f"its head answered, but ray.init failed ({first_line(exc)})", "the head's log"
        ) from None


@contextlib.contextmanager
def _shut_down_if_interrupted() -> Iterator[None]:
    """A ``ray.init`` stopped half way (Ctrl-C, SIGTERM, an error) has started processes that no caller will shut
    down (`start_ray` did not return): they are shut down here."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise


_LOOPBACK = ("127.0.0.1", "::1")
_RAY_CLUSTER_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While a private instance starts, the node's address is the loopback one, whatever the environment says.

    Ray 2.60 has no public option for it. The node's address decides every listener: GCS, raylet, workers and driver
    bind it (their gRPC servers bind every interface for any address but loopback), and so do the runtime-env agent
    and the autoscaler monitor's metrics. ``ray.init(_node_ip_address="127.0.0.1")`` does not help:
    ``services.resolve_ip_for_localhost`` turns a loopback address into the host's routable one unless
    ``ray_constants.ENABLE_RAY_CLUSTER`` is false — the constant behind ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    (Ray's "no multi-node cluster" mode), read once when Ray is imported, so the variable set afterwards changes
    nothing in this process. Both are set here for the start: the constant for the driver, the variable for the
    Python processes Ray starts (they read it at their own import); both are given back afterwards, since a driver
    that joins a real cluster later in this process needs its routable address. `start_ray` checks the outcome."""
    from ray._private import ray_constants  # a private module: start_ray checks the address Ray ended up with

    constant, variable = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True), os.environ.get(_RAY_CLUSTER_VAR)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[_RAY_CLUSTER_VAR] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = constant
        if variable is None:
            os.environ.pop(_RAY_CLUSTER_VAR, None)
        else:
            os.environ[_RAY_CLUSTER_VAR] = variable


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """The process's SIGTERM handler before ``ray.init`` is its handler during and after it.

    ``ray.init`` replaces it three times: in Python with ``sys.exit(15)`` (and, for the head node it starts, a handler
    that kills Ray's processes and exits 1), both through ``ray._private.utils.set_sigterm_handler``; and in C, when
    the driver's core worker starts, with absl's failure-signal handler, which prints a native stack dump and aborts
    (exit 134), unless ``ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER``. Restoring the handler afterwards
    left a window of seconds (a SIGTERM then ended `dipflow` with 15, 1 or an abort): while ``ray.init`` runs, the
    Python setter does nothing and the constant is set (both private to Ray 2.60, read when called, given back
    afterwards; the driver loses absl's dump of its own crashes, its workers keep theirs); ``signal.signal`` then
    installs the caller's handler again, in C too. Signals are set from the main thread only; elsewhere (or when
    the handler was not set from Python) nothing changes."""
    from ray._private import ray_constants
    from ray._private import utils as ray_utils

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    setter, native = ray_utils.set_sigterm_handler, getattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", False)
    if main:
        ray_utils.set_sigterm_handler = lambda handler: None
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler, ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = setter, native
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def ray_session(address: str | None = None, connect_timeout: float = 30.0) -> Iterator[None]:
    """Ray for the length of the block, joined or started by `start_ray`; shut down at its end only when this block
    connected (a Ray that was already up in this process belongs to whoever started it)."""
    started = start_ray(address, connect_timeout=connect_timeout)
    try:
        yield
    finally:
        if started:
            with signals.deferred():  # a shutdown stopped half way leaves Ray's processes to the watchdog
                ray.shutdown()
