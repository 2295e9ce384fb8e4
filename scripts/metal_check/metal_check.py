#!/usr/bin/env python3
"""Type-check ggml's Metal kernels without a Mac: clang++ in "C++ for OpenCL" mode over a
Metal standard-library shim (shim/metal_stdlib), in the three source layouts ggml compiles
Metal from. See README.md beside this file for what it checks and what it does not.

usage: metal_check.py TREE [--layout embed|bin|src|all] [--clang CLANG] [--jobs N]
                      [--base BASE_TREE] [--only KERNEL,...] [--json FILE] [--keep DIR]

TREE (and BASE_TREE) is a llama.cpp source tree (or any directory holding ggml/src/). With
--base, diagnostics are also compared: a known shim limitation ("gap") that BASE_TREE does
not have in the same file and source line counts as an error of TREE.
Exit status: 0 no error, 1 errors, 2 usage or setup problem (e.g. no clang).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM = HERE / "shim"
LAYOUTS = ("embed", "bin", "src")
CLANG_CANDIDATES = ("clang++-19", "clang++")


class SetupError(Exception):
    """The tree or the toolchain is not what the checker needs (exit status 2)."""


# --------------------------------------------------------------------------------------
# Source lines that remember where they came from (so diagnostics name the real file/line)


@dataclasses.dataclass(frozen=True)
class Line:
    text: str
    origin: str  # path of the file the line comes from
    lineno: int


def read_lines(path: Path) -> list[Line]:
    text = path.read_text(encoding="utf-8")
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    return [Line(t, str(path), i + 1) for i, t in enumerate(parts)]


def with_line_markers(lines: list[Line]) -> str:
    """The text, with a #line directive wherever the origin does not continue."""
    out: list[str] = []
    prev: tuple[str, int] | None = None
    for ln in lines:
        if prev is None or prev[0] != ln.origin or prev[1] + 1 != ln.lineno:
            out.append(f'#line {ln.lineno} "{ln.origin}"')
        out.append(ln.text)
        prev = (ln.origin, ln.lineno)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------
# Line-preserving rewrites of MSL syntax that C++ (for OpenCL) cannot parse. Each one keeps
# the line count and the rest of the line; they are the only changes made to the sources.

def _blank(m: re.Match[str]) -> str:
    return " " * len(m.group(0))


_HOST_NAME = re.compile(r"\[\[\s*host_name\s*\(\s*\"[^\"]*\"\s*\)\s*\]\]")
_TG_INDEX = re.compile(r"\[\[\s*threadgroup\s*\(")
_FUNC_CONST = re.compile(
    r"^(\s*)constant(\s+[\w:]+\s+\w+\s*)\[\[\s*function_constant\s*\((?:[^()]|\([^()]*\))*\)\s*\]\]\s*;")
_TG_ARRAY = re.compile(r"^(\s+)threadgroup\s+([\w:]+(?:\s*<[^;<>]*>)?)\s+(\w+)\s*((?:\[[^\]\n]+\]\s*)+);(.*)$")


def rewrite_line(text: str) -> str:
    # 1. [[host_name("...")]] names an explicit instantiation: C++ allows no attribute there
    text = _HOST_NAME.sub(_blank, text)
    # 2. [[threadgroup(N)]] on a kernel parameter: `threadgroup` is an address space here
    text = _TG_INDEX.sub(lambda m: "[[mtl_threadgroup_index" + " " * max(0, len(m.group(0)) - 23) + "(", text)
    # 3. function constants have no initializer (their value is set at pipeline creation):
    #    an extern declaration of a read-only program-scope variable, never a constant
    #    expression (as in Metal)
    m = _FUNC_CONST.match(text)
    if m:
        head = f"{m.group(1)}extern constant{m.group(2)};"
        text = head + " " * max(0, len(m.group(0)) - len(head)) + text[m.end():]
    # 4. threadgroup arrays declared in a kernel body (Metal allocates them per threadgroup;
    #    C++ allows no automatic variable in an address space): a reference to a threadgroup
    #    array of the same type
    m = _TG_ARRAY.match(text)
    if m:
        ind, ty, name, dims, rest = m.groups()
        dims = dims.strip()
        text = f"{ind}threadgroup {ty} (&{name}){dims} = ::metal::mtl_threadgroup_array<{ty}{dims}>();{rest}"
    return text


def rewrite(lines: list[Line]) -> list[Line]:
    return [Line(rewrite_line(ln.text), ln.origin, ln.lineno) for ln in lines]


# --------------------------------------------------------------------------------------
# The source-tree layout: ggml-metal-device.m's ggml_metal_library_flatten_source()

_QUOTED_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"')


