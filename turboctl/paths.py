"""Where turboctl keeps downloads, source trees, builds and logs.

``TURBOCTL_HOME`` overrides everything; otherwise the platform's user data directory
(``~/Library/Application Support/turboctl`` on macOS, ``~/.local/share/turboctl`` on Linux).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

ENV_HOME = "TURBOCTL_HOME"


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def cache(self) -> Path:
        """Downloads (sdist tarballs); safe to delete, re-downloaded on demand."""
        return self.home / "cache"

    @property
    def src(self) -> Path:
        return self.home / "src"

    @property
    def build(self) -> Path:
        return self.home / "build"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def current_manifest(self) -> Path:
        """Copy of the manifest of the most recent successful build."""
        return self.build / "current-manifest.json"

    def source_dir(self, tag: str, commit: str) -> Path:
        """One source tree per pin."""
        return self.src / f"llama.cpp-{tag}-{commit[:12]}"

    def build_dir(self, tag: str, commit: str, backend: str) -> Path:
        """One build directory per pin and backend."""
        return self.build / f"llama.cpp-{tag}-{commit[:12]}-{backend}"

    def ensure(self) -> None:
        for d in (self.cache, self.src, self.build, self.logs):
            d.mkdir(parents=True, exist_ok=True)


def default_home() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir("turboctl", appauthor=False))


def get_paths() -> Paths:
    return Paths(home=default_home())


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` so that readers (launchd, systemd, llama-server) see the old file or the new
    one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
