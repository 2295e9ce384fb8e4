"""A fake RPC worker on loopback for the fast tests, speaking the HELLO of llama.cpp's RPC protocol
the way a stock b11312 rpc-server does (``stock``: it refuses a HELLO whose size is not the stock
24 bytes by closing the connection) or the way the patched one does (``patched``: it answers the
identity HELLO with its own identity, then closes the connection when the client's identity
differs; DEVICE_COUNT and GET_DEVICE_MEMORY answered), or not at all (``silent``).

The real worker is exercised by the integration tests; this one stands in where no build runs.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from turboctl.workers import identity as ident
from turboctl.workers import protocol

_DEVICE_MEMORY = [(3 << 30, 8 << 30)]


@dataclass
class FakeWorker:
    mode: str
    identity: ident.BuildIdentity
    devices: list[tuple[int, int]] = field(default_factory=lambda: list(_DEVICE_MEMORY))
    hellos: list[ident.BuildIdentity | None] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    port: int = 0

    def handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                cmd, size = struct.unpack("<BQ", protocol._recv(conn, 9))
                self.sizes.append(size)
                if self.mode == "silent":
                    while conn.recv(4096):  # read all, answer nothing, until the client gives up
                        pass
                    return
                if cmd != protocol.CMD_HELLO:
                    return
                if self.mode == "stock":
                    if size != protocol.STOCK_HELLO_REQ:
                        return  # "HELLO request size mismatch": the connection is closed
                    protocol._recv(conn, size)
                    conn.sendall(struct.pack("<Q", protocol.STOCK_HELLO_RSP) + bytes([7, 0, 0, 0])
                                 + bytes(protocol.CONN_CAPS))
                    return
                payload = protocol._recv(conn, size)
                theirs = ident.unpack(payload[protocol.CONN_CAPS:])
                self.hellos.append(theirs)
                conn.sendall(struct.pack("<Q", protocol.HELLO_RSP) + bytes([7, 0, 0, 0]) + bytes(protocol.CONN_CAPS)
                             + self.identity.pack())
                if theirs is None or not theirs.same_build(self.identity):
                    return
                while True:
                    cmd, size = struct.unpack("<BQ", protocol._recv(conn, 9))
                    body = protocol._recv(conn, size)
                    if cmd == protocol.CMD_DEVICE_COUNT:
                        conn.sendall(struct.pack("<QI", 4, len(self.devices)))
                    elif cmd == protocol.CMD_GET_DEVICE_MEMORY:
                        (dev,) = struct.unpack("<I", body)
                        conn.sendall(struct.pack("<QQQ", 16, *self.devices[dev]))
                    else:
                        return
            except (EOFError, OSError):
                return


def serve(fw: FakeWorker, srv: socket.socket, stop: threading.Event) -> None:
    """Accept connections until ``stop`` is set, one thread per connection."""
    srv.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        conn.settimeout(5)
        threading.Thread(target=fw.handle, args=(conn,), daemon=True).start()


@contextmanager
def fake_worker(mode: str, identity: ident.BuildIdentity, port: int = 0) -> Iterator[FakeWorker]:
    fw = FakeWorker(mode, identity)
    srv = socket.create_server(("127.0.0.1", port))
    fw.port = srv.getsockname()[1]
    stop = threading.Event()

    t = threading.Thread(target=serve, args=(fw, srv, stop), daemon=True)
    t.start()
    try:
        yield fw
    finally:
        stop.set()
        t.join(timeout=2)
        srv.close()


def main(argv: list[str], identity_file: str) -> int:
    """The fake ``ggml-rpc-server`` of :func:`tests.unit.fakebuild.fake_build`: ``-H HOST -p PORT``;
    its identity is the JSON in ``FAKE_RPC_IDENTITY`` or else in ``identity_file``, its mode
    ``FAKE_RPC_MODE`` (default patched; ``exit`` stops at once with code 3). It prints its
    self-test record as rpc-server does."""
    import json
    import os
    import sys

    host, port = "127.0.0.1", 50052
    for i, a in enumerate(argv):
        if a == "-H":
            host = argv[i + 1]
        elif a == "-p":
            port = int(argv[i + 1])
    mode = os.environ.get("FAKE_RPC_MODE", "patched")
    print(f"fake rpc-server {' '.join(argv)}", flush=True)
    print(f"  self-test      : {os.environ.get('GGML_RPC_SELF_TEST', 'not reported')}", flush=True)
    if mode == "exit":
        print("error: failed to start", file=sys.stderr, flush=True)
        return 3
    text = os.environ.get("FAKE_RPC_IDENTITY") or Path(identity_file).read_text(encoding="utf-8")
    fw = FakeWorker(mode, ident.BuildIdentity.from_json(json.loads(text)))
    srv = socket.create_server((host, port))
    serve(fw, srv, threading.Event())
    return 0