def flatten(path: Path, search: list[Path], seen: set[str], out: list[Line]) -> None:
    """Inline every quoted include (even inside #if), resolved ONLY against `search` (not
    relative to the including file); drop `#pragma once`; pass <...> includes through. An
    unresolvable include is a load error at run time: raised as SetupError's sibling."""
    key = os.path.normpath(str(path))
    if key in seen:
        return
    seen.add(key)
    for ln in read_lines(path):
        if ln.text.strip() == "#pragma once":
            continue
        m = _QUOTED_INCLUDE.match(ln.text)
        if m:
            name = m.group(1)
            for d in search:
                cand = d / name
                if cand.is_file():
                    flatten(cand, search, seen, out)
                    break
            else:
                raise IncludeError(f'could not resolve include "{name}" from \'{path}\'', ln)
            continue
        out.append(ln)


class IncludeError(Exception):
    def __init__(self, message: str, line: Line):
        super().__init__(message)
        self.line = line


# --------------------------------------------------------------------------------------
# A small CMake interpreter for ggml/src/ggml-metal/CMakeLists.txt: enough to replay what
# the embed recipe (cat + sed) and the GGML_METAL_EMBED_LIBRARY=OFF copies do.

_CMAKE_ESC = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}


def _cmake_tokens(text: str) -> list[tuple[str, list[tuple[str, bool]]]]:
    """[(command, [(argument, quoted)])]"""
    cmds: list[tuple[str, list[tuple[str, bool]]]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c.isspace():
            i += 1
            continue
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, i)
        if not m:
            raise SetupError(f"CMakeLists.txt: cannot parse at offset {i}: {text[i:i + 40]!r}")
        name = m.group(0).lower()
        i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "(":
            raise SetupError(f"CMakeLists.txt: '{name}' without arguments")
        i += 1
        args: list[tuple[str, bool]] = []
        depth = 0
        while i < n:
            c = text[i]
            if c == "#":
                j = text.find("\n", i)
                i = n if j < 0 else j
            elif c.isspace():
                i += 1
            elif c == "(":
                depth += 1
                args.append(("(", False))
                i += 1
            elif c == ")":
                i += 1
                if depth == 0:
                    break
                depth -= 1
                args.append((")", False))
            elif c == '"':
                i += 1
                buf = []
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n:
                        nxt = text[i + 1]
                        buf.append(_CMAKE_ESC.get(nxt, nxt) if not nxt.isalnum() or nxt in _CMAKE_ESC else "\\" + nxt)
                        i += 2
                    else:
                        buf.append(text[i])
                        i += 1
                i += 1
                args.append(("".join(buf), True))
            else:
                buf = []
                while i < n and not text[i].isspace() and text[i] not in '()#"':
                    if text[i] == "\\" and i + 1 < n:
                        buf.append(text[i + 1])
                        i += 2
                    else:
                        buf.append(text[i])
                        i += 1
                args.append(("".join(buf), False))
        cmds.append((name, args))
    return cmds


@dataclasses.dataclass
class CustomCommand:
    outputs: list[str]
    commands: list[list[str]]
    depends: list[str]
    comment: str


@dataclasses.dataclass
class CMakeResult:
    variables: dict[str, str]
    copies: list[tuple[Path, Path]]       # configure_file(... COPYONLY)
    custom: list[CustomCommand]


