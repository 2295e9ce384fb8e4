"""Fast: the pure-Python parts of scripts/metal_check (no clang, no llama.cpp tree): the
line-preserving rewrites, the source-tree flattener's rules and its error, the sed replay of
the embed recipe, the gap rules, and the message when no clang++ exists."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests import metal_checker


@pytest.fixture(scope="module")
def mc() -> ModuleType:
    return metal_checker.load()


def test_rewrites_keep_lines_and_change_only_msl_syntax(mc: ModuleType) -> None:
    cases = {
        'template [[host_name("kernel_x")]] kernel f_t f<1>;': "template kernel f_t f<1>;",
        "constant bool FC_a [[function_constant(FC_X + 0)]];": "extern constant bool FC_a ;",
        "  threadgroup char * shmem [[threadgroup(0)]],": "  threadgroup char * shmem [[mtl_threadgroup_index(0)]],",
        "  threadgroup float sw [NHPTG];  // x":
            "  threadgroup float (&sw)[NHPTG] = ::metal::mtl_threadgroup_array<float[NHPTG]>();  // x",
        "    float x = y;": "    float x = y;",
    }
    for src, want in cases.items():
        got = mc.rewrite_line(src)
        assert " ".join(got.split()) == " ".join(want.split()), (src, got)
        assert "\n" not in got
    # the host_name rewrite keeps every column
    line = 'template [[host_name("k")]] kernel t f<1>;'
    assert len(mc.rewrite_line(line)) == len(line)


def test_flatten_resolves_only_against_the_three_directories(mc: ModuleType, tmp_path: Path) -> None:
    src = tmp_path / "ggml" / "src"
    (src / "ggml-metal" / "kernels").mkdir(parents=True)
    (src / "ggml-turbo").mkdir()
    (src / "ggml-turbo" / "a.h").write_text('#pragma once\n#include "ggml-turbo/b.h"\nint a;\n')
    (src / "ggml-turbo" / "b.h").write_text("int b;\n")
    k = src / "ggml-metal" / "kernels" / "k.metal"
    k.write_text('#include <metal_stdlib>\n#if 0\n#include "ggml-turbo/a.h"\n#endif\n#include "ggml-turbo/a.h"\n')
    search = [k.parent, k.parent.parent, src]
    out: list = []
    mc.flatten(k, search, set(), out)
    assert [ln.text for ln in out] == ["#include <metal_stdlib>", "#if 0", "int b;", "int a;", "#endif"]
    # a sibling include resolves for a C compiler, not for ggml-metal-device.m
    (src / "ggml-turbo" / "a.h").write_text('#include "b.h"\n')
    with pytest.raises(mc.IncludeError, match=r'could not resolve include "b.h" from'):
        mc.flatten(k, search, set(), [])


def test_sed_replay_reads_files_after_deleted_lines(mc: ModuleType, tmp_path: Path) -> None:
    common = tmp_path / "common.h"
    common.write_text("C1\nC2\n")
    lines = [mc.Line(t, "x", i + 1) for i, t in enumerate(["a", '#include "common.h"', "__S__", "b"])]
    out = mc._run_sed(['/#include "common.h"/d', f"/__S__/r {common}", "/__S__/d"], lines)
    assert [ln.text for ln in out] == ["a", "C1", "C2", "b"]
    with pytest.raises(mc.SetupError, match="unsupported sed expression"):
        mc._run_sed(["s/a/b/"], lines)


def test_gap_rules_are_narrow(mc: ModuleType) -> None:
    d = mc.Diag("error", "f", 1, "incompatible operand types ('const __attribute__((address_space(1))) vec<...>' and "
                "'vec<...>')", "")
    assert mc._gap_conditional(d)
    d2 = mc.Diag("error", "f", 1, "incompatible operand types ('vec<float, 4>' and 'vec<half, 4>')", "")
    assert not mc._gap_conditional(d2)
    d3 = mc.Diag("error", "f", 1, "no viable overloaded '='", "note: candidate function (the implicit copy assignment "
                 "operator) not viable: 'this' object is in address space '1', but method expects object in generic "
                 "address space")
    assert mc._gap_struct_assign(d3)
    assert not mc._gap_struct_assign(mc.Diag("error", "f", 1, "no viable overloaded '='", "note: other"))


def test_no_clang_is_a_setup_error(mc: ModuleType) -> None:
    with pytest.raises(mc.SetupError, match=r"no clang\+\+ found \(Debian: apt-get install clang-19\)"):
        mc.find_clang("clang++-does-not-exist")
    assert mc.main(["/nonexistent-tree", "--clang", "clang++-does-not-exist"]) == 2


def test_a_tree_without_ggml_metal_is_a_setup_error(mc: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(mc.SetupError, match=r"no ggml/src/ggml-metal with CMakeLists\.txt"):
        mc.metal_dir_of(tmp_path)
