"""The serving side's check of its RPC workers, before anything starts: each worker is reachable,
is the same build (its HELLO identity equals this build's), reports a passed self-test, and says
how much memory its devices have free."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..build.manifest import Manifest
from ..errors import BinaryMissing, UsageError, WorkerError
from . import identity as ident
from . import protocol

HINTS = {
    "unreachable": "start it on that machine with turboctl worker (--host ADDRESS --allow-remote on a private "
                   "network, or through an SSH tunnel) and check the address, the port and the firewall",
    "no-identity": "a stock rpc-server cannot hold turbo KV caches: run turboctl build on that machine and start "
                   "turboctl worker there",
    "other-build": "build the same turboctl on both machines (turboctl build): the base commit, the patch series "
                   "and the turbo type ids must match",
    "version": "build the same turboctl on both machines (turboctl build)",
    "closed": "the worker closed the connection; its log says why (turboctl worker prints where it is)",
}


def build_identity(m: Manifest) -> ident.BuildIdentity:
    """The identity this build's RPC backend sends (recorded by ``turboctl build``)."""
    if m.rpc is None:
        raise BinaryMissing("this build has no RPC backend (it was made by a turboctl without one)",
                            hint="run turboctl build (it builds the RPC backend and the worker)")
    return ident.BuildIdentity(base=m.rpc.base, series=m.rpc.series, types=tuple(m.rpc.types.items()))


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoints(values: str | Sequence[str], *, option: str = "--rpc") -> tuple[Endpoint, ...]:
    """``HOST:PORT[,HOST:PORT...]`` (IPv6 as ``[addr]:port``), given once or several times."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[Endpoint] = []
    for raw in (p.strip() for item in items for p in item.split(",")):
        host, sep, port = raw.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                host = ""
        if not sep or not host or (":" in host and not raw.startswith("[")) or not port.isdigit() \
                or not 1 <= int(port) <= 65535:
            raise UsageError(f"{option} {raw!r}: expected HOST:PORT (e.g. 192.168.1.20:50052; IPv6 as [addr]:port)",
                             hint="turboctl worker prints the address to use")
        ep = Endpoint(host, int(port))
        if ep in out:
            raise UsageError(f"{option}: the worker {ep} is given twice")
        out.append(ep)
    if not out:
        raise UsageError(f"{option}: no worker given")
    return tuple(out)


def on_this_machine(ep: Endpoint) -> bool:
    """A worker on a loopback address shares this machine's memory (a test setup: the pooled
    budget counts that memory twice)."""
    if ep.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(ep.host).is_loopback
    except ValueError:
        return False


def loopback_note(endpoints: Sequence[Endpoint]) -> str | None:
    """The warning for workers on this machine, or None."""
    local = [str(ep) for ep in endpoints if on_this_machine(ep)]
    if not local:
        return None
    return (f"RPC worker(s) {', '.join(local)} run on this machine: their free memory is this machine's, counted "
            "again in the pooled budget (fine for a test, not for sizing a real split)")


@dataclass(frozen=True)
class WorkerStatus:
    endpoint: Endpoint
    identity: ident.BuildIdentity
    version: str
    devices: tuple[protocol.DeviceMemory, ...]

    @property
    def free(self) -> int:
        return sum(d.free for d in self.devices)

    @property
    def total(self) -> int:
        return sum(d.total for d in self.devices)

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": str(self.endpoint), "identity": self.identity.to_json(), "protocol": self.version,
                "self_test": self.identity.self_test,
                "devices": [{"index": i, "free_bytes": d.free, "total_bytes": d.total}
                            for i, d in enumerate(self.devices)]}


def check_worker(ep: Endpoint, mine: ident.BuildIdentity, *, timeout: float = protocol.TIMEOUT_S) -> WorkerStatus:
    try:
        with protocol.Connection(ep.host, ep.port, mine, timeout=timeout) as c:
            assert c.hello is not None
            devices = tuple(c.device_memory(i) for i in range(c.device_count()))
            hello = c.hello
    except protocol.ProtocolError as exc:
        details = [f"this build: {mine.describe()}"]
        if exc.worker is not None:
            details.append(f"worker:     {exc.worker.describe()}")
        raise WorkerError(f"RPC worker {ep} {exc}", hint=HINTS[exc.kind], details=details) from None
    except OSError as exc:
        raise WorkerError(f"RPC worker {ep}: the connection failed ({exc})", hint=HINTS["closed"]) from None
    record = hello.identity.self_test
    if not record.startswith("pass "):
        raise WorkerError(f"RPC worker {ep} reports no passed self-test ({record or 'none reported'})",
                          hint="start it with turboctl worker: it starts only after the build's self-test passed")
    if not devices:
        raise WorkerError(f"RPC worker {ep} has no device", hint="start it with turboctl worker")
    return WorkerStatus(ep, hello.identity, ".".join(map(str, hello.version)), devices)


def check_workers(endpoints: Sequence[Endpoint], mine: ident.BuildIdentity, *,
                  timeout: float = protocol.TIMEOUT_S) -> list[WorkerStatus]:
    """Every worker checked, in order; the first that cannot be used is the error."""
    return [check_worker(ep, mine, timeout=timeout) for ep in endpoints]
