"""CMake configure/build, progress parsing, and the backends as small strategy objects."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import proc
from ..errors import BuildError, UsageError
from ..ui import UI

TARGETS = ("llama-server", "llama-cli", "llama-bench", "llama-perplexity", "llama-fit-params", "ggml-rpc-server")
RPC_SERVER = "ggml-rpc-server"
"""The RPC worker of the build (llama.cpp's ``rpc-server`` tool; its CMake target and binary name)."""
SELFTEST_TARGET = "test-backend-ops"
CONFIGURE_STATE = "turboctl-configure.json"


# --------------------------------------------------------------------------- host + backends
@dataclass(frozen=True)
class Host:
    """What backend detection looks at; injectable for tests."""

    system: str  # platform.system(): Darwin, Linux, Windows
    machine: str  # platform.machine(): arm64, x86_64, aarch64
    which: Callable[[str], str | None] = shutil.which
    gpu_probe: Callable[[], bool] | None = None

    @classmethod
    def current(cls) -> Host:
        return cls(platform.system(), platform.machine())

    def has_nvidia_gpu(self) -> bool:
        if self.gpu_probe is not None:
            return self.gpu_probe()
        if not self.which("nvidia-smi"):
            return False
        out = proc.capture(["nvidia-smi", "-L"], timeout=20)
        return bool(out and "GPU" in out)


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    device: str
    """The ggml device name of this backend (``test-backend-ops -b <device>``)."""

    def flags(self, host: Host) -> list[str]:
        raise NotImplementedError

    def usable(self, host: Host) -> str | None:
        """None if this host can build the backend, else why not."""
        return None


class MetalBackend(Backend):
    def flags(self, host: Host) -> list[str]:
        return ["-DGGML_METAL=ON", "-DGGML_METAL_EMBED_LIBRARY=ON"]

    def usable(self, host: Host) -> str | None:
        if host.system != "Darwin":
            return f"Metal needs macOS (this is {host.system})"
        return None


class CudaBackend(Backend):
    def flags(self, host: Host) -> list[str]:
        # with a GPU here: kernels for its own architecture only (nvcc -arch=native; one
        # architecture instead of ggml's default list keeps the build to minutes); without one
        # (a cross build) ggml's default list
        return ["-DGGML_CUDA=ON", *(["-DCMAKE_CUDA_ARCHITECTURES=native"] if host.has_nvidia_gpu() else [])]

    def usable(self, host: Host) -> str | None:
        if not host.which("nvcc"):
            return "CUDA needs nvcc (the CUDA toolkit) on PATH"
        return None


class CpuBackend(Backend):
    def flags(self, host: Host) -> list[str]:
        return ["-DGGML_METAL=OFF"] if host.system == "Darwin" else []


BACKENDS: dict[str, Backend] = {
    "metal": MetalBackend("metal", "Apple GPU via Metal (shader library embedded)", "MTL0"),
    "cuda": CudaBackend("cuda", "NVIDIA GPU via CUDA", "CUDA0"),
    "cpu": CpuBackend("cpu", "CPU only", "CPU"),
}


def detect_backend(host: Host) -> Backend:
    """macOS arm64 → Metal; Linux with nvcc and an NVIDIA GPU → CUDA; otherwise CPU."""
    if host.system == "Darwin" and host.machine == "arm64":
        return BACKENDS["metal"]
    if host.system == "Linux" and host.which("nvcc") and host.has_nvidia_gpu():
        return BACKENDS["cuda"]
    return BACKENDS["cpu"]


def choose_backend(name: str, host: Host) -> Backend:
    if name == "auto":
        return detect_backend(host)
    try:
        backend = BACKENDS[name]
    except KeyError:
        raise UsageError(f"--backend {name!r}: choose one of auto, {', '.join(BACKENDS)}") from None
    why = backend.usable(host)
    if why:
        raise UsageError(f"--backend {name}: {why}", hint="use --backend auto or --backend cpu")
    return backend


# --------------------------------------------------------------------------- flags
def generator(host: Host) -> str:
    return "Ninja" if host.which("ninja") else "Unix Makefiles"


def cmake_flags(backend: Backend, host: Host, *, selftest: bool, curl: bool,
                identity: tuple[str, str] = ("unknown", "unknown")) -> list[str]:
    """The configure flags. ``identity``: (base commit, series sha256), the build identity the
    RPC backend sends in its handshake (a client and a worker of different builds refuse each other)."""
    base, series = identity
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        # b11312 ignores LLAMA_CURL (deprecated); its downloader uses cpp-httplib + OpenSSL.
        f"-DLLAMA_OPENSSL={'ON' if curl else 'OFF'}",
        f"-DLLAMA_BUILD_TESTS={'ON' if selftest else 'OFF'}",
        # b11312 downloads an unpinned web UI from Hugging Face on every build unless this
        # is OFF: no network during builds, and the binary depends only on the tree.
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        f"-DGGML_CCACHE={'ON' if host.which('ccache') else 'OFF'}",
        # the RPC backend and its worker (turboctl worker; serve --rpc)
        "-DGGML_RPC=ON",
        f"-DGGML_RPC_BUILD_BASE={base}",
        f"-DGGML_RPC_BUILD_SERIES={series}",
    ]
    flags += backend.flags(host)
    return flags


