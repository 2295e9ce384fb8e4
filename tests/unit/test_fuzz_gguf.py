"""Property test: truncated or garbled GGUF headers through the model check give a ModelError of
one line, never a traceback (and never a hang on a huge count read from a flipped byte)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turboctl.errors import ModelError
from turboctl.models.gguf import inspect_model

from .kvmodels import gemma4, llama

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


@pytest.fixture(scope="module")
def sources() -> Iterator[tuple[Path, list[bytes]]]:
    with tempfile.TemporaryDirectory(prefix="fuzz-gguf-") as tmp:
        root = Path(tmp)
        blobs = [llama(root / "llama.gguf", n_layer=4).read_bytes(),
                 gemma4(root / "gemma4.gguf", n_layer=8, shared=2).read_bytes()]
        yield root, blobs


def _check(path: Path) -> None:
    try:
        inspect_model(path)
    except ModelError as exc:
        assert exc.message and "\n" not in exc.message and "\r" not in exc.message, exc.message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), cut=st.integers(0, 4096))
def test_truncated_gguf(sources: tuple[Path, list[bytes]], which: int, cut: int) -> None:
    root, blobs = sources
    data = blobs[which]
    path = root / "cut.gguf"
    path.write_bytes(data[:min(cut, len(data))])
    _check(path)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1),
       flips=st.lists(st.tuples(st.integers(0, 1535), st.integers(0, 255)), min_size=1, max_size=6))
def test_garbled_gguf(sources: tuple[Path, list[bytes]], which: int, flips: list[tuple[int, int]]) -> None:
    root, blobs = sources
    data = bytearray(blobs[which])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    path = root / "flip.gguf"
    path.write_bytes(bytes(data))
    _check(path)


EXTREMES = (0, 1, 7, 8, 9, 12, 0x7F, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**40, 2**63, 2**64 - 1)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), pos=st.integers(0, 1535), width=st.sampled_from((4, 8)),
       value=st.sampled_from(EXTREMES))
def test_extreme_values_gguf(sources: tuple[Path, list[bytes]], which: int, pos: int, width: int,
                             value: int) -> None:
    """A count, a length, a type tag or a value overwritten with an extreme number (found: a block
    count of 2**32-1 made the layer table 4 billion entries long)."""
    root, blobs = sources
    data = bytearray(blobs[which])
    if pos < len(data):
        data[pos:pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    path = root / "extreme.gguf"
    path.write_bytes(bytes(data))
    _check(path)


def test_huge_block_count_is_a_model_error(sources: tuple[Path, list[bytes]]) -> None:
    root, blobs = sources
    data = bytearray(blobs[0])
    off = data.find(b"llama.block_count") + len(b"llama.block_count") + 4  # after the key and its type
    data[off:off + 4] = (0xFFFFFFFF).to_bytes(4, "little")
    path = root / "huge.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"llama.block_count = 4294967295 is out of range \(1..4096\): not a usable "
                                         r"GGUF model$"):
        inspect_model(path)


def test_wrong_value_type_is_a_model_error(sources: tuple[Path, list[bytes]]) -> None:
    root, blobs = sources
    data = bytearray(blobs[0])
    off = data.find(b"llama.embedding_length") + len(b"llama.embedding_length")
    data[off:off + 4] = (6).to_bytes(4, "little")  # the uint32's type tag → float32
    path = root / "float.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError,
                       match=r"llama.embedding_length is not an integer \(float\): not a usable GGUF model$"):
        inspect_model(path)


def test_reader_error_is_one_line(sources: tuple[Path, list[bytes]]) -> None:
    root, blobs = sources
    path = root / "short.gguf"
    path.write_bytes(blobs[0][:40])
    with pytest.raises(ModelError, match=r"not a readable GGUF model \(") as info:
        inspect_model(path)
    assert "\n" not in info.value.message


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_gguf(blob: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-gguf-") as tmp:
        path = Path(tmp) / "random.gguf"
        path.write_bytes(b"GGUF" + blob if blob[:1] == b"\x00" else blob)
        _check(path)


def test_string_turned_array_does_not_hang(sources: tuple[Path, list[bytes]]) -> None:
    """Found by the property test: general.architecture's type tag flipped from string (8) to array
    (9) made the gguf reader loop for minutes over a count read from the string's bytes."""
    root, blobs = sources
    data = bytearray(blobs[0])
    off = data.find(b"general.architecture") + len(b"general.architecture")
    data[off:off + 4] = (9).to_bytes(4, "little")
    path = root / "array.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"not a readable GGUF model \(an array of \d+ entries at offset \d+\)$"):
        inspect_model(path)


@pytest.mark.parametrize(("blob", "message"), [
    (b"GGU", r"truncated header: 3 bytes"),
    (b"GGML" + bytes(20), r"no GGUF magic at the start"),
    (b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1 << 40).to_bytes(8, "little"),
     r"header counts 0 tensors and 1099511627776 key/value pairs"),
    (b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
     + (1 << 30).to_bytes(8, "little"), r"a length of 1073741824 bytes at offset 32 runs past the end of the file "
                                        r"\(32 bytes\)"),
    (b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
     + (1).to_bytes(8, "little") + b"k" + (77).to_bytes(4, "little"), r"unknown value type 77 at offset 33"),
])
def test_header_errors(tmp_path: Path, blob: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    with pytest.raises(ModelError, match=message + r"\)$"):
        inspect_model(path)


def test_layout_keys_of_the_wrong_type_are_model_errors(tmp_path: Path) -> None:
    """kv explain / profiles show read more keys (turboctl.kv.layout): a string there is a
    ModelError too, not a ValueError traceback."""
    import gguf
    import numpy as np

    from turboctl.kv.layout import read_layout

    path = tmp_path / "nextn.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 4)
    w.add_uint32("llama.embedding_length", 256)
    w.add_uint32("llama.attention.head_count", 4)
    w.add_string("llama.nextn_predict_layers", "abc")
    w.add_tensor("dummy.weight", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match=r"llama.nextn_predict_layers is not an integer \(str\): not a usable GGUF "
                                         r"model$"):
        read_layout(path)