class CMakeReplay:
    def __init__(self, variables: dict[str, str]):
        self.vars = dict(variables)
        self.copies: list[tuple[Path, Path]] = []
        self.custom: list[CustomCommand] = []

    def expand(self, s: str) -> str:
        for _ in range(20):
            new = re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: self.vars.get(m.group(1), ""), s)
            if new == s:
                break
            s = new
        return s

    def args(self, raw: list[tuple[str, bool]]) -> list[str]:
        out: list[str] = []
        for a, quoted in raw:
            v = self.expand(a)
            if quoted:
                out.append(v)
            elif v != "":
                out.extend(x for x in v.split(";") if x != "")
        return out

    def path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else Path(self.vars["CMAKE_CURRENT_SOURCE_DIR"]) / q

    def truthy(self, name_or_value: str) -> bool:
        v = self.vars.get(name_or_value, name_or_value if name_or_value not in self.vars else "")
        if name_or_value not in self.vars and not re.fullmatch(r"-?\d+(\.\d+)?|ON|YES|TRUE|Y", name_or_value, re.I):
            return False
        return not re.fullmatch(r"|0|OFF|NO|FALSE|N|IGNORE|NOTFOUND|.*-NOTFOUND", v, re.I)

    def cond(self, toks: list[str]) -> bool:
        def value(t: str) -> str:
            return self.vars.get(t, t)

        def atom(i: int) -> tuple[bool, int]:
            t = toks[i]
            if t == "NOT":
                v, j = atom(i + 1)
                return not v, j
            if t == "(":
                v, j = expr(i + 1)
                return v, j + 1
            if t == "DEFINED":
                return toks[i + 1] in self.vars, i + 2
            if i + 2 < len(toks) + 1 and i + 1 < len(toks):
                op = toks[i + 1]
                if op in ("STREQUAL", "MATCHES", "EQUAL", "VERSION_GREATER_EQUAL", "VERSION_LESS", "LESS", "GREATER"):
                    a, b = value(t), toks[i + 2] if i + 2 < len(toks) else ""
                    b = self.vars.get(b, b) if op != "MATCHES" else b
                    if op == "STREQUAL":
                        return a == b, i + 3
                    if op == "MATCHES":
                        return re.search(b, a) is not None, i + 3
                    try:
                        fa = tuple(int(x) for x in a.split(".")) if a else (0,)
                        fb = tuple(int(x) for x in b.split(".")) if b else (0,)
                    except ValueError:
                        return False, i + 3
                    return {"EQUAL": fa == fb, "VERSION_GREATER_EQUAL": fa >= fb, "VERSION_LESS": fa < fb,
                            "LESS": fa < fb, "GREATER": fa > fb}[op], i + 3
            return self.truthy(t), i + 1

        def expr(i: int) -> tuple[bool, int]:
            v, i = atom(i)
            while i < len(toks) and toks[i] in ("AND", "OR"):
                op = toks[i]
                w, i = atom(i + 1)
                v = (v and w) if op == "AND" else (v or w)
            return v, i

        if not toks:
            return False
        return expr(0)[0]

    def run(self, cmds: list[tuple[str, list[tuple[str, bool]]]]) -> None:
        i = 0
        while i < len(cmds):
            name, raw = cmds[i]
            if name == "if":
                # collect the branches up to the matching endif
                branches: list[tuple[list[tuple[str, bool]] | None, list[tuple[str, list[tuple[str, bool]]]]]] = []
                cur_cond: list[tuple[str, bool]] | None = raw
                body: list[tuple[str, list[tuple[str, bool]]]] = []
                depth = 0
                i += 1
                while i < len(cmds):
                    n2, r2 = cmds[i]
                    if n2 == "if":
                        depth += 1
                    elif n2 == "endif":
                        if depth == 0:
                            break
                        depth -= 1
                    elif depth == 0 and n2 in ("elseif", "else"):
                        branches.append((cur_cond, body))
                        cur_cond, body = (r2 if n2 == "elseif" else None), []
                        i += 1
                        continue
                    body.append(cmds[i])
                    i += 1
                branches.append((cur_cond, body))
                for c, b in branches:
                    if c is None or self.cond([self.expand(a) if q else a for a, q in c]):
                        self.run(b)
                        break
                i += 1
                continue
            if name == "foreach":
                depth = 0
                body = []
                i += 1
                while i < len(cmds):
                    if cmds[i][0] == "foreach":
                        depth += 1
                    elif cmds[i][0] == "endforeach":
                        if depth == 0:
                            break
                        depth -= 1
                    body.append(cmds[i])
                    i += 1
                a = self.args(raw)
                var, items = a[0], a[1:]
                if items and items[0] == "IN":
                    items = [x for lst in items[2:] for x in self.vars.get(lst, "").split(";") if x]
                for item in items:
                    self.vars[var] = item
                    self.run(body)
                i += 1
                continue
            self.command(name, raw)
            i += 1

    def command(self, name: str, raw: list[tuple[str, bool]]) -> None:
        a = self.args(raw)
        if name == "set":
            if not a:
                return
            vals = [x for x in a[1:] if x not in ("PARENT_SCOPE",)]
            if "CACHE" in vals:
                vals = vals[:vals.index("CACHE")]
            self.vars[a[0]] = ";".join(vals)
        elif name == "list" and a and a[0] == "APPEND":
            cur = [x for x in self.vars.get(a[1], "").split(";") if x]
            self.vars[a[1]] = ";".join(cur + a[2:])
        elif name == "get_filename_component":
            var, p, mode = a[0], a[1], a[2]
            pp = Path(p)
            self.vars[var] = {"NAME": pp.name, "NAME_WE": pp.name.split(".")[0], "DIRECTORY": str(pp.parent),
                              "EXT": "".join(pp.suffixes)}.get(mode, "")
        elif name == "string" and a and a[0] == "REPLACE":
            self.vars[a[3]] = " ".join(a[4:]).replace(a[1], a[2])
        elif name == "file" and a and a[0] == "STRINGS":
            src, var = self.path(a[1]), a[2]
            lines = src.read_text(encoding="utf-8").split("\n") if src.is_file() else []
            if "REGEX" in a:
                rx = re.compile(a[a.index("REGEX") + 1])
                lines = [ln for ln in lines if rx.search(ln)]
            self.vars[var] = ";".join(lines)
        elif name == "configure_file":
            if "COPYONLY" in a:
                self.copies.append((self.path(a[0]), Path(a[1])))
        elif name == "add_custom_command":
            cc = CustomCommand([], [], [], "")
            key = None
            for x in a:
                if x in ("OUTPUT", "COMMAND", "DEPENDS", "COMMENT", "VERBATIM", "WORKING_DIRECTORY", "BYPRODUCTS"):
                    key = x
                    if x == "COMMAND":
                        cc.commands.append([])
                    continue
                if key == "OUTPUT":
                    cc.outputs.append(x)
                elif key == "COMMAND":
                    cc.commands[-1].append(x)
                elif key == "DEPENDS":
                    cc.depends.append(x)
                elif key == "COMMENT":
                    cc.comment = x
            self.custom.append(cc)
        # everything else (find_library, message, install, target_*, execute_process, ...)
        # has no effect on the Metal sources


