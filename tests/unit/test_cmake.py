"""Backends, flags, progress parsing, and a real configure/build of the tiny fake project."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import DATA, Guard
from turboctl.build import cmake
from turboctl.errors import BuildError, UsageError
from turboctl.ui import UI


def host(system: str, machine: str, tools: tuple[str, ...] = (), gpu: bool = False) -> cmake.Host:
    return cmake.Host(system, machine, which=lambda t: f"/usr/bin/{t}" if t in tools else None,
                      gpu_probe=lambda: gpu)


@pytest.mark.parametrize(
    ("h", "expected"),
    [
        (host("Darwin", "arm64"), "metal"),
        (host("Darwin", "x86_64"), "cpu"),
        (host("Linux", "x86_64", ("nvcc",), gpu=True), "cuda"),
        (host("Linux", "x86_64", ("nvcc",), gpu=False), "cpu"),  # toolkit but no GPU
        (host("Linux", "x86_64", (), gpu=True), "cpu"),  # GPU but no toolkit
        (host("Linux", "aarch64"), "cpu"),
    ],
)
def test_backend_detection(h: cmake.Host, expected: str) -> None:
    assert cmake.detect_backend(h).name == expected


def test_backend_flags() -> None:
    mac = host("Darwin", "arm64", ("ninja", "ccache"))
    metal = cmake.cmake_flags(cmake.BACKENDS["metal"], mac, selftest=False, curl=False)
    assert "-DGGML_METAL=ON" in metal and "-DGGML_METAL_EMBED_LIBRARY=ON" in metal
    assert "-DGGML_CCACHE=ON" in metal and "-DLLAMA_CURL=OFF" in metal
    assert "-DLLAMA_BUILD_TESTS=OFF" in metal and "-DLLAMA_OPENSSL=OFF" in metal
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in metal  # no web UI download during builds
    cpu_mac = cmake.cmake_flags(cmake.BACKENDS["cpu"], mac, selftest=True, curl=True)
    assert "-DGGML_METAL=OFF" in cpu_mac and "-DLLAMA_BUILD_TESTS=ON" in cpu_mac
    assert "-DLLAMA_OPENSSL=ON" in cpu_mac
    linux = host("Linux", "x86_64", ("nvcc",), gpu=True)
    cuda = cmake.cmake_flags(cmake.BACKENDS["cuda"], linux, selftest=False, curl=False)
    assert "-DGGML_CUDA=ON" in cuda and "-DGGML_CCACHE=OFF" in cuda
    assert "-DCMAKE_CUDA_ARCHITECTURES=native" in cuda  # the GPU's own architecture only
    no_gpu = cmake.cmake_flags(cmake.BACKENDS["cuda"], host("Linux", "x86_64", ("nvcc",)), selftest=False, curl=False)
    assert "-DGGML_CUDA=ON" in no_gpu and not any("CMAKE_CUDA_ARCHITECTURES" in f for f in no_gpu)
    assert cmake.cmake_flags(cmake.BACKENDS["cpu"], linux, selftest=False, curl=False)[-4] == \
        "-DGGML_CCACHE=OFF"
    # the RPC backend, with the build identity its handshake sends
    rpc = cmake.cmake_flags(cmake.BACKENDS["cpu"], linux, selftest=False, curl=False, identity=("abc", "def"))
    assert rpc[-3:] == ["-DGGML_RPC=ON", "-DGGML_RPC_BUILD_BASE=abc", "-DGGML_RPC_BUILD_SERIES=def"]
    assert "ggml-rpc-server" in cmake.targets(False)
    assert cmake.targets(True)[-1] == "test-backend-ops"
    assert "test-backend-ops" not in cmake.targets(False)
    assert cmake.generator(mac) == "Ninja"
    assert cmake.generator(linux) == "Unix Makefiles"


def test_choose_backend_errors() -> None:
    with pytest.raises(UsageError, match="--backend metal: Metal needs macOS"):
        cmake.choose_backend("metal", host("Linux", "x86_64"))
    with pytest.raises(UsageError, match="--backend cuda: CUDA needs nvcc"):
        cmake.choose_backend("cuda", host("Linux", "x86_64"))
    with pytest.raises(UsageError, match="choose one of auto, metal, cuda, cpu"):
        cmake.choose_backend("vulkan", host("Linux", "x86_64"))


def test_ccache_basedir(tmp_path: Path) -> None:
    assert cmake.build_env(tmp_path, {})["CCACHE_BASEDIR"] == str(tmp_path)
    assert cmake.build_env(tmp_path, {"CCACHE_BASEDIR": "/x"})["CCACHE_BASEDIR"] == "/x"


def test_progress_parsing_ninja_and_make() -> None:
    seen: list[tuple[float, float]] = []
    p = cmake.BuildProgress(on_update=lambda d, t, text: seen.append((d, t)))
    for line in [
        "[1/230] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o",
        "[2/230] Building CXX object src/CMakeFiles/llama.dir/llama.cpp.o",
        "[230/230] Linking CXX executable bin/llama-server",
        "[ 12%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o",
        "[100%] Built target llama-server",
        "ninja: no work to do.",
        "some compiler warning",
    ]:
        p.feed(line)
    assert seen == [(1, 230), (2, 230), (230, 230), (12, 100), (100, 100)]
    assert p.steps == 4  # three Building/Linking lines + one make Building line


def copy_project(tmp_path: Path) -> Path:
    src = tmp_path / "proj"
    shutil.copytree(DATA / "fake-llama", src)
    return src


@pytest.mark.parametrize("gen", ["Ninja", "Unix Makefiles"])
def test_configure_build_noop(allow_cmake: Guard, tmp_path: Path, gen: str) -> None:
    if gen == "Ninja" and not shutil.which("ninja"):
        pytest.skip("ninja not installed")
    src = copy_project(tmp_path)
    bdir = tmp_path / "build"
    env = cmake.build_env(tmp_path)
    log = tmp_path / "log.txt"
    ui = UI(quiet=True)
    flags = ["-DCMAKE_BUILD_TYPE=Release"]
    assert cmake.configure(src, bdir, flags, gen, env=env, log=log, ui=ui) is True
    assert cmake.configure(src, bdir, flags, gen, env=env, log=log, ui=ui) is False  # cached
    first = cmake.build(bdir, ["llama-server", "llama-cli"], 2, env=env, log=log, ui=ui)
    assert first.steps >= 2 and first.total > 0
    server = cmake.find_binary(bdir, "llama-server")
    assert server is not None and server.parent.name == "bin"
    again = cmake.build(bdir, ["llama-server", "llama-cli"], 2, env=env, log=log, ui=ui)
    assert again.steps == 0  # nothing recompiled
    info = cmake.compiler_info(bdir)
    assert info.get("path") and info.get("version")
    # changed flags → configure runs again
    assert cmake.configure(src, bdir, [*flags, "-DFOO=1"], gen, env=env, log=log, ui=ui) is True


def test_generator_switch_starts_clean(allow_cmake: Guard, tmp_path: Path) -> None:
    if not shutil.which("ninja"):
        pytest.skip("ninja not installed")
    src = copy_project(tmp_path)
    bdir = tmp_path / "build"
    env = cmake.build_env(tmp_path)
    ui = UI(quiet=True)
    cmake.configure(src, bdir, [], "Unix Makefiles", env=env, log=tmp_path / "l", ui=ui)
    assert cmake.configure(src, bdir, [], "Ninja", env=env, log=tmp_path / "l", ui=ui)
    assert (bdir / "build.ninja").is_file()


def test_build_failure_reports_log_and_error_lines(allow_cmake: Guard, tmp_path: Path) -> None:
    src = copy_project(tmp_path)
    (src / "src/tool.c").write_text("int main(void) { return undefined_symbol_here; }\n")
    bdir = tmp_path / "build"
    env = cmake.build_env(tmp_path)
    log = tmp_path / "log.txt"
    ui = UI(quiet=True)
    cmake.configure(src, bdir, [], cmake.generator(cmake.Host.current()), env=env, log=log, ui=ui)
    with pytest.raises(BuildError) as err:
        cmake.build(bdir, ["llama-server"], 1, env=env, log=log, ui=ui)
    exc = err.value
    assert exc.message.startswith("cmake build failed (exit code")
    assert exc.log_path == log
    assert any("undefined_symbol_here" in d for d in exc.details)
    assert "undefined_symbol_here" in log.read_text()


def test_configure_failure(allow_cmake: Guard, tmp_path: Path) -> None:
    src = copy_project(tmp_path)
    (src / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.14)\nproject(x C)\n"
                                        "message(FATAL_ERROR \"broken on purpose\")\n")
    with pytest.raises(BuildError) as err:
        cmake.configure(src, tmp_path / "b", [], "Unix Makefiles", env=cmake.build_env(tmp_path),
                        log=tmp_path / "l", ui=UI(quiet=True))
    assert "cmake configure failed" in err.value.message
    assert any("broken on purpose" in d for d in err.value.details)
    assert not (tmp_path / "b" / cmake.CONFIGURE_STATE).exists()


def test_guard_refuses_cmake_without_fixture(tmp_path: Path) -> None:
    from turboctl import proc

    with pytest.raises(AssertionError, match="cmake refused"):
        proc.run(["cmake", "-S", str(tmp_path), "-B", str(tmp_path / "b")])
