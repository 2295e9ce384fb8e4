"""Slow: every rotation of the patched llama.cpp goes through one helper, and it is right.

- llama_rotate_kv (src/llama-impl.h), compiled against the build and run on its CPU backend:
  forward x -> H (s * x) and inverse against a double-precision reference, for every head dim
  of a rotation input that holds several, on head vectors and on merged heads (the attention
  output); llama_mul_mat_hadamard aborts when handed a TurboQuant rotation input;
- no model graph of the tree hands a cache's rotation input to llama_mul_mat_hadamard (b11312's
  qwen4exp, minimax-m3 and dflash did: with a turbo cache they asserted or computed nonsense),
  except the architectures turbo caches are refused for.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.conftest import compile_against_build
from tests.integration.server import run_to_exit
from turboctl.build import manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# latent (MLA) attention: llama.cpp refuses TurboQuant caches for it, naming the architecture
REFUSED = {"deepseek4.cpp"}
ROT_ARG = re.compile(r"llama_mul_mat_hadamard\(\s*ctx0\s*,[^;]*?\b(self_[kv]_rot\w*|[kv]_rot|k_rot)\b")


@pytest.fixture(scope="module")
def rotation_check(llama_build: manifest.Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_against_build(llama_build, REPO / "tests" / "integration" / "rotation_check.cpp",
                                 tmp_path_factory.mktemp("rot") / "rotation_check",
                                 include=("src", "include", "ggml/include"), libs=("ggml-cpu", "ggml-base"))


def test_rotation_helper_matches_the_reference(rotation_check: Path) -> None:
    rc, out = run_to_exit(str(rotation_check), [], timeout=300)
    print(out[-2000:])
    assert rc == 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith(("ok ", "FAIL "))]
    assert len(lines) == 2 * (1 + 1 + 1 + 2 + 4) and all(ln.startswith("ok ") for ln in lines)
    assert "failures=0" in out


def test_hadamard_helper_refuses_a_turbo_rotation_input(rotation_check: Path) -> None:
    rc, out = run_to_exit(str(rotation_check), ["misuse"], timeout=60)
    assert rc != 0, out
    assert "GGML_ASSERT(ggml_n_dims(rot) == 2 && rot->ne[0] == rot->ne[1])" in out
    assert "accepted a TurboQuant rotation input" not in out


def test_no_model_graph_hands_a_rotation_input_to_the_hadamard_helper(llama_build: manifest.Manifest) -> None:
    models = Path(llama_build.source.path) / "src" / "models"
    offenders = {}
    for f in sorted(models.glob("*.cpp")):
        hits = [m.group(0) for m in ROT_ARG.finditer(f.read_text(errors="replace"))]
        if hits and f.name not in REFUSED:
            offenders[f.name] = hits
    assert offenders == {}, f"model graphs that rotate with llama_mul_mat_hadamard: {offenders}"
    # the scan has teeth: the refused architecture's graph does call it
    assert ROT_ARG.search((models / "deepseek4.cpp").read_text())