def replay_cmake(metal_dir: Path, embed: bool, bin_dir: Path, build_dir: Path) -> CMakeResult:
    text = (metal_dir / "CMakeLists.txt").read_text(encoding="utf-8")
    r = CMakeReplay({
        "CMAKE_CURRENT_SOURCE_DIR": str(metal_dir),
        "CMAKE_CURRENT_BINARY_DIR": str(build_dir),
        "CMAKE_RUNTIME_OUTPUT_DIRECTORY": str(bin_dir),
        "GGML_METAL_EMBED_LIBRARY": "ON" if embed else "OFF",
        "CMAKE_INSTALL_BINDIR": "bin",
    })
    r.run(_cmake_tokens(text))
    return CMakeResult(r.vars, r.copies, r.custom)


# ---- the embed recipe: cat and sed, as the custom commands say

def _bre_to_py(bre: str) -> str:
    out = []
    i = 0
    while i < len(bre):
        c = bre[i]
        if c == "\\" and i + 1 < len(bre):
            nxt = bre[i + 1]
            out.append({"(": "(", ")": ")", "{": "{", "}": "}", "|": "|"}.get(nxt, re.escape(nxt)))
            i += 2
            continue
        if c == "[":
            j = bre.index("]", i + 2 if bre[i + 1:i + 2] in ("]", "^") else i + 1)
            out.append(bre[i:j + 1])
            i = j + 1
            continue
        out.append(c if c in ".*^$" else re.escape(c))
        i += 1
    return "".join(out)


def _run_sed(exprs: list[str], lines: list[Line]) -> list[Line]:
    prog: list[tuple[re.Pattern[str], str, str]] = []
    for e in exprs:
        m = re.fullmatch(r"/((?:\\.|[^/\\])*)/\s*(d|r\s+(.+))", e)
        if not m:
            raise SetupError(f"embed recipe: unsupported sed expression {e!r}")
        prog.append((re.compile(_bre_to_py(m.group(1))), m.group(2)[0], (m.group(3) or "").strip()))
    out: list[Line] = []
    for ln in lines:
        queued: list[Line] = []
        deleted = False
        for rx, cmd, arg in prog:
            if rx.search(ln.text):
                if cmd == "d":
                    deleted = True
                    break
                queued += read_lines(Path(arg))
        if not deleted:
            out.append(ln)
        out += queued
    return out


def replay_embed(cmd: CustomCommand) -> tuple[str, list[Line]]:
    """Run one embed custom command's cat/sed steps; return (kind, final lines)."""
    files: dict[str, list[Line]] = {}

    def load(p: str) -> list[Line]:
        return files[p] if p in files else read_lines(Path(p))

    final: list[Line] | None = None
    final_name = ""
    for argv in cmd.commands:
        if not argv:
            continue
        prog = argv[0]
        if prog == "cat":
            gt = argv.index(">")
            out = []
            for p in argv[1:gt]:
                out += load(p)
            files[argv[gt + 1]] = out
        elif prog == "sed":
            lt, gt = argv.index("<"), argv.index(">")
            exprs = [argv[k + 1] for k in range(1, lt) if argv[k] == "-e"]
            files[argv[gt + 1]] = _run_sed(exprs, load(argv[lt + 1]))
            final, final_name = files[argv[gt + 1]], argv[gt + 1]
        elif prog == "echo":
            continue
        else:
            raise SetupError(f"embed recipe: unsupported command {prog!r}")
    if final is None:
        raise SetupError(f"embed recipe: no sed step in {cmd.comment!r}")
    m = re.search(r"ggml-metal-embed-(.+)\.metal$", final_name)
    if not m:
        raise SetupError(f"embed recipe: unexpected output {final_name}")
    return m.group(1), final


