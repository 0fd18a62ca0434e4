"""Whether the Ray cluster a run was given can be reached, and the one line that says why not.

Stdlib only: `pipelines.execution.workers` resolves the address (``auto``, ``RAY_ADDRESS``) and asks the head with
Ray's own client; what is here is the part that needs no Ray — where an address came from, its host and port,
whether a TCP connection opens before a deadline, the message that names the address, what was tried and what
to check, and whether the cluster's workers can reach the run's local paths.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass

from pipelines.errors import LocalPathError, RayConnectError

__all__ = [
    "LocalPathError",
    "RayConnectError",
    "Target",
    "check_local_paths",
    "fail",
    "is_loopback",
    "split",
    "wait_reachable",
]

_CLIENT = "ray://"


@dataclass(frozen=True)
class Target:
    """A cluster to join: `address` (``host:port``, or ``ray://host:port`` for Ray Client) and where it came from
    (`source`: "given", "RAY_ADDRESS", or the address file that ``ray start`` writes)."""

    given: str | None
    address: str
    source: str

    @property
    def client(self) -> bool:
        return self.address.startswith(_CLIENT)

    @property
    def host(self) -> str:
        return split(self.address)[0]

    @property
    def port(self) -> int:
        return split(self.address)[1]

    def named(self) -> str:
        """The address as the user can recognise it: what they gave, and what it stood for."""
        if self.source == "given":
            return self.address
        return f"{self.address} ({self.given or 'no address'} → {self.source})"


def split(address: str) -> tuple[str, int]:
    """(host, port) of ``host:port``, ``[v6]:port`` or ``ray://host:port``; `RayConnectError` when it is none."""
    rest = address.removeprefix(_CLIENT)
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayConnectError(
            f"the Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379), ray://host:port, auto or local"
        )
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def fail(target: Target, what: str, check: str) -> RayConnectError:
    """The one line: the address, what was tried and happened, what to check."""
    return RayConnectError(f"cannot join the Ray cluster at {target.named()}: {what}; check {check}")


def wait_reachable(target: Target, deadline: float) -> None:
    """Return once a TCP connection to the target opens; `RayConnectError` at `deadline` (monotonic) with the last
    reason. Waits in short sleeps, so a signal stops it at once."""
    host, port = split(target.address)
    started, last = time.monotonic(), "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, left))):
                return
        except socket.gaierror as exc:  # a name that does not resolve will not start to
            raise fail(target, f"the host {host!r} is unknown ({exc.strerror})", "the host name") from None
        except OSError as exc:
            last = exc.strerror or type(exc).__name__
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    waited = time.monotonic() - started
    head = f"`ray status --address {target.address}` on the head" if not target.client else "its Ray Client server"
    if target.source not in ("given", "RAY_ADDRESS"):
        head += f"; {target.source} outlives the head that wrote it"
    raise fail(
        target,
        f"{last.lower()} for {waited:.0f} s (TCP to port {port})",
        f"that its head runs ({head}), the address and port that `ray start --head` printed, "
        "and that no firewall is in between; or leave the Ray address out to run on a private Ray on this machine",
    )


def check_local_paths(local: list[str], address: str | None, nodes: int | None, shared: bool) -> None:
    """`LocalPathError` for the run's `local` paths (redacted) where its workers may run on other machines — a
    cluster of `nodes` > 1, or Ray Client (``ray://``: the driver is not a node) — unless `shared` says every node
    mounts them. A private Ray, or a head alone on this machine, has one node: its paths are this machine's."""
    client = (address or "").startswith(_CLIENT)
    if not local or shared or ((nodes or 1) <= 1 and not client):
        return
    what = f"{local[0]} is a local path" if len(local) == 1 else f"{', '.join(local)} are local paths"
    if client:
        where = f"Ray Client ({address}) runs the workers on the cluster"
    else:
        where = f"the Ray cluster{f' at {address}' if address else ''} has {nodes} nodes"
    raise LocalPathError(
        f"{what}, but {where}: each node would read and write its own disk. Use object storage (s3://bucket/…, "
        "gs://…), or pass --local-paths-shared (execution.local_paths_shared) if every node mounts the path at "
        "the same place (NFS)"
    )
