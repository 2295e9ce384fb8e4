"""A local HTTP server on 127.0.0.1 for the model-fetch tests (no internet needed).

* plain files (``server.files[path] = bytes``) with HTTP Range support, and behaviours that
  drop the connection part-way, ignore Range, serve wrong bytes, serve slowly or fail;
* the part of the Hugging Face Hub that ``hf_hub_download`` talks to:
  ``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` answering with ``X-Repo-Commit``, ``ETag``
  and ``Content-Length`` (a regular file) or, for an LFS file, a ``302`` to a "CDN" URL on
  another host name (``localhost``) with ``X-Linked-Etag`` / ``X-Linked-Size``; errors carry
  the ``X-Error-Code`` header the Hub uses (RepoNotFound, RevisionNotFound, EntryNotFound,
  GatedRepo).

Also: :func:`tiny_gguf` writes a small valid GGUF, :func:`zip_bytes` a wheel-like zip holding it.
"""

from __future__ import annotations

import _socket
import hashlib
import io
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import gguf
import numpy as np
import pytest

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def tiny_gguf(path: Path, n_floats: int = 1 << 16, seed: int = 0) -> Path:
    """A valid GGUF (llama metadata + one f32 tensor of ``n_floats`` random values)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_tensor("dummy.weight", np.random.default_rng(seed).standard_normal(n_floats).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Behaviour:
    drop_after: int | None = None
    """Close the connection after this many body bytes ..."""
    drops: int = 1
    """... on this many responses (then serve normally); -1: on every response."""
    ignore_range: bool = False
    corrupt: bool = False
    """Flip one byte of every body."""
    delay: float = 0.0
    """Seconds to sleep after each chunk."""
    chunk: int = 8192
    range_shift: int = 0
    """Answer a Range request with bytes from this much further on (and say so in Content-Range) ..."""
    partial_without_range: bool = False
    """... and a request without Range too (206 from offset ``range_shift``)."""
    status: int | None = None
    """Answer requests with this status (and no body) ..."""
    status_on: str = ""
    """... when their path starts with this."""


@dataclass
class HFRepo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    revisions: tuple[str, ...] = ("main",)
    lfs: bool = True
    gated: bool = False


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    hf: dict[str, HFRepo] = field(default_factory=dict)
    behaviour: Behaviour = field(default_factory=Behaviour)
    log: list[Request] = field(default_factory=list)
    dropped: int = 0
    port: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path.lstrip('/')}"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gets(self, path_part: str = "") -> list[Request]:
        return [r for r in self.log if r.method == "GET" and path_part in r.path]


def _git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server_version = "fetchserver/1"
    protocol_version = "HTTP/1.1"
    state: FileServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    # -- routing -------------------------------------------------------------------------
    def _answer(self, *, head: bool) -> None:
        st = self.state
        path = unquote(urlsplit(self.path).path)
        st.log.append(Request(self.command, path, self.headers.get("Range")))
        if st.behaviour.status is not None and path.startswith(st.behaviour.status_on):
            self._empty(st.behaviour.status)
            return
        if path.startswith("/cdn/"):
            blob = path[len("/cdn/"):]
            for repo in st.hf.values():
                for data in repo.files.values():
                    if sha256(data) == blob:
                        self._body(data, head, {"ETag": f'"{blob}"'})
                        return
            self._empty(404)
            return
        if "/resolve/" in path:
            self._hub(path, head)
            return
        data = st.files.get(path.lstrip("/"))
        if data is None:
            self._empty(404)
            return
        self._body(data, head, {})

    def _hub(self, path: str, head: bool) -> None:
        st = self.state
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, name = rest.partition("/")
        repo = st.hf.get(repo_id)
        if repo is None:
            self._empty(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return
        if repo.gated:
            self._empty(403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"})
            return
        if revision not in repo.revisions and revision != repo.commit:
            self._empty(404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
            return
        data = repo.files.get(name)
        if data is None:
            self._empty(404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                              "X-Repo-Commit": repo.commit})
            return
        common = {"X-Repo-Commit": repo.commit}
        if repo.lfs:
            blob = sha256(data)
            self._empty(302, {**common, "Location": self.state.url(f"cdn/{blob}", host="localhost"),
                              "ETag": f'"{_git_sha(data)}"', "X-Linked-Etag": f'"{blob}"',
                              "X-Linked-Size": str(len(data))})
            return
        self._body(data, head, {**common, "ETag": f'"{_git_sha(data)}"'})

    # -- responses -----------------------------------------------------------------------
    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _body(self, data: bytes, head: bool, headers: dict[str, str]) -> None:
        b = self.state.behaviour
        start = 0
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng.strip()) if rng else None
        if (m and not b.ignore_range) or (b.partial_without_range and not m):
            start = (int(m.group(1)) if m else 0) + b.range_shift
            if start >= len(data):
                self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if head:
            return
        payload = bytearray(data[start:])
        if b.corrupt and payload:
            payload[len(payload) // 2] ^= 0xFF
        limit = None
        if b.drop_after is not None and (b.drops < 0 or self.state.dropped < b.drops):
            self.state.dropped += 1
            limit = b.drop_after
        sent = 0
        try:
            for i in range(0, len(payload), b.chunk):
                piece = bytes(payload[i:i + b.chunk])
                if limit is not None and sent + len(piece) > limit:
                    self.wfile.write(piece[:limit - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(piece)
                sent += len(piece)
                if b.delay:
                    self.wfile.flush()
                    time.sleep(b.delay)
        except OSError:  # the client went away (killed)
            self.close_connection = True


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allow connections to loopback addresses only (the fast suite refuses all of them), and
    keep proxies out of the way."""

    def connect(self: socket.socket, address: Any) -> None:
        if self.family == getattr(socket, "AF_UNIX", None) or (isinstance(address, tuple) and address[0] in LOOPBACK):
            return _socket.socket.connect(self, address)
        raise ConnectionRefusedError(f"fetch tests: only loopback ({address!r})")

    def connect_ex(self: socket.socket, address: Any) -> int:
        connect(self, address)
        return 0

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")


@pytest.fixture
def file_server(loopback: None) -> Iterator[FileServer]:
    state = FileServer()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def tiny_gguf_bytes(tmp: Path, n_floats: int = 1 << 16, seed: int = 0) -> bytes:
    return tiny_gguf(tmp / f"tiny-{seed}-{n_floats}.gguf", n_floats, seed).read_bytes()


def zip_bytes(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\nVersion: 1.0\n")
        z.writestr(member, data)
    return buf.getvalue()
