"""Property test: malformed profiles (ours and Hermes: wrong types, unknown keys, bad YAML, huge
values, random bytes) through load_profile and ``turboctl profiles validate`` give no traceback:
either a valid profile or one ProfileError of one line, ``FILE:LINE: message``.

1,300 examples; a mutation can leave a profile valid (a description replaced by another string),
so about 1,100 of them are errors (counted once: 450 ours → 348 errors, 300 Hermes → 235, 350
garbled YAML → 325, 100 random byte strings → 100, 100 through the command → 89)."""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from turboctl.cli.main import app
from turboctl.errors import ProfileError
from turboctl.serve.profile import Profile, load_profile

DATA = Path(__file__).parent.parent / "data" / "profiles"
SHIPPED = Path(__file__).parent.parent.parent / "turboctl" / "serve" / "shipped"

OURS: dict[str, Any] = {
    "name": "fuzz",
    "description": "a profile to break",
    "model": {"path": "m.gguf", "sha256": "a" * 64, "name": "m"},
    "kv": {"k": "turbo4", "v": "turbo3", "layers": "0..1+-2..-1=q8_0", "adaptive_mode": 7},
    "context": 8192,
    "server": {"host": "127.0.0.1", "port": 8080, "parallel": 4, "api_key_env": "KEY", "batch_size": 512,
               "args": ["--no-repack", "--threads", "2"]},
    "environment": {"OMP_NUM_THREADS": "2"},
    "generation": {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
                   "seed": 1, "max_tokens": 256},
}
HERMES: dict[str, Any] = yaml.safe_load((DATA / "hermes-profile-gemma4-turboquant.yaml").read_text())
SEEDS = [OURS, HERMES, *(yaml.safe_load(p.read_text()) for p in sorted(SHIPPED.glob("*.yaml")))]
TEXTS = [yaml.safe_dump(s, sort_keys=False) for s in SEEDS] + [p.read_text() for p in sorted(DATA.glob("*.yaml"))]

DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
printable = st.characters(blacklist_categories=("Cs",))
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(printable, max_size=30),
    st.sampled_from(["auto", "turbo4", "turbo5", "q8_0/turbo3", "0..1=q8_0", "0..99=q8_0", "-c", "--ctx-size",
                     "http://x/y", "https://", "0.0.0.0", "::1", "~/m.gguf", "", " ", "\n", "\t", "a" * 20000,
                     "0" * 5000, "1e999", "ollama", "llama.cpp", "http://0.0.0.0:99999/v1", "TURBO_LAYER_ADAPTIVE",
                     "2024-01-01"]),
    st.lists(st.one_of(st.integers(), st.text(printable, max_size=8)), max_size=4),
    st.dictionaries(st.text(printable, max_size=8), st.integers(), max_size=3),
    st.just([[[[[[[[[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
    st.just(list(range(1100))),
).map(copy.deepcopy)  # no value is shared between examples (a mutation must not change the next one)


def _containers(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _containers(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _containers(v, (*path, i))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


@st.composite
def mutated(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> str:
    doc = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        spots = list(_containers(doc))
        path, node = draw(st.sampled_from(spots))
        action = draw(st.sampled_from(("replace", "add", "delete", "typo")))
        if not path:
            if action == "replace":
                doc = draw(junk)
                break
            action = "add"
        parent = _get(doc, path[:-1]) if path else None
        if action == "replace" and parent is not None:
            parent[path[-1]] = draw(junk)
        elif action == "add" and isinstance(node, dict):
            node[draw(st.text(printable, min_size=1, max_size=12))] = draw(junk)
        elif action == "delete" and parent is not None:
            del parent[path[-1]]
        elif action == "typo" and isinstance(parent, dict) and isinstance(path[-1], str) and path[-1]:
            key = path[-1]
            i = draw(st.integers(0, len(key) - 1))
            new = key[:i] + draw(st.sampled_from("aeiou_x")) + key[i + 1:]
            parent[new] = parent.pop(key)
    try:
        return yaml.dump(doc, Dumper=DUMPER, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        assume(False)
        raise


@st.composite
def garbled(draw: st.DrawFn) -> bytes:
    text = bytearray(draw(st.sampled_from(TEXTS)).encode())
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, max(0, len(text) - 1)))
        action = draw(st.sampled_from(("insert", "delete", "replace", "truncate")))
        piece = draw(st.sampled_from([b":", b" ", b"\n", b"-", b"[", b"{", b"}", b"'", b'"', b"\t", b"&a", b"*a",
                                      b"!!binary", b"? ", b"|", b">", b"%", b"@", b"\x00", b"\xff", b"#", b"---\n"]))
        if action == "insert":
            text[pos:pos] = piece
        elif action == "delete":
            del text[pos:pos + draw(st.integers(1, 10))]
        elif action == "replace":
            text[pos:pos + len(piece)] = piece
        else:
            del text[pos:]
    return bytes(text)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-profiles-") as tmp:
        yield Path(tmp)


def _check(path: Path) -> Profile | None:
    try:
        return load_profile(path)
    except ProfileError as exc:
        message = exc.message
        assert "\n" not in message and "\r" not in message, message
        assert re.match(re.escape(str(path)) + r":\d+: \S", message), message
        assert len(message) < 1200, message
        return None


def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@examples(450)
@given(text=mutated([OURS, *SEEDS[2:]]))
def test_malformed_ours(workdir: Path, text: str) -> None:
    path = workdir / "ours.yaml"
    path.write_text(text, encoding="utf-8")
    _check(path)


@examples(300)
@given(text=mutated([HERMES]))
def test_malformed_hermes(workdir: Path, text: str) -> None:
    path = workdir / "hermes.yaml"
    path.write_text(text, encoding="utf-8")
    _check(path)


@examples(350)
@given(blob=garbled())
def test_bad_yaml(workdir: Path, blob: bytes) -> None:
    path = workdir / "garbled.yaml"
    path.write_bytes(blob)
    _check(path)


@examples(100)
@given(blob=st.binary(max_size=300))
def test_random_bytes(workdir: Path, blob: bytes) -> None:
    path = workdir / "bytes.yaml"
    path.write_bytes(blob)
    _check(path)


@examples(100)
@given(blob=st.one_of(mutated(SEEDS).map(str.encode), garbled()))
def test_profiles_validate_command(workdir: Path, blob: bytes) -> None:
    path = workdir / "cli.yaml"
    path.write_bytes(blob)
    result = CliRunner().invoke(app, ["profiles", "validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 17), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 17:
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and re.match(r"error: " + re.escape(str(path)) + r":\d+: ", errors[0]), result.output


def test_the_seeds_are_valid(workdir: Path) -> None:
    """The mutations start from valid profiles (else the test would only ever see errors)."""
    for i, text in enumerate(TEXTS):
        path = workdir / f"seed{i}.yaml"
        path.write_text(text, encoding="utf-8")
        assert isinstance(load_profile(path), Profile), text
