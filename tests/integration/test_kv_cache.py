"""Slow: the TurboQuant KV cache types in the real build.

- the exact KV buffer size per type (bits/value x values, from llama-server's own log);
- every turbo type (and the asymmetric pairs) serving completions on the trained benchmark
  model;
- sequence removal and context shift (K-shift) with turbo K, through the llama.h API
  (tests/integration/kv_consistency.cpp, compiled against the build);
- bad configurations (no flash attention, unsupported head dim) refused with a clear error.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import compile_against_build
from tests.integration.server import LlamaServer, run_to_exit
from tests.integration.tinymodel import WORDS, write_tiny_gemma4, write_tiny_model, write_tiny_partial_rope
from turboctl.build import manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
BENCH_MODEL = SHARED / "models" / "bench-a-h128.gguf"
DOCS = SHARED / "corpora" / "docs-valid.txt"

BITS = {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5, "turbo4": 4.25, "turbo3": 3.25, "turbo2": 2.25}
KV_LINE = re.compile(
    r"llama_kv_cache: K \((\w+)\): (\d+) bytes for (\d+) values \(([\d.]+) bits/value\), "
    r"V \((\w+)\): (\d+) bytes for (\d+) values \(([\d.]+) bits/value\)")


def needs_bench_model() -> None:
    if not BENCH_MODEL.is_file() or not DOCS.is_file():
        pytest.skip("the benchmark model and corpus (../shared) are not available")


@pytest.mark.parametrize("type_k,type_v", [
    ("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo2", "turbo2"),
    ("q8_0", "turbo3"), ("turbo4", "f16"), ("f16", "f16"), ("q4_0", "q4_0"),
])
def test_kv_buffer_size_is_exact(llama_build: manifest.Manifest, tmp_path: Path, type_k: str, type_v: str) -> None:
    n_layer, n_head_kv, head_dim, n_ctx = 2, 1, 128, 512
    model = write_tiny_model(tmp_path / "tiny.gguf", n_layer=n_layer, n_head_kv=n_head_kv, head_dim=head_dim)
    srv = LlamaServer(llama_build.binaries["llama-server"].path,
                      ["-m", str(model), "-c", str(n_ctx), "-np", "1", "-t", "2", "-fa", "on",
                       "-ctk", type_k, "-ctv", type_v, "-lv", "4"], tmp_path / "server.log")
    with srv:
        doc = srv.completion({"prompt": "the cache", "n_predict": 4, "ignore_eos": True, "temperature": 0})
        assert doc["tokens_predicted"] == 4
    srv.assert_clean_exit()
    m = KV_LINE.search(srv.log())
    assert m, "llama-server did not log the exact KV cache size"
    values = n_layer * n_head_kv * head_dim * n_ctx
    for name, nbytes, nvalues, want in ((m[1], int(m[2]), int(m[3]), type_k), (m[5], int(m[6]), int(m[7]), type_v)):
        assert name == want
        assert nvalues == values
        assert nbytes * 8 == BITS[want] * values, f"{want}: {nbytes} bytes for {values} values"
    # and the summary line agrees: K + V in MiB
    summary = re.search(r"llama_kv_cache: size = +([\d.]+) MiB", srv.log())
    assert summary and abs(float(summary[1]) - (int(m[2]) + int(m[6])) / 2**20) < 0.006


@pytest.mark.parametrize("type_k,type_v", [("turbo4", "turbo4"), ("q8_0", "turbo3"), ("turbo2", "f16")])
def test_layers_with_different_head_dims(llama_build: manifest.Manifest, tmp_path: Path,
                                         type_k: str, type_v: str) -> None:
    """A (tiny, generated) Gemma 4: sliding-window layers with head dim 128, full-attention
    layers with 256, in two KV caches. Each is rotated over its own full head dim, and the
    sizes are exact for both."""
    n_ctx = 512
    model = write_tiny_gemma4(tmp_path / "gemma4.gguf", head_dim_full=256, head_dim_swa=128, n_layer=4)
    srv = LlamaServer(llama_build.binaries["llama-server"].path,
                      ["-m", str(model), "-c", str(n_ctx), "-np", "1", "-t", "2", "-fa", "on",
                       "-ctk", type_k, "-ctv", type_v, "-lv", "4"], tmp_path / "server.log")
    with srv:
        doc = srv.completion({"prompt": "the cache " * 40, "n_predict": 16, "ignore_eos": True, "temperature": 0})
        assert doc["tokens_predicted"] == 16
    srv.assert_clean_exit()
    log = srv.log()
    sizes = KV_LINE.findall(log)
    assert len(sizes) == 2, log[-3000:]  # the full-attention cache and the sliding-window cache
    for m in sizes:
        for name, nbytes, nvalues in ((m[0], int(m[1]), int(m[2])), (m[4], int(m[5]), int(m[6]))):
            assert nbytes * 8 == BITS[name] * nvalues
    if "turbo" in type_k + type_v:
        for hd in (256, 128):  # one rotation input per cache, holding its own head dim only
            assert f"randomized Hadamard for head dims {hd}..{hd}" in log


@pytest.mark.parametrize("type_k,type_v", [
    ("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo2", "turbo2"),
    ("q8_0", "turbo3"), ("turbo4", "q8_0"), ("turbo4", "f16"), ("f16", "turbo4"),
])
def test_turbo_types_serve_the_benchmark_model(llama_build: manifest.Manifest, tmp_path: Path,
                                               type_k: str, type_v: str) -> None:
    needs_bench_model()
    prompt = DOCS.read_text()[:3000]
    srv = LlamaServer(llama_build.binaries["llama-server"].path,
                      ["-m", str(BENCH_MODEL), "-c", "2048", "-np", "1", "-t", "2", "-fa", "on",
                       "-ctk", type_k, "-ctv", type_v], tmp_path / "server.log")
    with srv:
        doc = srv.completion({"prompt": prompt, "n_predict": 32, "temperature": 0, "n_probs": 1})
        assert doc["tokens_predicted"] == 32
        assert isinstance(doc["content"], str) and doc["content"].strip()
    srv.assert_clean_exit()


@pytest.fixture(scope="module")
def kv_consistency(llama_build: manifest.Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/integration/kv_consistency.cpp compiled against the build's llama.h and libs."""
    return compile_against_build(llama_build, REPO / "tests" / "integration" / "kv_consistency.cpp",
                                 tmp_path_factory.mktemp("kvc") / "kv_consistency",
                                 include=("include", "ggml/include"), libs=("llama", "ggml", "ggml-base"))


