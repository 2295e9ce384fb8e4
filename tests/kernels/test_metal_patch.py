"""The Metal-only files of kernels/ reach the tree through the Metal patch (not the codec
patch 0001), and the copies that patch adds are kernels/ byte for byte."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def kernel_script(name: str) -> ModuleType:
    """kernels/<name>.py imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "kernels" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_codec_patch() -> ModuleType:
    return kernel_script("make_codec_patch")


def new_files(patch: str) -> dict[str, bytes]:
    """path -> content of every file the patch creates (from its + lines)."""
    out: dict[str, bytes] = {}
    for block in re.split(r"(?m)^diff --git ", patch)[1:]:
        head, _, body = block.partition("\n@@ ")
        if "\nnew file mode" not in head:
            continue
        path = re.search(r"(?m)^\+\+\+ b/(.+)$", head)
        assert path, head[:200]
        lines = body.split("\n")[1:]  # after the hunk header
        text, no_newline = [], False
        for ln in lines:
            if ln.startswith("+"):
                text.append(ln[1:])
            elif ln.startswith("\\ No newline"):
                no_newline = True
            else:
                break
        out[path.group(1)] = ("\n".join(text) + ("" if no_newline else "\n")).encode()
    return out


def test_metal_only_files_are_in_the_metal_patch_byte_for_byte() -> None:
    mcp = make_codec_patch()
    metal = new_files(mcp.metal_patch().read_text())
    assert mcp.METAL_ONLY, "no Metal-only file declared"
    for name, dest in mcp.METAL_ONLY.items():
        path = f"{dest}/{name}"
        assert path in metal, f"{mcp.metal_patch().name} does not add {path}"
        assert metal[path] == (ROOT / "kernels" / name).read_bytes(), (
            f"{path} in {mcp.metal_patch().name} differs from kernels/{name}: copy kernels/{name} into the tree, "
            "commit it into the Metal patch and re-export the series")


def test_codec_patch_has_no_metal_only_file() -> None:
    mcp = make_codec_patch()
    codec = new_files(mcp.PATCH.read_text())
    assert not set(mcp.METAL_ONLY) & set(mcp.FILES)
    for name, dest in mcp.METAL_ONLY.items():
        assert f"{dest}/{name}" not in codec
    assert sorted(codec) == sorted(f"{d}/{n}" for n, d in mcp.FILES.items())


def test_patch_parser_sees_a_stale_copy(tmp_path: Path) -> None:
    """The check fails when the patch's copy is not kernels/ (an edit made in the tree only)."""
    mcp = make_codec_patch()
    text = mcp.metal_patch().read_text()
    name, dest = next(iter(mcp.METAL_ONLY.items()))
    path = f"{dest}/{name}"
    original = new_files(text)[path]
    first = original.decode().split("\n")[0]
    stale = text.replace("+" + first + "\n", "+" + first + " (edited in the tree)\n", 1)
    assert new_files(stale)[path] != original


def test_gen_metal_tree_option_reports_a_wrong_baseline(tmp_path: Path) -> None:
    """gen_metal.py --tree: exit 1 naming the head dim when the tree's tuning table differs."""
    tuning = tmp_path / "ggml" / "src" / "ggml-metal" / "ggml-metal-tuning.cpp"
    tuning.parent.mkdir(parents=True)
    tuning.write_text("int fa_vec_baseline_ne(int dk, int dv) {\n"
                      "    if (dk == 64 && dv == 64) {\n        return 2;\n    }\n"
                      "    if (dk == 128 && dv == 128) {\n        return 2;\n    }\n"
                      "    return 1;  // template default\n}\n")
    res = subprocess.run([sys.executable, str(ROOT / "kernels" / "gen_metal.py"), "--tree", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "head dim 128: gen_metal.py has NE 1, ggml/src/ggml-metal/ggml-metal-tuning.cpp has 2" in res.stderr
    res = subprocess.run([sys.executable, str(ROOT / "kernels" / "gen_metal.py"), "--tree", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "ggml-metal-tuning.cpp" in res.stderr
