"""Pins loading/validation, manifest atomic write / load / compare, --help parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DATA
from turboctl.build import builder as build
from turboctl.build import manifest, patches
from turboctl.build.pins import default_pins_path, load_pin
from turboctl.errors import ConfigError

GOOD = default_pins_path().read_text()


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pins.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("schema = 1", "schema = 2"), "unsupported pins schema 2"),
        (lambda t: t.replace('tag = "b11312"', 'tag = "b11312"\ncolour = "red"'),
         "invalid pin at 'llama_cpp.colour': Extra inputs are not permitted"),
        (lambda t: t.replace("0c1e57098bba43ac29e6e3b677cdceebdd22334f", "0c1e570"),
         "invalid pin at 'llama_cpp.commit'"),
        (lambda t: t.replace("size = 76589250", "size = -1"), "invalid pin at 'sdist.size'"),
        (lambda t: t.replace('url = "https://files', 'url = "http://files'),
         "invalid pin at 'sdist.url': Value error, must be an https:// URL"),
        (lambda t: t.replace('"CMakeLists.txt" = ', '"../CMakeLists.txt" = '),
         "must be a relative POSIX path"),
        (lambda t: t.replace("[sdist]", "[sdist"), "not valid TOML"),
    ],
)
def test_invalid_pins(tmp_path: Path, edit: object, message: str) -> None:
    path = write(tmp_path, edit(GOOD))  # type: ignore[operator]
    with pytest.raises(ConfigError) as err:
        load_pin(path)
    assert str(path) in err.value.message
    assert message in err.value.message


def test_missing_pins_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pin file not found"):
        load_pin(tmp_path / "nope.toml")


def test_pin_is_frozen() -> None:
    pin = load_pin()
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        pin.llama_cpp.tag = "other"  # type: ignore[misc]


def test_help_parsing_on_recorded_real_output() -> None:
    text = (DATA / "llama-server-help-b11312.txt").read_text()
    types = build.parse_cache_types(text)
    assert types == ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
    assert types == list(load_pin().llama_cpp.cache_types)
    assert build.parse_cache_types("no such option here") == []
    assert build.cache_types_problem("no such option here\n") == (
        "its --help output has no --cache-type-k option (1 line(s))")
    assert build.cache_types_problem("") == "its --help output is empty"
    cut = "\n".join(line for line in text.splitlines() if "allowed values: f32" not in line)
    assert build.parse_cache_types(cut) == []
    assert build.cache_types_problem(cut) == (
        'its --help output has no "allowed values:" line under --cache-type-k (line 75: '
        "'-ctk,  --cache-type-k TYPE              KV cache data type for K')")
    patched = text.replace("q5_0, q5_1\n", "q5_0, q5_1, turbo2, turbo3, turbo4\n", 1)
    assert build.parse_cache_types(patched)[-3:] == ["turbo2", "turbo3", "turbo4"]


def test_help_parsing_of_the_patched_build_wrapped_list() -> None:
    """The patched llama-server wraps the list of cache types over two lines."""
    text = (DATA / "llama-server-help-turbo.txt").read_text()
    assert build.parse_cache_types(text) == ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl",
                                             "q5_0", "q5_1", "turbo2", "turbo3", "turbo4"]


def test_version_parsing() -> None:
    out = ("load_backend: loaded CPU backend from libggml-cpu.so\n"
           "version: 1 (d88af75)\nbuilt with GNU 12.2.0 for Linux x86_64\n")
    assert build.parse_version(out) == ["version: 1 (d88af75)", "built with GNU 12.2.0 for Linux x86_64"]


def sample_manifest(pin_commit: str, series: patches.Series, binary: Path) -> manifest.Manifest:
    pin = load_pin()
    return manifest.Manifest.model_validate({
        "schema": manifest.SCHEMA, "turboctl_version": "0.1.0", "created": manifest.now_iso(),
        "pin": {"url": pin.llama_cpp.url, "tag": pin.llama_cpp.tag, "commit": pin_commit},
        "source": {"kind": "sdist", "detail": "x", "path": "/src", "base_commit": "a" * 40},
        "patches": {"directory": str(series.directory), "series": series.to_list(), "head": "b" * 40},
        "backend": "cpu", "host": {"system": "Linux", "machine": "x86_64"},
        "cmake": {"generator": "Ninja", "flags": ["-DX=1"], "build_dir": "/b", "targets": ["llama-server"],
                  "jobs": 2, "configured": True, "build_steps": 3},
        "compiler": {"path": "/usr/bin/c++", "id": "GNU", "version": "12.2.0"},
        "binaries": {"llama-server": {"path": str(binary), "sha256": "c" * 64, "size": 1}},
        "cache_types": ["f16"], "version": ["version: 1 (abc)"], "timings_s": {"total": 1.0},
    })


def test_manifest_round_trip_and_compare(tmp_path: Path) -> None:
    from turboctl.paths import Paths

    binary = tmp_path / "llama-server"
    binary.write_text("x")
    series = patches.load_series(DATA / "patches")
    pin = load_pin()
    m = sample_manifest(pin.commit, series, binary)
    paths = Paths(tmp_path / "home")
    where = manifest.save(m, tmp_path / "build", paths)
    assert manifest.load(where) == m
    assert manifest.load_current(paths) == m
    assert manifest.compare(m, pin, series) == []
    # another series, another commit, a missing binary
    other = patches.load_series(DATA / "patches-bad")
    binary.unlink()
    problems = manifest.compare(sample_manifest("d" * 40, series, binary), pin, other)
    assert problems[0].startswith("built from dddddddddddd (b11312), the pin is 0c1e57098bba")
    assert "not applied: 0001-kv-cache-halve-the-cache-size.patch" in problems[1]
    assert "no longer in the series: 0001-kv-cache-advertise-the-turbo-cache-types.patch" in problems[1]
    assert problems[2].startswith("llama-server is missing")


def test_manifest_load_errors(tmp_path: Path) -> None:
    from turboctl.paths import Paths

    assert manifest.load_current(Paths(tmp_path)) is None
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable build manifest"):
        manifest.load(bad)
    bad.write_text(json.dumps({"schema": "turboctl.manifest/0"}))
    with pytest.raises(ConfigError, match=r"manifest schema 'turboctl\.manifest/0', expected"):
        manifest.load(bad)
    bad.write_text(json.dumps({"schema": manifest.SCHEMA, "backend": "cpu"}))
    with pytest.raises(ConfigError, match="invalid build manifest at"):
        manifest.load(bad)


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "m.json"
    manifest.write_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        manifest.write_atomic(target, {"a": object()})  # not JSON-serialisable mid-write
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]  # no temp file left