def run_kv_consistency(exe: Path, model: Path, text: Path, type_k: str, type_v: str, rules: str = "",
                       adaptive: int = -1) -> dict[str, float]:
    rc, out = run_to_exit(str(exe), [str(model), str(text), type_k, type_v, "2", rules, str(adaptive)], timeout=600)
    assert rc == 0, out[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("type_k="))
    print(f"\n[kv_consistency] {model.name} rules {rules!r} mode {adaptive} {line}")
    return {k: float(v) for k, v in (kv.split("=", 1) for kv in line.split()) if k not in ("type_k", "type_v")}


def check_kv_consistency(res: dict[str, float]) -> None:
    assert int(res["seq_rm_pos_max"]) == 299, "seq_rm left cells of the removed positions"
    # removing the tail and decoding it again gives the same distributions
    assert res["kl_seq_rm"] <= 1e-6
    # a correct K-shift costs one more, independent quantization of K (about twice the K cache's
    # own quantization noise) plus what the shift costs with an f16 K and the same V type; a
    # broken one (RoPE applied in the rotated domain, or to part of a rotated head) scrambles K
    # and lands far above (measured with such a broken build: 0.05-0.15 on the tiny models,
    # where this bound is 0.0006-0.04)
    bound = 3.0 * res["kl_noise"] + 3.0 * res["kl_shift_f16"] + 1e-6
    assert res["kl_shift"] <= bound, f"K-shift KL {res['kl_shift']:.6g} > {bound:.6g}"
    # cells whose position does not change come back bit for bit, however often the cache is
    # shifted (re-quantization is idempotent): no error after one shift, none after ten
    assert res["kl_repeat_1"] <= 1e-9 and res["kl_repeat_10"] <= 1e-9, res
    # the check has teeth: dropping 100 tokens of history changes the distributions far more
    assert res["kl_dropped"] > 10 * res["kl_shift_f16"] + 1e-5
    # a sequence's state saved and loaded into a context of the same types gives the same
    # distributions; a context whose K types differ refuses it
    assert res["state_bytes"] > 0
    assert res["kl_state"] <= 1e-9, res
    assert int(res["state_refused"]) == 1, "a state saved with other KV cache types was loaded"


