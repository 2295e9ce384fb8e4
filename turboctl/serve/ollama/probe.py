"""Who holds a port: nothing, turboctl's proxy (its ``X-Turboctl`` header), an Ollama server,
or something else."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Literal

from .common import TURBOCTL_HEADER

# --- who holds a port -------------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """What answers on a port: turboctl's proxy (``version``: turboctl's), an Ollama server
    (``version``: the one its /api/version reports, None if only ``/`` said so) or something else."""

    kind: Literal["turboctl", "ollama", "other"]
    version: str | None = None


def _http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, dict[str, str], bytes] | None:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json, text/plain"})
        resp = conn.getresponse()
        body = resp.read(64 * 1024)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def probe(host: str, port: int, timeout: float = 1.0) -> Probe | None:
    """Who holds ``host:port``: None when nothing accepts a TCP connection there; otherwise
    turboctl (the X-Turboctl header), Ollama (``GET /api/version`` answers ``{"version": ...}``,
    or ``GET /`` says "Ollama is running") or "other". Each step waits at most ``timeout``
    seconds; network trouble is an answer, never an exception."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError:
        return None
    got = _http_get(host, port, "/api/version", timeout)
    if got is None:
        return Probe("other")  # it accepts connections but does not speak HTTP (in time)
    status, headers, body = got
    if TURBOCTL_HEADER.lower() in headers:
        return Probe("turboctl", headers[TURBOCTL_HEADER.lower()] or None)
    if status == 200:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("version"), str):
            return Probe("ollama", doc["version"])
    root = _http_get(host, port, "/", timeout)
    if root is not None:
        if TURBOCTL_HEADER.lower() in root[1]:
            return Probe("turboctl", root[1][TURBOCTL_HEADER.lower()] or None)
        if root[0] == 200 and root[2].strip().startswith(b"Ollama is running"):
            return Probe("ollama")
    return Probe("other")