# --------------------------------------------------------------------------------------
# Translation units per layout


@dataclasses.dataclass
class Unit:
    layout: str
    kind: str                  # the library (kernel source) name
    text: str | None           # the whole TU (embed, src), or None: compile `source`
    source: Path | None        # bin: the kernel source in bin/kernels
    include_dirs: list[Path]
    defines: list[str]
    load_error: str | None = None   # the layout cannot even produce the source (src: unresolved include)
    origin_map: dict[str, str] = dataclasses.field(default_factory=dict)  # bin copy -> tree path


def metal_dir_of(tree: Path) -> Path:
    for cand in (tree / "ggml" / "src" / "ggml-metal", tree / "src" / "ggml-metal", tree / "ggml-metal"):
        if (cand / "CMakeLists.txt").is_file() and (cand / "kernels").is_dir():
            return cand
    raise SetupError(f"{tree}: no ggml/src/ggml-metal with CMakeLists.txt and kernels/ in it")


def runtime_libraries(metal_dir: Path) -> list[str]:
    """The library names the host loads (GGML_METAL_LIBS in ggml-metal-device.m), in order."""
    m_text = (metal_dir / "ggml-metal-device.m").read_text(encoding="utf-8")
    m = re.search(r"#define GGML_METAL_LIBS\s*\\\n(.*?)\n\s*\n", m_text, re.S)
    if not m:
        raise SetupError(f"{metal_dir}/ggml-metal-device.m: no GGML_METAL_LIBS list")
    return re.findall(r"X\(\s*\w+\s*,\s*(\w+)\s*\)", m.group(1))


DEFAULT_DEFINES = ("__METAL_VERSION__=320", "__METAL_MACOS__", "GGML_METAL_HAS_BF16=1")


def units_for(tree: Path, layout: str, work: Path,
              defines: Iterable[str] = DEFAULT_DEFINES) -> tuple[list[Unit], list[str]]:
    """Translation units of one layout, and layout-level problems (each one an error)."""
    metal_dir = metal_dir_of(tree)
    problems: list[str] = []
    libs = runtime_libraries(metal_dir)
    base_defs = list(defines)
    units: list[Unit] = []
    if layout == "embed":
        res = replay_cmake(metal_dir, True, work / "bin", work / "build")
        made: dict[str, list[Line]] = {}
        for cc in res.custom:
            if any(argv and argv[0] == "sed" for argv in cc.commands):
                kind, lines = replay_embed(cc)
                made[kind] = lines
        for kind in libs:
            if kind not in made:
                problems.append(f"embed: the host loads the library '{kind}' "
                                "but CMakeLists.txt embeds no source for it")
                continue
            units.append(Unit(layout, kind, with_line_markers(rewrite(made[kind])), None, [],
                              [*base_defs, "GGML_METAL_EMBED_LIBRARY=1"]))
        for kind in sorted(set(made) - set(libs)):
            problems.append(f"embed: CMakeLists.txt embeds '{kind}', which the host never loads")
    elif layout == "bin":
        bin_dir = work / "bin"
        if bin_dir.exists():
            shutil.rmtree(bin_dir)
        res = replay_cmake(metal_dir, False, bin_dir, work / "build")
        origin: dict[str, str] = {}
        for src, dst in res.copies:
            if not src.is_file():
                problems.append(f"bin: CMakeLists.txt copies {src}, which does not exist")
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            lines = rewrite(read_lines(src))
            dst.write_text("\n".join(ln.text for ln in lines) + "\n", encoding="utf-8")
            origin[str(dst)] = str(src)
        compiles: dict[str, tuple[Path, list[Path], list[str]]] = {}
        for cc in res.custom:
            for argv in cc.commands:
                if "metal" in argv and "-c" in argv:
                    src = Path(argv[argv.index("-c") + 1])
                    incs = [Path(argv[k + 1]) for k in range(len(argv) - 1) if argv[k] == "-I"]
                    defs = [a[2:] for a in argv if a.startswith("-D")]
                    if "GGML_METAL_HAS_TENSOR" in defs:
                        continue  # the tensor API library: not modeled by the shim
                    compiles[src.stem] = (src, incs, defs)
        for kind in libs:
            if kind not in compiles:
                problems.append(f"bin: the host loads the library '{kind}' but CMakeLists.txt compiles no .air for it")
                continue
            src, incs, defs = compiles[kind]
            if not src.is_file():
                problems.append(f"bin: {kind}: {src} is compiled but never copied to bin/")
                continue
            units.append(Unit(layout, kind, None, src, incs, [*base_defs, *defs], origin_map=origin))
    elif layout == "src":
        kdir = metal_dir / "kernels"
        search = [kdir, metal_dir, metal_dir.parent]
        for kind in libs:
            path = kdir / f"{kind}.metal"
            if not path.is_file():
                problems.append(f"src: kernels/{kind}.metal does not exist")
                continue
            out: list[Line] = []
            try:
                flatten(path, search, set(), out)
            except IncludeError as e:
                units.append(Unit(layout, kind, None, None, [], [],
                                  load_error=f"{e.line.origin}:{e.line.lineno}: {e}"))
                continue
            units.append(Unit(layout, kind, with_line_markers(rewrite(out)), None, [], list(base_defs)))
    else:
        raise SetupError(f"unknown layout {layout!r}")
    return units, problems


