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

from turboctl import manifest

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


def test_codec_headers_reach_the_embedded_library_once_and_in_order(tree: Path) -> None:
    """Replay the CMake embedding (cat + sed) for the sources that dequantize."""
    metal = tree / "ggml" / "src" / "ggml-metal"
    cmake = (metal / "CMakeLists.txt").read_text()
    m = re.search(r"set\(METALLIB_KERNELS_TURBO\s+(.*?)\)", cmake, re.S)
    assert m
    headers = [metal / h.strip().strip('"').replace("${CMAKE_CURRENT_SOURCE_DIR}/", "")
               for h in m.group(1).split() if h.strip()]
    assert [h.name for h in headers] == ["turbo-codebooks.h", "turbo.h", "turbo-impl.h", "turbo-metal.h"]
    assert '"/\\#include \\"turbo[a-z-]*.h\\"/d"' in cmake
    drop = re.compile(r'#include "(common\.h|dequantize\.h|quantize\.h|fa_common\.metal|fa_vec_common\.metal'
                      r'|turbo[a-z-]*\.h)"|#pragma once')
    parts = [(metal / "kernels" / "common.h").read_text()]
    parts += [h.resolve().read_text() for h in headers]
    parts.append((metal / "kernels" / "dequantize.h").read_text())
    for src in ("quantize.metal", "fa_aux.metal", "fa_vec_turbo.metal"):
        text = "\n".join([*parts, (metal / "kernels" / src).read_text()])
        text = "\n".join(ln for ln in text.splitlines() if not drop.search(ln))
        assert '#include "turbo' not in text
        assert text.count("typedef struct {\n    uint8_t e[QK_TURBO / TURBO_QK_SUB];  // scale bytes") == 1
        uses = "quantize_turbo4>" if src == "quantize.metal" else "void quantize_turbo4("
        for first, then in (("turbo_cb4[16]", "turbo4_value_impl"), ("} block_turbo4;", "dequantize_turbo4("),
                            ("void quantize_turbo4(", uses)):
            assert text.index(first) <= text.index(then), (src, first, then)


def test_self_test_cases_cover_the_pair_table(tree: Path) -> None:
    """test-backend-ops' TurboQuant cases iterate the same table the backends claim."""
    text = (tree / "tests" / "test-backend-ops.cpp").read_text()
    assert '#include "../ggml/src/ggml-turbo/turbo-fa.h"' in text
    assert "turbo_fa_pairs[ip][0]" in text and "turbo_fa_head_dims" in text
