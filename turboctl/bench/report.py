"""``--report DIR``: a markdown report with PNG plots, made from the JSON documents the bench
commands write (so a report can be made again later from saved documents: ``turboctl bench
report DIR DOC.json ...``).

Each document kind has one *section* function, ``section(doc) -> Section``, in the module of its
benchmark (``report_section``); :data:`SECTIONS` maps a document's schema to it. A section is a
title, its markdown, and its plots (file name -> a function that draws the plot into a file).

The report is made in a temporary directory beside ``DIR`` and its files moved into ``DIR``
only when everything rendered: a failed report leaves ``DIR`` as it was. ``DIR/report.md`` links
the plots (``DIR/*.png``) and the documents it was made from (``DIR/data/*.json``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..build.manifest import now_iso
from ..errors import BenchError

REPORT = "report.md"


@dataclass(frozen=True)
class Section:
    title: str
    markdown: str
    plots: Mapping[str, Callable[[Path], None]] = field(default_factory=dict)  # file name (.png) -> draw into path


SECTIONS: dict[str, str] = {
    "turboctl.bench.kld/1": "turboctl.bench.kld:report_section",
    "turboctl.bench.speed/1": "turboctl.bench.speed:report_section",
    "turboctl.bench.memory/1": "turboctl.bench.memory:report_section",
    "turboctl.bench.niah/1": "turboctl.bench.niah:report_section",
    "turboctl.bench.prompts/1": "turboctl.bench.prompts:report_section",
    "turboctl.bench.long-session/2": "turboctl.bench.session:report_section",
}
"""schema -> ``module:function`` (imported when a report needs it)."""


@dataclass(frozen=True)
class Written:
    """What :func:`write_report` wrote: the report, its plots and the documents it was made from."""

    report: Path
    plots: tuple[Path, ...]
    documents: tuple[Path, ...]


class Fields:
    """A document's fields as a section reads them: each one must be there, with its type (a
    missing or mistyped field is a BenchError naming it, e.g. ``results[2].mean_kld``; nothing is
    defaulted). ``opt_*``: the field must be there, and may be null."""

    def __init__(self, data: Any, schema: str, where: str = "") -> None:
        self.data = data
        self.schema = schema
        self.where = where

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Fields:
        return cls(doc, str(doc.get("schema", "?")))

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _fail(self, key: str, what: str) -> BenchError:
        return BenchError(f"a {self.schema} document {what} '{self._path(key)}'",
                          hint="report the documents a turboctl bench command wrote (--output), unedited")

    def has(self, key: str) -> bool:
        return isinstance(self.data, Mapping) and key in self.data

    def raw(self, key: str) -> Any:
        if not self.has(key):
            raise self._fail(key, "without the field")
        return self.data[key]

    def num(self, key: str) -> float:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, f"with a non-number ({value!r}) in the field")
        return float(value)

    def opt_num(self, key: str) -> float | None:
        return None if self.raw(key) is None else self.num(key)

    def integer(self, key: str) -> int:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"with a non-integer ({value!r}) in the field")
        return value

    def opt_integer(self, key: str) -> int | None:
        return None if self.raw(key) is None else self.integer(key)

    def text(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise self._fail(key, f"with a non-string ({value!r}) in the field")
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self.raw(key) is None else self.text(key)

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise self._fail(key, f"with a non-boolean ({value!r}) in the field")
        return value

    def sub(self, key: str) -> Fields:
        value = self.raw(key)
        if not isinstance(value, Mapping):
            raise self._fail(key, "with a non-object in the field")
        return Fields(value, self.schema, self._path(key))

    def opt_sub(self, key: str) -> Fields | None:
        return None if self.raw(key) is None else self.sub(key)

    def items(self, key: str) -> list[Fields]:
        """A list of objects."""
        value = self.raw(key)
        if not isinstance(value, list):
            raise self._fail(key, "with a non-list in the field")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise self._fail(f"{key}[{i}]", "with a non-object in the field")
            out.append(Fields(item, self.schema, f"{self._path(key)}[{i}]"))
        return out

    def strs(self, key: str) -> list[str]:
        value = self.raw(key)
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise self._fail(key, "with something else than a list of strings in the field")
        return list(value)

    def ints(self, key: str) -> list[int]:
        value = self.raw(key)
        if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            raise self._fail(key, "with something else than a list of integers in the field")
        return list(value)


def md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table (``|`` in a cell escaped)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    """A new matplotlib figure and its axes (Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def section_for(doc: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Section]:
    schema = doc.get("schema")
    target = SECTIONS.get(schema) if isinstance(schema, str) else None
    if target is None:
        raise BenchError(f"cannot report a document of schema {schema!r}",
                         hint="reports are made from the JSON of turboctl bench commands: " + ", ".join(SECTIONS))
    module, _, name = target.partition(":")
    fn: Callable[[Mapping[str, Any]], Section] = getattr(importlib.import_module(module), name)
    return fn


def load_document(path: Path) -> dict[str, Any]:
    """A bench command's JSON document (``--output``), BenchError naming the file otherwise."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"no such file: {path}",
                         hint="pass the files written by turboctl bench ... --output") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str):
        raise BenchError(f"{path}: not a turboctl bench document (no 'schema')")
    return doc


def _stem(doc: Mapping[str, Any], used: set[str]) -> str:
    base = str(doc["schema"]).split("/")[0].removeprefix("turboctl.bench.")
    stem, n = base, 1
    while stem in used:
        n += 1
        stem = f"{base}-{n}"
    used.add(stem)
    return stem


def _header(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    models = sorted({str(d.get("model", {}).get("path", "?")) if isinstance(d.get("model"), dict)
                     else str(d.get("model", "?")) for d in docs})
    llama: Mapping[str, Any] = next((d[k] for d in docs for k in ("llama", "llama_cpp") if isinstance(d.get(k), dict)),
                                    {})
    pin = llama.get("pin", {}) if isinstance(llama, dict) else {}
    lines = ["# turboctl bench report", "",
             f"Made by turboctl {__version__} on {now_iso()} from {len(docs)} document(s) (in `data/`).", "",
             "| | |", "|---|---|"]
    lines.append(f"| model | {'; '.join(f'`{Path(m).name}`' for m in models)} |")
    if pin:
        lines.append(f"| llama.cpp | {pin.get('tag', '?')} ({str(pin.get('commit', '?'))[:12]}), "
                     f"series head {str(llama.get('patches_head', '?'))[:12]}, backend {llama.get('backend', '?')} |")
    return [*lines, ""]


SUITE_SCHEMA = "turboctl.bench.all/1"


def expand(docs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``bench all``'s document stands for the documents of its steps."""
    out: list[Mapping[str, Any]] = []
    for doc in docs:
        if doc.get("schema") == SUITE_SCHEMA:
            inner = doc.get("documents")
            if not isinstance(inner, list) or not all(isinstance(d, dict) for d in inner):
                raise BenchError("a bench all document without its 'documents' list")
            out += inner
        else:
            out.append(doc)
    return out


def write_report(out_dir: Path, docs: Sequence[Mapping[str, Any]]) -> Written:
    """Render ``docs`` into ``out_dir`` (see the module's text)."""
    docs = expand(docs)
    if not docs:
        raise BenchError("no documents to report")
    sections = [(doc, section_for(doc)(doc)) for doc in docs]
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        (tmp / "data").mkdir()
        lines = _header(docs)
        plots: list[str] = []
        data: list[str] = []
        used: set[str] = set()
        for doc, sec in sections:
            stem = _stem(doc, used)
            (tmp / "data" / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            data.append(f"data/{stem}.json")
            lines += [f"## {sec.title}", "", sec.markdown.rstrip(), ""]
            for name, draw in sec.plots.items():
                if not name.endswith(".png") or "/" in name:
                    raise BenchError(f"internal: plot name {name!r} is not a PNG file name")
                file = f"{stem}-{name}"
                draw(tmp / file)
                plt.close("all")
                if not (tmp / file).is_file():
                    raise BenchError(f"the plot {file} of {sec.title} was not written")
                plots.append(file)
                lines += [f"![{name.removesuffix('.png')}]({file})", ""]
            lines += [f"Data: [`data/{stem}.json`](data/{stem}.json)", ""]
        (tmp / REPORT).write_text("\n".join(lines), encoding="utf-8")
        out_dir.mkdir(exist_ok=True)
        (out_dir / "data").mkdir(exist_ok=True)
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                os.replace(path, out_dir / path.relative_to(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Written(out_dir / REPORT, tuple(out_dir / p for p in plots), tuple(out_dir / d for d in data))


def neutral_paths(doc: Any, prefixes: Sequence[tuple[str, str]]) -> Any:
    """``doc`` with every path that starts with one of the ``(prefix, replacement)`` prefixes
    rewritten, in a string of its own or inside a command line (a report published beside the
    code names ``$TURBOCTL_HOME/logs/...``, not the directories of the machine it was measured
    on). Figures are left as they are."""
    if isinstance(doc, str):
        for prefix, replacement in prefixes:
            pattern = r"(?<![^\s='\"])" + re.escape(prefix.rstrip("/")) + r"(?=/|$|[\s'\"])"
            doc = re.sub(pattern, replacement.replace("\\", "\\\\"), doc)
        return doc
    if isinstance(doc, list):
        return [neutral_paths(x, prefixes) for x in doc]
    if isinstance(doc, dict):
        return {k: neutral_paths(v, prefixes) for k, v in doc.items()}
    return doc