# --------------------------------------------------------------------------------------
# Compiling and reading clang's diagnostics


@dataclasses.dataclass
class Diag:
    severity: str     # error | warning
    file: str         # path as clang printed it (an original tree path)
    line: int
    message: str
    text: str         # with notes
    source_line: str = ""
    gap: str | None = None   # the known shim limitation it is, if any

    def key(self, tree: Path) -> tuple[str, str, str]:
        return (relpath(self.file, tree), self.source_line.strip(), self.message)


def relpath(p: str, tree: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(tree.resolve()))
    except ValueError:
        return p


# Known shim limitations: valid Metal that clang's C++ cannot express once address spaces are
# real. Narrow on purpose (the message AND the detail that proves the cause); README.md lists
# them with their counts on upstream's kernels.

def _strip_as(ty: str) -> str:
    ty = re.sub(r"__attribute__\(\(address_space\(\d+\)\)\)", "", ty)
    ty = re.sub(r"\b(const|volatile|device|threadgroup|constant)\b", "", ty)
    return re.sub(r"\s+", " ", ty).strip()


def _gap_struct_assign(d: Diag) -> bool:
    # `*y = *x;` for a C struct (a quant block, a kernel argument struct) in device or
    # threadgroup memory: the implicit operator= of a C++ class expects its object in the
    # default address space; Metal's C structs have no such restriction
    return (d.message == "no viable overloaded '='" and
            "(the implicit copy assignment operator) not viable: 'this' object is in address space" in d.text)


def _gap_conditional(d: Diag) -> bool:
    # `c ? v_in_device_memory : vec(...)`: clang finds no common type for an address-space
    # qualified class lvalue and a prvalue of the same class
    m = re.match(r"incompatible operand types \('(.*?)'(?: \(aka '(.*?)'\))? and '(.*?)'(?: \(aka '(.*?)'\))?\)$",
                 d.message)
    if not m:
        return False
    a, b = m.group(2) or m.group(1), m.group(4) or m.group(3)
    return "address_space" in a + b and _strip_as(a) == _strip_as(b)


GAPS: list[tuple[str, Callable[[Diag], bool]]] = [
    ("struct-assign-in-address-space", _gap_struct_assign),
    ("conditional-on-address-space-lvalue", _gap_conditional),
]

_DIAG = re.compile(r"^(.*?):(\d+):(\d+): (fatal error|error|warning|note): (.*)$")


def parse_diagnostics(output: str, line_of: Callable[[str, int], str]) -> list[Diag]:
    diags: list[Diag] = []
    cur: Diag | None = None
    for raw in output.splitlines():
        m = _DIAG.match(raw)
        if m and m.group(4) != "note":
            sev = "error" if "error" in m.group(4) else "warning"
            cur = Diag(sev, m.group(1), int(m.group(2)), m.group(5), raw)
            cur.source_line = line_of(cur.file, cur.line)
            diags.append(cur)
        elif cur is not None and raw and not raw.endswith("generated."):
            cur.text += "\n" + raw
    for d in diags:
        if d.severity == "error":
            for name, pred in GAPS:
                if pred(d):
                    d.gap = name
                    break
    return diags


def _line_reader() -> Callable[[str, int], str]:
    cache: dict[str, list[str]] = {}

    def get(path: str, lineno: int) -> str:
        if path not in cache:
            try:
                cache[path] = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")
            except OSError:
                cache[path] = []
        lines = cache[path]
        return lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    return get


def clang_flags(defines: Iterable[str]) -> list[str]:
    return [
        "-x", "c++", "-std=c++23", "-nostdinc++", "-ffreestanding",
        "-fsyntax-only", "-ferror-limit=0", "-fno-color-diagnostics", "-fno-caret-diagnostics",
        "-fno-diagnostics-show-option",
        "-isystem", str(SHIM), "-include", "metal_stdlib",
        "-Wno-unknown-attributes", "-Wno-ignored-attributes",
        "-Wmissing-prototypes",
        *[f"-D{d}" for d in defines],
    ]


@dataclasses.dataclass
class Result:
    layout: str
    kind: str
    errors: list[Diag]
    gaps: list[Diag]
    warnings: list[Diag]
    seconds: float
    load_error: str | None = None
    cached: bool = False


