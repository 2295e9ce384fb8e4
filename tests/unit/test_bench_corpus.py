"""The verified corpora (bench/corpus.py): SHA256SUMS parsing (errors with their line), a file
read only when its sha256 is the recorded one (changed, missing, unlisted files are errors naming
the file), text and JSON reading (bad UTF-8 and bad JSON with their line, a schema error naming
the item), the sums a directory must have, the maintainer command that writes them, and the
shipped corpora's sums matching the shipped files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from turboctl.bench import corpus
from turboctl.bench.corpus import Corpora
from turboctl.devtools import app as devtools_app
from turboctl.errors import ConfigError, CorpusError

runner = CliRunner()
SCHEMA = {"type": "object", "required": ["items"],
          "properties": {"items": {"type": "array", "items": {
              "type": "object", "required": ["needle", "depth"],
              "properties": {"needle": {"type": "string"}, "depth": {"type": "integer"}}}}}}


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "corpora"
    (r / "niah").mkdir(parents=True)
    (r / "a.txt").write_text("alpha\nbeta\n")
    (r / "niah" / "needles.json").write_text('{"items": [{"needle": "n1", "depth": 10}]}\n')
    (r / "README.md").write_text("not listed\n")
    (r / ".hidden").write_text("not listed\n")
    (r / corpus.SUMS).write_text(corpus.sums_text(r))
    return r


def test_the_sums_of_a_directory(root: Path) -> None:
    a, needles = sha("alpha\nbeta\n"), sha('{"items": [{"needle": "n1", "depth": 10}]}\n')
    assert corpus.sums_text(root) == f"{a}  a.txt\n{needles}  niah/needles.json\n"
    assert corpus.parse_sums(corpus.sums_text(root), root / corpus.SUMS) == {"a.txt": (a, 1),
                                                                             "niah/needles.json": (needles, 2)}


def test_sums_skip_comments_and_blank_lines(tmp_path: Path) -> None:
    text = f"# made by corpus-sums\n\n{'0' * 64}  x.txt\n"
    assert corpus.parse_sums(text, tmp_path / "S") == {"x.txt": ("0" * 64, 3)}


@pytest.mark.parametrize(("text", "message"), [
    (f"{'0' * 64}  a\nnot a line\n", ":2: expected '<sha256>  <path>', found 'not a line'"),
    (f"{'0' * 63}  a\n", f":1: expected '<sha256>  <path>', found '{'0' * 63}  a'"),
    (f"{'A' * 64}  a\n", f":1: expected '<sha256>  <path>', found '{'A' * 64}  a'"),
    (f"{'0' * 64} a\n", f":1: expected '<sha256>  <path>', found '{'0' * 64} a'"),
    (f"{'0' * 64}  \n", f":1: expected '<sha256>  <path>', found '{'0' * 64}  '"),
    (f"{'0' * 64}  a\n\n{'1' * 64}  a\n", ":3: a is listed twice (first on line 1)"),
])
def test_malformed_sums_name_their_line(tmp_path: Path, text: str, message: str) -> None:
    origin = tmp_path / corpus.SUMS
    with pytest.raises(CorpusError) as exc:
        corpus.parse_sums(text, origin)
    assert exc.value.message == f"{origin}{message}"
    assert "python -m turboctl.devtools corpus-sums" in (exc.value.hint or "")
    assert exc.value.exit_code == 25


def test_a_verified_file_is_read(root: Path) -> None:
    c = Corpora(root)
    assert c.text("a.txt") == "alpha\nbeta\n"
    assert c.path("niah/needles.json") == root / "niah" / "needles.json"
    assert c.json("niah/needles.json", SCHEMA) == {"items": [{"needle": "n1", "depth": 10}]}


def test_a_changed_file_is_refused(root: Path) -> None:
    changed = "alpha\nbeta changed\n"
    (root / "a.txt").write_text(changed)
    with pytest.raises(CorpusError) as exc:
        Corpora(root).text("a.txt")
    assert exc.value.message == (f"{root / 'a.txt'} was changed: its sha256 is {sha(changed)}, "
                                 f"SHA256SUMS line 1 records {sha('alpha' + chr(10) + 'beta' + chr(10))}")
    assert "python -m turboctl.devtools corpus-sums" in (exc.value.hint or "")


def test_a_missing_file_is_refused(root: Path) -> None:
    (root / "a.txt").unlink()
    with pytest.raises(CorpusError, match=r"^corpus file missing: .*a\.txt$") as exc:
        Corpora(root).path("a.txt")
    assert exc.value.hint == corpus.RESTORE


def test_an_unlisted_file_is_refused(root: Path) -> None:
    (root / "new.txt").write_text("new\n")
    with pytest.raises(CorpusError) as exc:
        Corpora(root).text("new.txt")
    assert exc.value.message == f"{root / 'new.txt'} is not listed in {root / corpus.SUMS}"
    assert exc.value.hint == "python -m turboctl.devtools corpus-sums records it"


def test_missing_sums_are_refused(root: Path) -> None:
    (root / corpus.SUMS).unlink()
    with pytest.raises(CorpusError) as exc:
        Corpora(root).text("a.txt")
    assert exc.value.message == f"the corpora's checksum file is missing: {root / corpus.SUMS}"


def relist(root: Path, name: str, data: bytes) -> None:
    (root / name).write_bytes(data)
    (root / corpus.SUMS).write_text(corpus.sums_text(root))


def test_text_that_is_not_utf8_names_its_line(root: Path) -> None:
    relist(root, "a.txt", b"one\ntwo\nth\xffree\n")
    with pytest.raises(CorpusError) as exc:
        Corpora(root).text("a.txt")
    assert exc.value.message == f"{root / 'a.txt'}:3: not UTF-8 text (invalid start byte)"


def test_bad_json_names_its_line_and_column(root: Path) -> None:
    relist(root, "niah/needles.json", b'{"items": [\n  {"needle": "n1",, "depth": 1}]}\n')
    with pytest.raises(CorpusError) as exc:
        Corpora(root).json("niah/needles.json")
    assert exc.value.message == (f"{root / 'niah' / 'needles.json'}:2:19: not valid JSON: "
                                 "Expecting property name enclosed in double quotes")


def test_a_schema_error_names_the_item(root: Path) -> None:
    relist(root, "niah/needles.json",
           b'{"items": [{"needle": "n1", "depth": 10}, {"needle": "n2", "depth": "deep"}, {"depth": 3}]}')
    with pytest.raises(CorpusError) as exc:
        Corpora(root).json("niah/needles.json", SCHEMA)
    assert exc.value.message == f"{root / 'niah' / 'needles.json'}: items[1].depth: 'deep' is not of type 'integer'"
    assert exc.value.hint is not None and exc.value.hint.endswith("(2 problems in all)")
    relist(root, "niah/needles.json", b'{"things": []}')
    with pytest.raises(CorpusError) as exc:
        Corpora(root).json("niah/needles.json", SCHEMA)
    assert exc.value.message == f"{root / 'niah' / 'needles.json'}: (the document): 'items' is a required property"


def test_corpus_sums_writes_and_checks(root: Path) -> None:
    relist(root, "a.txt", b"alpha\n")
    (root / "b.txt").write_text("new\n")
    res = runner.invoke(devtools_app, ["corpus-sums", "--root", str(root), "--check"])
    assert res.exit_code == ConfigError.exit_code
    assert f"{root / corpus.SUMS} does not match the files under {root}" in res.output
    res = runner.invoke(devtools_app, ["corpus-sums", "--root", str(root)])
    assert res.exit_code == 0, res.output
    assert Corpora(root).text("b.txt") == "new\n"
    res = runner.invoke(devtools_app, ["corpus-sums", "--root", str(root), "--check"])
    assert res.exit_code == 0 and "3 files match" in res.output


def test_the_shipped_corpora_match_their_sums() -> None:
    root = corpus.default_dir()
    assert (root / corpus.SUMS).read_text(encoding="utf-8") == corpus.sums_text(root), \
        "corpora/SHA256SUMS is out of date: python -m turboctl.devtools corpus-sums"
    c = Corpora(root)
    for name in c.sums():
        c.path(name)
