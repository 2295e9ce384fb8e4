"""The few RPC commands turboctl speaks to a worker itself, before llama-server does: the
HELLO with the build identity, the device count and each device's memory.

Wire format of llama.cpp's RPC protocol (little-endian): a request is ``cmd:u8 size:u64
payload``, a response ``size:u64 payload``. The HELLO of a patched build carries
``conn_caps[24]`` plus the build identity (:mod:`turboctl.workers.identity`); its answer
``major minor patch pad:u8 conn_caps[24]`` plus the worker's identity. A stock worker refuses
that HELLO by its size and closes the connection; a patched worker of another build answers with
its identity and then closes it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from . import identity as ident

CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS = 24
PROTO_MAJOR = 7
STOCK_HELLO_REQ = CONN_CAPS
STOCK_HELLO_RSP = 4 + CONN_CAPS
HELLO_REQ = CONN_CAPS + ident.SIZE
HELLO_RSP = 4 + CONN_CAPS + ident.SIZE
TIMEOUT_S = 10.0


class ProtocolError(Exception):
    """The worker did not answer as a patched worker of this build (the message says how)."""

    def __init__(self, message: str, *, kind: str, worker: ident.BuildIdentity | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        """``unreachable``, ``no-identity`` (a stock worker, or a build without the series),
        ``other-build``, ``version``, ``closed`` (the connection ended mid-answer)."""
        self.worker = worker


@dataclass(frozen=True)
class DeviceMemory:
    free: int
    total: int


@dataclass(frozen=True)
class Hello:
    version: tuple[int, int, int]
    identity: ident.BuildIdentity


def request(cmd: int, payload: bytes = b"") -> bytes:
    return struct.pack("<BQ", cmd, len(payload)) + payload


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def _answer(sock: socket.socket, size: int, what: str) -> bytes:
    try:
        (got,) = struct.unpack("<Q", _recv(sock, 8))
        if got != size:
            raise ProtocolError(f"answered {what} with {got} bytes, expected {size}", kind="other-build")
        return _recv(sock, size)
    except EOFError as exc:
        raise ProtocolError(f"closed the connection during {what} ({exc})", kind="closed") from None


class Connection:
    """One connection to a worker, after a successful HELLO (``with Connection(...) as c``)."""

    def __init__(self, host: str, port: int, mine: ident.BuildIdentity, timeout: float = TIMEOUT_S) -> None:
        self.host, self.port, self.mine, self.timeout = host, port, mine, timeout
        self.sock: socket.socket | None = None
        self.hello: Hello | None = None

    def __enter__(self) -> Connection:
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise ProtocolError(f"cannot connect: {exc.strerror or exc}", kind="unreachable") from None
        try:
            self.hello = self._hello()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _hello(self) -> Hello:
        assert self.sock is not None
        try:
            self.sock.sendall(request(CMD_HELLO, bytes(CONN_CAPS) + self.mine.pack()))
            head = _recv(self.sock, 8)
        except (EOFError, ConnectionError):
            raise ProtocolError("closed the connection at HELLO: a stock rpc-server or a build without the "
                                "TurboQuant series (no build identity)", kind="no-identity") from None
        except TimeoutError:
            raise ProtocolError(f"no answer to HELLO within {self.timeout:g} s (is it an RPC worker?)",
                                kind="unreachable") from None
        (size,) = struct.unpack("<Q", head)
        if size != HELLO_RSP:
            kind = "no-identity" if size == STOCK_HELLO_RSP else "other-build"
            raise ProtocolError(f"answered HELLO with {size} bytes, not {HELLO_RSP}: "
                                + ("a HELLO without a build identity" if kind == "no-identity" else "another build"),
                                kind=kind)
        try:
            data = _recv(self.sock, size)
        except EOFError:
            raise ProtocolError("closed the connection during HELLO", kind="closed") from None
        major, minor, patch, _pad = struct.unpack_from("<BBBB", data)
        try:
            theirs = ident.unpack(data[4 + CONN_CAPS:])
        except ident.IdentityError as exc:
            raise ProtocolError(f"sent a malformed build identity ({exc})", kind="other-build") from None
        if theirs is None:
            raise ProtocolError("sent no build identity", kind="no-identity")
        if major != PROTO_MAJOR:
            raise ProtocolError(f"speaks RPC protocol {major}.{minor}.{patch}, this build {PROTO_MAJOR}.x",
                                kind="version", worker=theirs)
        if not theirs.same_build(self.mine):
            raise ProtocolError("is another build: " + "; ".join(self.mine.differences(theirs))
                                + " (this build vs the worker)", kind="other-build", worker=theirs)
        return Hello((major, minor, patch), theirs)

    def device_count(self) -> int:
        assert self.sock is not None
        self.sock.sendall(request(CMD_DEVICE_COUNT))
        (n,) = struct.unpack("<I", _answer(self.sock, 4, "DEVICE_COUNT"))
        return int(n)

    def device_memory(self, device: int) -> DeviceMemory:
        assert self.sock is not None
        self.sock.sendall(request(CMD_GET_DEVICE_MEMORY, struct.pack("<I", device)))
        free, total = struct.unpack("<QQ", _answer(self.sock, 16, "GET_DEVICE_MEMORY"))
        return DeviceMemory(int(free), int(total))