def compile_unit(clang: str, unit: Unit, tree: Path, tmp: Path, cache: dict[str, tuple[str, float]]) -> Result:
    if unit.load_error is not None:
        return Result(unit.layout, unit.kind, [], [], [], 0.0, unit.load_error)
    args = [clang, *clang_flags(unit.defines)]
    for d in unit.include_dirs:
        args += ["-I", str(d)]
    if unit.text is not None:
        f = tmp / f"{unit.layout}-{unit.kind}.metal.cpp"
        f.write_text(unit.text, encoding="utf-8")
        args.append(str(f))
    else:
        assert unit.source is not None
        args.append(str(unit.source))
    # identical preprocessed translation units are compiled once (the three layouts mostly
    # give the same tokens, and so do the base and the patched tree outside the turbo code)
    pre = subprocess.run([a if a != "-fsyntax-only" else "-E" for a in args] + ["-P"],
                         capture_output=True, text=True, check=False)
    key = hashlib.sha256(pre.stdout.encode()).hexdigest() if pre.returncode == 0 else ""
    t0 = time.monotonic()
    cached = False
    if key and key in cache:
        out, secs = cache[key][0].replace("@TREE@", str(tree)), 0.0
        cached = True
    else:
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        out = proc.stdout + proc.stderr
        if unit.origin_map:
            for copy, orig in unit.origin_map.items():
                out = out.replace(copy, orig)
        if proc.returncode != 0 and not re.search(r": (fatal error|error): ", out):
            out += f"\n{unit.kind}:1:1: error: clang failed ({proc.returncode}) without a diagnostic"
        secs = time.monotonic() - t0
        if key:
            cache[key] = (out.replace(str(tree), "@TREE@"), secs)
    diags = parse_diagnostics(out, _line_reader())
    return Result(unit.layout, unit.kind,
                  [d for d in diags if d.severity == "error" and d.gap is None],
                  [d for d in diags if d.gap is not None],
                  [d for d in diags if d.severity == "warning"], secs, cached=cached)


def find_clang(explicit: str | None) -> str:
    for name in ([explicit] if explicit else list(CLANG_CANDIDATES)):
        path = shutil.which(name)
        if path:
            return path
    raise SetupError("no clang++ found (Debian: apt-get install clang-19), or pass --clang")


# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    tree: str
    results: list[Result]
    problems: list[str]
    seconds: float

    def error_count(self) -> int:
        return (len(self.problems) + sum(len(r.errors) for r in self.results)
                + sum(1 for r in self.results if r.load_error))

    def to_json(self, tree: Path) -> dict[str, object]:
        def d(x: Diag) -> dict[str, object]:
            return {"file": relpath(x.file, tree), "line": x.line, "message": x.message,
                    "source": x.source_line.strip(), "gap": x.gap, "text": x.text}
        return {
            "tree": self.tree,
            "seconds": round(self.seconds, 1),
            "errors": self.error_count(),
            "problems": self.problems,
            "units": [{"layout": r.layout, "kind": r.kind, "errors": [d(x) for x in r.errors],
                       "gaps": [d(x) for x in r.gaps], "warnings": len(r.warnings),
                       "load_error": r.load_error, "seconds": round(r.seconds, 2), "cached": r.cached}
                      for r in self.results],
        }


def check_tree(tree: Path, layouts: Iterable[str], clang: str, jobs: int, only: set[str] | None,
               keep: Path | None = None, cache: dict[str, tuple[str, float]] | None = None,
               defines: Iterable[str] = DEFAULT_DEFINES) -> Report:
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="metal-check-")) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    cache = {} if cache is None else cache
    try:
        units: list[Unit] = []
        problems: list[str] = []
        for layout in layouts:
            u, p = units_for(tree, layout, work / layout, defines)
            units += [x for x in u if only is None or x.kind in only]
            problems += p
        tmp = work / "tu"
        tmp.mkdir(exist_ok=True)
        # identical translation units (same text and macros) are compiled once
        order = sorted(units, key=lambda u: (u.text is None, u.layout, u.kind))
        results: list[Result] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
            first = [x for x in order if x.layout == order[0].layout] if order else []
            rest = [x for x in order if x not in first]
            results += list(ex.map(lambda u: compile_unit(clang, u, tree.resolve(), tmp, cache), first))
            results += list(ex.map(lambda u: compile_unit(clang, u, tree.resolve(), tmp, cache), rest))
        results.sort(key=lambda r: (LAYOUTS.index(r.layout), r.kind))
        problems += linkage_problems(results, tree)
        return Report(str(tree), results, problems, time.monotonic() - t0)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def linkage_problems(results: list[Result], tree: Path) -> list[str]:
    """A function with external linkage that is not inline, defined in a header that reaches
    more than one library: each .air of a non-embedded build defines the symbol, and the
    metallib that links them has it twice. (clang's -Wmissing-prototypes finds them.)"""
    seen: dict[tuple[str, str, int], set[str]] = {}
    names: dict[tuple[str, str, int], str] = {}
    for r in results:
        for w in r.warnings:
            m = re.match(r"no previous prototype for function '([^']+)'", w.message)
            if not m or w.file.endswith(".metal") or w.file.endswith(".metal.cpp"):
                continue
            key = (r.layout, relpath(w.file, tree), w.line)
            seen.setdefault(key, set()).add(r.kind)
            names[key] = m.group(1)
    return [f"{layout}: {file}:{line}: '{names[(layout, file, line)]}' has external linkage and is not inline, "
            f"in a header compiled into {len(kinds)} libraries ({', '.join(sorted(kinds))}): a metallib that links "
            f"their .air files defines it twice; make it static inline (or inline)"
            for (layout, file, line), kinds in sorted(seen.items()) if len(kinds) > 1]


