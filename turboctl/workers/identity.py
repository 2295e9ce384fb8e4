"""The build identity of the RPC handshake (patch "ggml-rpc: the build identity in the HELLO").

A patched client and worker exchange this record in their HELLO and refuse each other when it
differs: the llama.cpp commit the series was applied on (``base``), the sha256 of the patch
series (``series``, :func:`series_sha256`), and the id of every turbo type the build knows. A
worker adds its self-test record (``self_test``, from the ``GGML_RPC_SELF_TEST`` environment
variable that ``turboctl worker`` sets), which is reported but not compared.

The wire layout (little-endian, packed) is the patch's ``rpc_build_identity``:
``magic[8] base[41] series[65] n_types:u32 types[8]{id:u32 name[12]} self_test[96]``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAGIC = b"GGTQID01"
MAX_TYPES = 8
BASE_LEN, SERIES_LEN, NAME_LEN, SELF_TEST_LEN = 41, 65, 12, 96
_TYPE = struct.Struct(f"<I{NAME_LEN}s")
_HEAD = struct.Struct(f"<8s{BASE_LEN}s{SERIES_LEN}sI")
SIZE = _HEAD.size + MAX_TYPES * _TYPE.size + SELF_TEST_LEN
UNKNOWN = "unknown"

class IdentityError(ValueError):
    """Bytes that are not a build identity (wrong size, or a field that is not text)."""


@dataclass(frozen=True)
class BuildIdentity:
    base: str
    series: str
    types: tuple[tuple[str, int], ...]
    self_test: str = ""

    def same_build(self, other: BuildIdentity) -> bool:
        """The patch's comparison: base, series and the turbo type ids (not the self-test)."""
        return (self.base, self.series, self.types) == (other.base, other.series, other.types)

    def describe(self) -> str:
        """One line, as the patched binaries log it."""
        types = ",".join(f"{n}={i}" for n, i in self.types) or "none"
        return f"base {self.base} series {self.series} types {types}"

    def differences(self, other: BuildIdentity) -> list[str]:
        """What differs from ``other``, field by field ("series abc… here, def… there")."""
        out = []
        for field, mine, theirs in (("base", self.base, other.base), ("series", self.series, other.series),
                                    ("types", self.describe().split(" types ")[1],
                                     other.describe().split(" types ")[1])):
            if mine != theirs:
                out.append(f"{field} {mine} vs {theirs}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "series": self.series, "types": {n: i for n, i in self.types},
                "self_test": self.self_test}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BuildIdentity:
        types = doc.get("types", {})
        return cls(base=str(doc["base"]), series=str(doc["series"]),
                   types=tuple((str(n), int(i)) for n, i in dict(types).items()),
                   self_test=str(doc.get("self_test", "")))

    def pack(self) -> bytes:
        if len(self.types) > MAX_TYPES:
            raise IdentityError(f"{len(self.types)} turbo types: at most {MAX_TYPES} fit the identity")
        out = _HEAD.pack(MAGIC, _text(self.base, BASE_LEN), _text(self.series, SERIES_LEN), len(self.types))
        for i in range(MAX_TYPES):
            name, tid = self.types[i] if i < len(self.types) else ("", 0)
            out += _TYPE.pack(tid, _text(name, NAME_LEN))
        return out + _text(self.self_test, SELF_TEST_LEN)


def _text(value: str, size: int) -> bytes:
    """A NUL-terminated field of ``size`` bytes, cut as the patch's snprintf cuts it."""
    return value.encode("utf-8")[:size - 1].ljust(size, b"\0")


def _field(raw: bytes, what: str) -> str:
    try:
        return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise IdentityError(f"the {what} field is not UTF-8 text") from None


def unpack(data: bytes) -> BuildIdentity | None:
    """The identity in ``data`` (exactly :data:`SIZE` bytes); None when the magic is not there
    (a peer that sent the right size but no identity)."""
    if len(data) != SIZE:
        raise IdentityError(f"{len(data)} bytes, expected {SIZE}")
    magic, base, series, n_types = _HEAD.unpack_from(data)
    if magic != MAGIC:
        return None
    types = []
    for i in range(min(n_types, MAX_TYPES)):
        tid, name = _TYPE.unpack_from(data, _HEAD.size + i * _TYPE.size)
        types.append((_field(name, "type name"), tid))
    self_test = data[_HEAD.size + MAX_TYPES * _TYPE.size:]
    return BuildIdentity(base=_field(base, "base"), series=_field(series, "series"), types=tuple(types),
                         self_test=_field(self_test, "self-test"))


def series_sha256(patches: Iterable[tuple[str, str]]) -> str:
    """The series checksum: sha256 of one ``<name> <sha256 of the file>\\n`` line per patch, in
    series order (a renamed, reordered, added or changed patch changes it)."""
    text = "".join(f"{name} {digest}\n" for name, digest in patches)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def turbo_types(type_ids: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """The turbo types among a tree's ggml type ids (``GGML_TYPE_TURBO4`` → 45), named as ggml
    names them (``turbo4``) and in ascending id, the order the patch lists them in."""
    found = sorted((i, n.removeprefix("GGML_TYPE_").lower()) for n, i in type_ids.items()
                   if n.startswith("GGML_TYPE_TURBO"))
    return tuple((n, i) for i, n in found)