KV_PAIRS = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("turbo4", "turbo4"), ("turbo3", "turbo3"),
            ("turbo2", "turbo2"), ("turbo4", "f16"), ("q8_0", "turbo3"), ("turbo4", "turbo3"), ("f16", "turbo2")]


@pytest.mark.parametrize("type_k,type_v", KV_PAIRS)
def test_sequence_removal_and_context_shift(kv_consistency: Path, type_k: str, type_v: str) -> None:
    needs_bench_model()
    res = run_kv_consistency(kv_consistency, BENCH_MODEL, DOCS, type_k, type_v)
    check_kv_consistency(res)


# per-layer recipes (-ctk, -ctv, rules, TURBO_LAYER_ADAPTIVE mode): rotation follows the layer
# (turbo layers: the randomized rotation; q8_0 / q4_0: upstream's; f16: none), and sequence
# removal, K-shift and state save/load stay right in every mix
KV_RECIPES = [
    ("turbo4", "turbo3", "0..1+-2..-1=q8_0/q8_0", -1),
    ("turbo3", "turbo3", "0=f16;1+-1=q8_0;2..3=turbo4/f16;4=q4_0/turbo2", -1),
    ("f16", "f16", "1..2=turbo4/turbo3;-2=q8_0/turbo4", -1),
    ("q8_0", "turbo2", "0..1=-/q8_0;-3..-1=turbo4/-", -1),
    ("turbo4", "turbo4", "", 7),
    ("q8_0", "turbo3", "3=f16/-", 5),
]
RECIPE_IDS = ["boundary-q8_0", "f16-q8_0-turbo", "f16-turbo-middle", "sides", "mode7", "mode5-rule"]


@pytest.mark.parametrize("type_k,type_v,rules,mode", KV_RECIPES, ids=RECIPE_IDS)
def test_sequence_removal_and_context_shift_per_layer(kv_consistency: Path, type_k: str, type_v: str, rules: str,
                                                      mode: int) -> None:
    needs_bench_model()  # 8 layers
    check_kv_consistency(run_kv_consistency(kv_consistency, BENCH_MODEL, DOCS, type_k, type_v, rules, mode))


@pytest.mark.parametrize("type_k,type_v,rules,mode", KV_RECIPES[:2], ids=RECIPE_IDS[:2])
def test_sequence_removal_and_context_shift_per_layer_tiny(kv_consistency: Path, tmp_path: Path, type_k: str,
                                                           type_v: str, rules: str, mode: int) -> None:
    """The same on a generated 8-layer llama (no shared data needed)."""
    model = write_tiny_model(tmp_path / "tiny8.gguf", n_layer=8, n_head_kv=1, head_dim=128)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(WORDS[(i * 7) % len(WORDS)] for i in range(2000)))
    check_kv_consistency(run_kv_consistency(kv_consistency, model, text, type_k, type_v, rules, mode))


