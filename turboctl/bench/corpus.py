"""The texts the benchmarks use, written for turboctl and shipped with it (``corpora/`` of a
checkout, ``turboctl/_corpora`` of the wheel): the prompt matrix, the long session, the NIAH
haystack and needles.

Every file is listed in ``SHA256SUMS`` (``<sha256>  <path>`` per line, sha256sum's format); a
file is read only after its sha256 is checked, so that a result always comes from the text its
figures are said to come from. A changed, missing or malformed file is a :class:`CorpusError`
naming the file (and the line, for a malformed one). After a deliberate change, the sums are
rewritten with ``python -m turboctl.devtools corpus-sums``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorpusError

SUMS = "SHA256SUMS"
RESTORE = "reinstall turboctl, or in a checkout restore the file (git checkout -- corpora/)"


def default_dir() -> Path:
    """The corpora shipped in the wheel, or ``corpora/`` of a source checkout."""
    here = Path(__file__).resolve().parent.parent  # the turboctl package
    packaged = here / "_corpora"
    if (packaged / SUMS).is_file():
        return packaged
    return here.parent / "corpora"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_sums(text: str, origin: Path) -> dict[str, tuple[str, int]]:
    """``SHA256SUMS``: relative path -> (sha256, line number)."""
    out: dict[str, tuple[str, int]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, sep, name = line.partition("  ")
        name = name.strip()
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise CorpusError(f"{origin}:{n}: expected '<sha256>  <path>', found {line[:80]!r}",
                              hint=f"rewrite the sums: python -m turboctl.devtools corpus-sums; or {RESTORE}")
        if name in out:
            raise CorpusError(f"{origin}:{n}: {name} is listed twice (first on line {out[name][1]})",
                              hint="python -m turboctl.devtools corpus-sums rewrites the file")
        out[name] = (digest, n)
    return out


def sums_text(root: Path) -> str:
    """What ``SHA256SUMS`` of ``root`` must say: every file under it but the sums, sorted."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != SUMS and p.name != "README.md"
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return "".join(f"{sha256_of(p)}  {p.relative_to(root).as_posix()}\n" for p in files)


@dataclass(frozen=True)
class Corpora:
    """``Corpora().text("niah/haystack.txt")``: a verified file of the shipped corpora."""

    root: Path = field(default_factory=default_dir)

    def sums(self) -> dict[str, tuple[str, int]]:
        path = self.root / SUMS
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CorpusError(f"the corpora's checksum file is missing: {path}", hint=RESTORE) from None
        return parse_sums(text, path)

    def path(self, name: str) -> Path:
        """The checked path of ``name`` (relative to the corpora): listed, present, its sha256 the
        recorded one."""
        sums = self.sums()
        target = self.root / name
        if name not in sums:
            raise CorpusError(f"{target} is not listed in {self.root / SUMS}",
                              hint="python -m turboctl.devtools corpus-sums records it")
        expected, line = sums[name]
        try:
            got = sha256_of(target)
        except FileNotFoundError:
            raise CorpusError(f"corpus file missing: {target}", hint=RESTORE) from None
        if got != expected:
            raise CorpusError(f"{target} was changed: its sha256 is {got}, {SUMS} line {line} records {expected}",
                              hint=f"{RESTORE}; after a deliberate change run python -m turboctl.devtools corpus-sums")
        return target

    def text(self, name: str) -> str:
        path = self.path(name)
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            line = path.read_bytes()[:exc.start].count(b"\n") + 1
            raise CorpusError(f"{path}:{line}: not UTF-8 text ({exc.reason})", hint=RESTORE) from None

    def json(self, name: str, schema: dict[str, Any] | None = None) -> Any:
        """``name`` parsed as JSON and, with ``schema``, validated (the error names the item)."""
        text = self.text(name)
        path = self.root / name
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}", hint=RESTORE) from None
        if schema is not None:
            check_schema(doc, schema, path)
        return doc


def check_schema(doc: Any, schema: dict[str, Any], path: Path) -> None:
    """CorpusError naming the first item of ``doc`` that ``schema`` refuses (as a JSON path)."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path) or "(the document)"
        raise CorpusError(f"{path}: {where.lstrip('.')}: {e.message}",
                          hint=f"{RESTORE}" + (f" ({len(errors)} problems in all)" if len(errors) > 1 else ""))
