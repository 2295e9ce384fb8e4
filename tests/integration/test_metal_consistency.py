"""Slow: the Metal side of the patch series, checked as far as it can be without a Mac.

Reads the patched llama.cpp tree of the real build (the series applied to the pinned
commit) and proves that
- every kernel name the Metal host code can request for a TurboQuant type (each op x type
  or K/V pair x head dim that supports_op admits) exists as an instantiated kernel, and
  every TurboQuant kernel instantiated is one of those (no dead or misspelled instances);
- the host uses the shared pair table (supports_op, kernel names) and the codec headers
  reach the embedded Metal library exactly once, before their first use.
Metal compilation and the kernels' results are verified only on a Mac, by the self-test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from turboctl.build import manifest

pytestmark = pytest.mark.slow

TURBO = ("turbo2", "turbo3", "turbo4")


@pytest.fixture(scope="module")
def tree(llama_build: manifest.Manifest) -> Path:
    src = Path(llama_build.source.path)
    assert (src / "ggml" / "src" / "ggml-metal").is_dir()
    return src


def host_format(text: str, prefix: str) -> str:
    """The snprintf format string of a kernel name family in the host code."""
    m = re.search(r'snprintf\((?:base|name), 256, "(' + re.escape(prefix) + r'[^"]*)"', text)
    assert m, f"the host code no longer builds names with {prefix!r}"
    return m.group(1)


def fill(fmt: str, *args: object) -> str:
    out = fmt
    for a in args:
        out = re.sub(r"%[sd]", str(a), out, count=1)
    assert "%" not in out, out
    return out


def pair_table(tree: Path) -> tuple[list[tuple[str, str]], list[int], str]:
    text = (tree / "ggml" / "src" / "ggml-turbo" / "turbo-fa.h").read_text()
    body = re.search(r"turbo_fa_pairs\[\]\[2\]\s*=\s*\{(.*?)\};", text, re.S)
    dims = re.search(r"turbo_fa_head_dims\[\]\s*=\s*\{([^}]*)\}", text)
    fmt = re.search(r'turbo_fa_vec_kernel_name\(.*?snprintf\(buf, size, "([^"]+)"', text, re.S)
    assert body and dims and fmt
    pairs = re.findall(r'\{\s*"(\w+)",\s*"(\w+)"\s*\}', body.group(1))
    return pairs, [int(d) for d in dims.group(1).split(",") if d.strip()], fmt.group(1)


def requestable(tree: Path) -> set[str]:
    metal = tree / "ggml" / "src" / "ggml-metal"
    dev_cpp = (metal / "ggml-metal-device.cpp").read_text()
    dev_m = (metal / "ggml-metal-device.m").read_text()
    ops = (metal / "ggml-metal-ops.cpp").read_text()

    # supports_op admits these for the turbo types (checked in the host source)
    for op, end in (("GGML_OP_SET_ROWS", "case GGML_OP_DIAG:"), ("GGML_OP_CPY", "case GGML_OP_GET_ROWS:")):
        block = dev_m[dev_m.index(f"case {op}:"):]
        block = block[:block.index(end)]
        for t in TURBO:
            assert f"GGML_TYPE_{t.upper()}" in block, f"supports_op({op}) does not list {t}"
    assert "turbo_fa_pair_supported(" in dev_m and "turbo_fa_head_dims_supported(" in dev_m
    assert "turbo_fa_vec_kernel_name(" in dev_cpp
    assert "ggml_is_turbo(op->src[1]->type) || ggml_is_turbo(op->src[2]->type)" in ops

    names: set[str] = set()
    cpy = host_format(dev_cpp, "kernel_cpy_")
    get_rows = host_format(dev_cpp, "kernel_get_rows_")
    set_rows = host_format(dev_cpp, "kernel_set_rows_")
    kv_f16 = host_format(dev_cpp, "kernel_flash_attn_ext_kv_")
    for t in TURBO:
        names.add(fill(cpy, "f32", t))
        names.add(fill(cpy, t, "f32"))
        names.add(fill(cpy, t, "f16"))
        names.add(fill(get_rows, t))
        for idx in ("i64", "i32"):
            names.add(fill(set_rows, "f32", idx, t))

    pairs, dims, vec_fmt = pair_table(tree)
    for k, v in pairs:
        for d in dims:
            names.add(fill(vec_fmt, k, v, d, d))           # decode: the vec kernels
        for t in (k, v):                                     # prefill: K and V to F16, each by its type
            names.add(fill(kv_f16, t))
    return names


def instantiated(tree: Path) -> dict[str, str]:
    """host_name -> file, for every kernel instance of the Metal sources."""
    out: dict[str, str] = {}
    for f in sorted((tree / "ggml" / "src" / "ggml-metal" / "kernels").glob("*.metal")):
        for name in re.findall(r'\[\[host_name\("([^"]+)"\)\]\]', f.read_text()):
            # (upstream instantiates a few names twice under #if branches; ours are unique)
            assert "turbo" not in name or name not in out, f"{name} instantiated twice ({out[name]}, {f.name})"
            out[name] = f.name
    return out


def test_every_requested_turbo_kernel_exists_and_every_instance_is_reachable(tree: Path) -> None:
    want = requestable(tree)
    have = instantiated(tree)
    missing = sorted(n for n in want if n not in have)
    assert not missing, f"the host can request kernels that do not exist: {missing}"
    # every instance that serves a TurboQuant type (by name) is one the host can request
    turbo_instances = {n for n in have if "turbo" in n} | {"kernel_flash_attn_ext_kv_f16_f16"}
    dead = sorted(n for n in turbo_instances if n in have and n not in want)
    assert not dead, f"instantiated but unreachable: {dead}"
    print(f"\n[metal] {len(want)} TurboQuant kernel names requested by the host, all instantiated")


def load_checker():  # type: ignore[no-untyped-def]
    from tests import metal_checker

    return metal_checker.load()


TURBO_LIBS = {"quantize", "fa_aux", "fa_vec_turbo"}


@pytest.mark.parametrize("layout", ["embed", "src"])
def test_codec_reaches_only_the_libraries_that_use_it_once_and_in_order(tree: Path, layout: str,
                                                                         tmp_path: Path) -> None:
    """Replay the CMake embed recipe (cat + sed, as CMakeLists.txt says) and the run-time
    flattening of the source tree: the codec is in exactly the three libraries that use the
    turbo types, once, before its first use; no other Metal library compiles any of it."""
    mc = load_checker()
    units, problems = mc.units_for(tree, layout, tmp_path)
    assert not problems, problems
    assert not [u.load_error for u in units if u.load_error]
    have = set()
    for u in units:
        text = "\n".join(ln for ln in u.text.splitlines() if not ln.startswith("#line "))
        n = text.count("} block_turbo4;")
        if u.kind not in TURBO_LIBS:
            assert n == 0 and "turbo_scale" not in text, f"{layout}: the codec reaches {u.kind}"
            continue
        have.add(u.kind)
        assert n == 1, (layout, u.kind, n)
        assert '#include "ggml-turbo' not in text
        uses = "quantize_turbo4>" if u.kind == "quantize" else "dequantize_turbo4"
        for first, then in (("turbo_cb4[16]", "turbo4_value_impl"), ("} block_turbo4;", "dequantize_turbo4("),
                            ("void quantize_turbo4(", uses)):
            assert text.index(first) <= text.rindex(then), (layout, u.kind, first, then)
    assert have == TURBO_LIBS


def test_bin_layout_copies_the_codec_where_its_includes_resolve(tree: Path, tmp_path: Path) -> None:
    """GGML_METAL_EMBED_LIBRARY=OFF: the codec headers go to bin/ggml-turbo/ (the includes
    say "ggml-turbo/<name>", compiled with -I bin), quantize.air is compiled without fast math."""
    mc = load_checker()
    res = mc.replay_cmake(tree / "ggml" / "src" / "ggml-metal", False, tmp_path / "bin", tmp_path / "build")
    dests = {str(d.relative_to(tmp_path / "bin")) for _, d in res.copies}
    for name in ("turbo-codebooks.h", "turbo.h", "turbo-impl.h", "turbo-metal.h"):
        assert f"ggml-turbo/{name}" in dests
    compiles = {Path(a[a.index("-c") + 1]).stem: a
                for c in res.custom for a in c.commands if "metal" in a and "-c" in a}
    assert "-fno-fast-math" in compiles["quantize"] and "-fno-fast-math" not in compiles["mul_mv"]
    assert str(tmp_path / "bin") in compiles["quantize"]


def test_self_test_cases_cover_the_pair_table(tree: Path) -> None:
    """test-backend-ops' TurboQuant cases iterate the same table the backends claim."""
    text = (tree / "tests" / "test-backend-ops.cpp").read_text()
    assert '#include "../ggml/src/ggml-turbo/turbo-fa.h"' in text
    assert "turbo_fa_pairs[ip][0]" in text and "turbo_fa_head_dims" in text


def test_gen_metal_baseline_ne_matches_the_pinned_tuning_table(tree: Path) -> None:
    """kernels/gen_metal.py's hand copy of fa_vec_baseline_ne() (ggml-metal-tuning.cpp)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "kernels" / "gen_metal.py"
    spec = importlib.util.spec_from_file_location("gen_metal", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    table = mod.tree_baseline_ne(tree)
    assert (128, 128) in table and (0, 0) in table
    assert mod.baseline_mismatches(tree) == []