@pytest.mark.parametrize("arch,n_rot", [("glm4", 32), ("glm4", 64), ("phi3", 32), ("phi3", 64)])
@pytest.mark.parametrize("type_k,type_v", [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "f16"), ("turbo4", "turbo4"),
                                           ("turbo3", "turbo3"), ("turbo2", "turbo2"), ("turbo4", "f16"),
                                           ("q8_0", "turbo3")])
def test_context_shift_with_partial_rope(kv_consistency: Path, tmp_path: Path, arch: str, n_rot: int,
                                         type_k: str, type_v: str) -> None:
    """Partial RoPE (n_rot < head dim, as in GLM-4 and Phi-3 style models): the K-shift of a
    quantized K works on whole heads (dequantize, rotate back, RoPE on the first n_rot dims,
    rotate, quantize). Before, a TurboQuant K aborted at n_rot 32, was wrong at 64, and
    upstream's q8_0 / q4_0 K aborted on the CPU."""
    model = write_tiny_partial_rope(tmp_path / f"{arch}.gguf", arch=arch, head_dim=128, n_rot=n_rot)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(WORDS[(i * 7) % len(WORDS)] for i in range(2000)))
    check_kv_consistency(run_kv_consistency(kv_consistency, model, text, type_k, type_v))


def test_turbo_without_flash_attention_is_refused(llama_build: manifest.Manifest, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.gguf")
    rc, out = run_to_exit(llama_build.binaries["llama-server"].path,
                          ["-m", str(model), "-c", "256", "-fa", "off", "-ctk", "turbo4", "-ctv", "turbo4",
                           "--port", "0"])
    assert rc != 0
    assert "the TurboQuant cache type turbo4 requires flash attention: run with -fa on (or auto)" in out


@pytest.mark.parametrize("head_dim", [80, 96])
def test_unsupported_head_dim_is_refused(llama_build: manifest.Manifest, tmp_path: Path, head_dim: int) -> None:
    model = write_tiny_model(tmp_path / "tiny.gguf", head_dim=head_dim)
    rc, out = run_to_exit(llama_build.binaries["llama-server"].path,
                          ["-m", str(model), "-c", "256", "-fa", "on", "-ctk", "turbo3", "-ctv", "f16",
                           "--port", "0"])
    assert rc != 0
    assert (f"K cache type turbo3 does not support head dim {head_dim} (layer 0): TurboQuant types support "
            "head dims 64, 128, 256 and 512; use q8_0 or q4_0 for this model") in out
    # a non-turbo type on the same model works: the refusal is about the turbo type
    other = "q8_0" if head_dim % 32 == 0 else "f16"
    srv = LlamaServer(llama_build.binaries["llama-server"].path,
                      ["-m", str(model), "-c", "256", "-np", "1", "-fa", "on", "-ctk", other, "-ctv", other],
                      tmp_path / "server.log")
    with srv:
        assert srv.completion({"prompt": "a", "n_predict": 2, "ignore_eos": True})["tokens_predicted"] == 2
    srv.assert_clean_exit()


def test_ggml_quantize_fns_accepts_the_turbo_types(llama_build: manifest.Manifest) -> None:
    """llama.cpp's own test-quantize-fns (the series sets bounds for turbo3/turbo2): every
    type passes, the turbo types included. Built in the build's tree (tests are enabled
    there for the self-test)."""
    build_dir = Path(llama_build.cmake.build_dir)
    cmake = shutil.which("cmake") or "cmake"
    res = subprocess.run([cmake, "--build", str(build_dir), "--target", "test-quantize-fns", "-j", "2"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    exe = next(p for p in (build_dir / "bin" / "test-quantize-fns", build_dir / "bin" / "test-quantize-fns.exe")
               if p.exists())
    rc, out = run_to_exit(str(exe), ["-v"], timeout=300)
    assert rc == 0, out[-3000:]
    for t in ("turbo2", "turbo3", "turbo4"):
        assert f"Testing {t}" in out
        assert re.search(rf"{t} absolute quantization error:\s+ok", out), out[-3000:]
        assert re.search(rf"{t} dot product error:\s+ok", out), out[-3000:]