def targets(selftest: bool) -> list[str]:
    return [*TARGETS, SELFTEST_TARGET] if selftest else list(TARGETS)


def build_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(base if base is not None else os.environ)
    # Paths inside the turboctl home are hashed relative to it: ccache hits survive moving it.
    env.setdefault("CCACHE_BASEDIR", str(home))
    return env


# --------------------------------------------------------------------------- progress
_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE = re.compile(r"^\[\s*(\d+)%\]")
_COMPILE = re.compile(r"Building (C|CXX|CUDA|OBJC|OBJCXX|ASM) object|Linking ")


@dataclass
class BuildProgress:
    """Parses ninja ``[n/m]`` and make ``[ nn%]`` lines; counts compile/link steps."""

    on_update: Callable[[float, float, str], None] | None = None
    done: float = 0
    total: float = 0
    steps: int = 0
    work_lines: list[str] = field(default_factory=list)

    def feed(self, line: str) -> None:
        if _COMPILE.search(line):
            self.steps += 1
        if m := _NINJA.match(line):
            self.done, self.total = float(m.group(1)), float(m.group(2))
        elif m := _MAKE.match(line):
            self.done, self.total = float(m.group(1)), 100.0
        else:
            return
        if self.on_update:
            self.on_update(self.done, self.total, _short(line))


def _short(line: str) -> str:
    target = line.rsplit(" ", 1)[-1]
    return Path(target).name[:40]


# --------------------------------------------------------------------------- configure/build
def _cache_generator(build_dir: Path) -> str | None:
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        return None
    for line in cache.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("CMAKE_GENERATOR:INTERNAL="):
            return line.split("=", 1)[1]
    return None


def configure(src: Path, build_dir: Path, flags: Sequence[str], gen: str, *, env: Mapping[str, str],
              log: Path, ui: UI) -> bool:
    """Run cmake configure unless the same source, generator and flags are cached.

    Returns True when cmake ran."""
    wanted = {"source": str(src), "generator": gen, "flags": list(flags)}
    state_file = build_dir / CONFIGURE_STATE
    try:
        cached = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = None
    if cached == wanted and (build_dir / "CMakeCache.txt").is_file():
        ui.info("configure: flags unchanged, skipped")
        return False
    old_gen = _cache_generator(build_dir)
    if old_gen is not None and old_gen != gen:
        ui.info(f"generator changed ({old_gen} → {gen}): starting from an empty build directory")
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    state_file.unlink(missing_ok=True)
    proc.run(["cmake", "-S", str(src), "-B", str(build_dir), "-G", gen, *flags], env=env, log=log,
             error=BuildError, what="cmake configure",
             hint="read the log; a missing compiler or library is the usual cause "
                  "(turboctl doctor checks the toolchain)")
    state_file.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
    return True


def build(build_dir: Path, build_targets: Sequence[str], jobs: int, *, env: Mapping[str, str],
          log: Path, ui: UI) -> BuildProgress:
    with ui.progress("build") as bar:
        progress = BuildProgress(on_update=lambda d, t, text: bar.update(d, t, text))
        proc.run(["cmake", "--build", str(build_dir), "--config", "Release", "--target",
                  *build_targets, "-j", str(jobs)],
                 env=env, log=log, on_line=progress.feed, error=BuildError, what="cmake build",
                 hint="the log has the full compiler output")
        if progress.total and progress.done < progress.total:
            bar.update(progress.total, progress.total)  # ninja skips up-to-date steps
    return progress


def find_binary(build_dir: Path, name: str) -> Path | None:
    for candidate in (build_dir / "bin" / name, build_dir / "bin" / "Release" / name, build_dir / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    for candidate in build_dir.rglob(name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def compiler_info(build_dir: Path) -> dict[str, str]:
    """The C++ compiler (the C one for C-only projects): path from CMakeCache.txt, id and
    version from CMakeFiles/<cmake version>/CMake<LANG>Compiler.cmake."""
    cache = build_dir / "CMakeCache.txt"
    cache_text = cache.read_text(encoding="utf-8", errors="replace") if cache.is_file() else ""
    for lang in ("CXX", "C"):
        info: dict[str, str] = {}
        for line in cache_text.splitlines():
            if line.startswith(f"CMAKE_{lang}_COMPILER:"):
                info["path"] = line.split("=", 1)[1]
        for f in sorted((build_dir / "CMakeFiles").glob(f"*/CMake{lang}Compiler.cmake")):
            text = f.read_text(encoding="utf-8", errors="replace")
            for key, var in (("id", f"CMAKE_{lang}_COMPILER_ID"),
                             ("version", f"CMAKE_{lang}_COMPILER_VERSION")):
                m = re.search(rf'^set\({var} "([^"]*)"\)', text, re.MULTILINE)
                if m:
                    info[key] = m.group(1)
        if info:
            info["language"] = lang
            return info
    return {}