def new_gaps(report: Report, tree: Path, base: Report, base_tree: Path) -> list[Diag]:
    """Gaps of `report` that the base tree does not have (same layout, file, line, message)."""
    have = {(r.layout, *g.key(base_tree)) for r in base.results for g in r.gaps}
    return [g for r in report.results for g in r.gaps if (r.layout, *g.key(tree)) not in have]


def print_report(rep: Report, tree: Path, label: str, extra_errors: list[Diag] | None = None) -> None:
    by_layout: dict[str, list[Result]] = {}
    for r in rep.results:
        by_layout.setdefault(r.layout, []).append(r)
    for layout, rs in by_layout.items():
        errs = sum(len(r.errors) for r in rs) + sum(1 for r in rs if r.load_error)
        gaps = sum(len(r.gaps) for r in rs)
        print(f"[{label}] {layout}: {len(rs)} libraries, {errs} errors, {gaps} known shim gaps")
        for r in rs:
            if r.load_error:
                print(f"  {r.kind}: cannot be loaded: {r.load_error}")
            for e in r.errors:
                print(f"  {r.kind}: {relpath(e.file, tree)}:{e.line}: error: {e.message}")
    for p in rep.problems:
        print(f"[{label}] error: {p}")
    for g in extra_errors or []:
        print(f"[{label}] error: a shim gap the base tree does not have: {relpath(g.file, tree)}:{g.line}: {g.message}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tree", type=Path)
    ap.add_argument("--layout", default="all", choices=[*LAYOUTS, "all"])
    ap.add_argument("--base", type=Path, help="the unpatched tree, to compare known shim gaps with")
    ap.add_argument("--clang", help="clang++ to use (default: clang++-19, else clang++)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", help="comma-separated library names (e.g. quantize,fa_aux)")
    ap.add_argument("--json", type=Path, help="write the full report here")
    ap.add_argument("--keep", type=Path, help="keep the generated layouts and translation units here")
    ap.add_argument("--metal-version", type=int, default=320, help="the value of __METAL_VERSION__ (default 320)")
    ap.add_argument("--no-bf16", action="store_true", help="leave GGML_METAL_HAS_BF16 undefined (no bfloat device)")
    a = ap.parse_args(argv)
    layouts = list(LAYOUTS) if a.layout == "all" else [a.layout]
    only = set(a.only.split(",")) if a.only else None
    try:
        clang = find_clang(a.clang)
        cache: dict[str, tuple[str, float]] = {}
        defines = [f"__METAL_VERSION__={a.metal_version}", "__METAL_MACOS__",
                   *([] if a.no_bf16 else ["GGML_METAL_HAS_BF16=1"])]
        rep = check_tree(a.tree, layouts, clang, a.jobs, only, a.keep, cache, defines)
        extra: list[Diag] = []
        base_rep = None
        if a.base is not None:
            base_rep = check_tree(a.base, layouts, clang, a.jobs, only, None, {}, defines)
            extra = new_gaps(rep, a.tree, base_rep, a.base)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if base_rep is not None:
        print_report(base_rep, a.base, "base")
    print_report(rep, a.tree, "tree", extra)
    total = rep.error_count() + len(extra)
    secs = rep.seconds + (base_rep.seconds if base_rep else 0.0)
    print(f"metal-check: {total} errors in {len(rep.results)} translation units ({secs:.0f} s)")
    if a.json:
        doc = rep.to_json(a.tree)
        doc["new_gaps"] = [relpath(g.file, a.tree) + f":{g.line}: {g.message}" for g in extra]
        if base_rep is not None:
            doc["base"] = base_rep.to_json(a.base)
        a.json.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
