"""Slow: per-layer KV cache types (``--kv-layers``, ``LLAMA_ARG_KV_LAYERS``, llama-bench's
``-kvl``, ``TURBO_LAYER_ADAPTIVE`` / ``--kv-adaptive``) in the real build.

- every tool takes the rules, and its own log proves each layer's K/V types, the layers that
  reuse another layer's cache and the exact bytes of every cache (computed here from the
  model's shapes), for the families b11312 names: plain ``llama``; ``gemma4`` with sliding-
  window and full-attention layers of different head dims (two caches) and layers reusing an
  earlier layer's cache; a hybrid ``qwen35`` whose recurrent layers have no KV cache;
- the TURBO_LAYER_ADAPTIVE modes: they only ever raise precision, explicit rules win with a
  warning, fewer than 8 layers warn and change nothing;
- bad rules: a one-line message naming the rule and the column, and the tool stops before
  any weights are loaded;
- slot save / restart / restore / continue with a mixed recipe gives the tokens of an
  uninterrupted run; a slot saved with another recipe is refused, never misread.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.kvlayers import (
    FAMILIES,
    KV_TYPES,
    ContextLog,
    Family,
    Types,
    check_context,
    check_kv_log,
    check_rotation,
    expected_types,
    parse_kv_log,
    runs,
)
from tests.integration.server import LlamaServer
from tests.integration.tinymodel import WORDS
from turboctl import llamalog
from turboctl.build import manifest
from turboctl.errors import VerificationError
from turboctl.kv.explain import explain

pytestmark = pytest.mark.slow

N_CTX = 512
RULES = "0..1+-2..-1=q8_0"  # the contract's example: boundary layers q8_0/q8_0


def run_tool(binary: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    res = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, check=False,
                         stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))
    return res.returncode, res.stdout + res.stderr


def http_any(url: str, body: dict[str, object] | None = None, timeout: float = 120) -> tuple[int, dict[str, object]]:
    """POST (or GET) returning the status and the JSON body, error statuses included."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Family, Path]]:
    d = tmp_path_factory.mktemp("kvl-models")
    out = {}
    for name, make in FAMILIES.items():
        fam = make()
        out[name] = (fam, fam.write(d / f"{name}.gguf"))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("kvl-text") / "text.txt"
    p.write_text(" ".join(WORDS[(i * 7) % len(WORDS)] for i in range(3000)))
    return p


def tool(m: manifest.Manifest, name: str) -> str:
    return m.binaries[name].path


def server_args(model: Path, *kv: str) -> list[str]:
    return ["-m", str(model), "-c", str(N_CTX), "-np", "1", "-t", "2", "-fa", "on", "-lv", "4", *kv]


def cli_args(model: Path, *kv: str) -> list[str]:
    return ["-m", str(model), "-p", "the cache", "-n", "4", "-st", "-t", "2", "-c", str(N_CTX), "-fa", "on",
            "--temp", "0", "-lv", "4", *kv]


PPL_CTX = 256


def ppl_args(model: Path, text: Path, *kv: str) -> list[str]:
    return ["-m", str(model), "-f", str(text), "-c", str(PPL_CTX), "--chunks", "1", "-b", str(PPL_CTX), "-t", "2",
            "-fa", "on", "-lv", "4", *kv]


def bench_args(model: Path, *kv: str) -> list[str]:
    return ["-m", str(model), "-p", "0", "-n", "2", "-r", "1", "-t", "2", "-fa", "1", "-v", "-o", "jsonl", *kv]


def serve_and_check(m: manifest.Manifest, tmp_path: Path, fam: Family, model: Path, kv: list[str],
                    types: Types, env: dict[str, str] | None = None) -> str:
    srv = LlamaServer(tool(m, "llama-server"), server_args(model, *kv), tmp_path / "server.log")
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with srv:
            doc = srv.completion({"prompt": "the cache " * 20, "n_predict": 8, "ignore_eos": True, "temperature": 0})
            assert doc["tokens_predicted"] == 8
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    srv.assert_clean_exit()
    log = srv.log()
    check_kv_log(log, fam, types, N_CTX)
    return log


# --------------------------------------------------------------------------- the log proves it

SERVER_CASES = [
    # family, -ctk, -ctv, rules
    ("llama", "turbo4", "turbo3", ""),
    ("llama", "turbo4", "turbo3", RULES),
    ("llama", "f16", "f16", "0=q8_0/turbo4;1..2=turbo3/-;-1=-/q4_0;3+5=turbo2/q8_0"),
    ("llama", "turbo4", "turbo4", "0=f32;1=bf16;2=q4_1;3=iq4_nl;4=q5_0;5=q5_1;6=q4_0;7=turbo2/f16"),
    ("llama", "turbo4", "turbo3", " 0 .. 1 + -2 .. -1 = q8_0 / q8_0 ; 3 = f16 "),  # whitespace is ignored
    ("gemma4", "turbo4", "turbo3", ""),
    ("gemma4", "turbo4", "turbo3", RULES),  # -2..-1 are reused layers: only 0..1 take q8_0
    ("gemma4", "turbo4", "turbo4", "4+5=q8_0/turbo3;0=f16/-"),  # 4 and 5 are the caches layers 6..9 reuse
    ("qwen35", "turbo4", "turbo3", ""),
    ("qwen35", "turbo4", "turbo3", RULES),  # 0..1 are recurrent: only layer 7 (attention) takes q8_0
    ("qwen35", "q8_0", "turbo3", "0..3=f16/-"),
]


@pytest.mark.parametrize("family,type_k,type_v,rules", SERVER_CASES)
def test_server_log_proves_the_per_layer_types(llama_build: manifest.Manifest, models: dict[str, tuple[Family, Path]],
                                               tmp_path: Path, family: str, type_k: str, type_v: str,
                                               rules: str) -> None:
    fam, model = models[family]
    types = expected_types(fam.n_layer, type_k, type_v, rules)
    kv = ["-ctk", type_k, "-ctv", type_v] + (["--kv-layers", rules] if rules else [])
    log = serve_and_check(llama_build, tmp_path, fam, model, kv, types)
    if family == "llama":  # one cache: the line is exactly the contract's compact form
        line = next(ln for ln in log.splitlines() if "llama_kv_cache: KV layers: " in ln)
        assert line.split("KV layers: ", 1)[1].strip() == runs(types, list(range(fam.n_layer)))
    check_rotation(log, fam, types)
    # turboctl's own reading of the log (what the serve command checks on every start)
    plan = explain(f"{type_k}/{type_v}" + (f";{rules}" if rules else ""), model).plan
    llamalog.compare_plan(plan, log)
    other = explain("q8_0/q8_0" if (type_k, type_v) != ("q8_0", "q8_0") else "f16", model).plan
    with pytest.raises(VerificationError):
        llamalog.compare_plan(other, log)
    if any(t.startswith("turbo") for il in fam.owned for t in types[il]):
        assert re.search(r"turbo_rot_k = (1, turbo_rot_v = \d|0, turbo_rot_v = 1), randomized Hadamard", log)
    # the positive control of the "before the weights load" checks below
    assert "load_tensors:" in log and "llama_model_loader:" in log


def test_server_takes_the_rules_from_the_environment(llama_build: manifest.Manifest,
                                                     models: dict[str, tuple[Family, Path]], tmp_path: Path) -> None:
    fam, model = models["llama"]
    types = expected_types(fam.n_layer, "turbo4", "turbo3", RULES)
    serve_and_check(llama_build, tmp_path, fam, model, ["-ctk", "turbo4", "-ctv", "turbo3"], types,
                    env={"LLAMA_ARG_KV_LAYERS": RULES})


def test_empty_rules_change_nothing(llama_build: manifest.Manifest, models: dict[str, tuple[Family, Path]],
                                    tmp_path: Path) -> None:
    fam, model = models["llama"]
    serve_and_check(llama_build, tmp_path, fam, model, ["-ctk", "turbo4", "-ctv", "turbo3", "--kv-layers", ""],
                    expected_types(fam.n_layer, "turbo4", "turbo3"))


@pytest.mark.parametrize("family", ["llama", "gemma4", "qwen35"])
def test_cli_and_perplexity_take_the_rules(llama_build: manifest.Manifest, models: dict[str, tuple[Family, Path]],
                                           corpus: Path, family: str) -> None:
    fam, model = models[family]
    rules = "0..1+-2..-1=q8_0/-;3=f16"
    types = expected_types(fam.n_layer, "turbo4", "turbo3", rules)
    kv = ["-ctk", "turbo4", "-ctv", "turbo3", "--kv-layers", rules]
    rc, out = run_tool(tool(llama_build, "llama-cli"), cli_args(model, *kv))
    assert rc == 0, out[-3000:]
    check_kv_log(out, fam, types, N_CTX)
    rc, out = run_tool(tool(llama_build, "llama-perplexity"), ppl_args(model, corpus, *kv))
    assert rc == 0, out[-3000:]
    assert "Final estimate: PPL" in out
    check_kv_log(out, fam, types, PPL_CTX)
    # and the environment variable, in both
    rc, out = run_tool(tool(llama_build, "llama-cli"), cli_args(model, "-ctk", "turbo4", "-ctv", "turbo3"),
                       env={"LLAMA_ARG_KV_LAYERS": rules})
    assert rc == 0, out[-3000:]
    check_kv_log(out, fam, types, N_CTX)
    rc, out = run_tool(tool(llama_build, "llama-perplexity"),
                       ppl_args(model, corpus, "-ctk", "turbo4", "-ctv", "turbo3"), env={"LLAMA_ARG_KV_LAYERS": rules})
    assert rc == 0, out[-3000:]
    check_kv_log(out, fam, types, PPL_CTX)


def bench_cells(ctx: ContextLog) -> int:
    """llama-bench sizes its context from the test (here 256 cells): the cells it logs."""
    assert ctx.caches and ctx.caches[0].nbytes, ctx
    return ctx.caches[0].nbytes[4]


def bench_rows(out: str) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


@pytest.mark.parametrize("form", ["list", "repeated"])
def test_bench_takes_a_list_of_rules(llama_build: manifest.Manifest, models: dict[str, tuple[Family, Path]],
                                     form: str) -> None:
    """``-kvl A,B`` (or ``-kvl A -kvl B``) is a list parameter: one result row per value,
    each row naming its rules, each context's log proving its types."""
    fam, model = models["llama"]
    a, b = RULES, "2..5=q8_0/turbo4"
    kvl = ["-kvl", f"{a},{b}"] if form == "list" else ["-kvl", a, "-kvl", b]
    res = subprocess.run([tool(llama_build, "llama-bench"), *bench_args(model, "-ctk", "turbo4", "-ctv", "turbo3",
                                                                         *kvl)],
                         capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = bench_rows(res.stdout)
    assert len(rows) == 2, res.stdout
    for row, rules in zip(rows, (a, b), strict=True):
        assert rules in row.values(), f"the row does not name its rules {rules!r}: {row}"
        assert row["type_k"] == "turbo4" and row["type_v"] == "turbo3"
    contexts = parse_kv_log(res.stderr, len(fam.caches))
    assert len(contexts) == 2, res.stderr[-3000:]
    for ctx, rules in zip(contexts, (a, b), strict=True):
        check_context(ctx, fam, expected_types(fam.n_layer, "turbo4", "turbo3", rules), bench_cells(ctx))


def test_bench_reads_turbo_layer_adaptive(llama_build: manifest.Manifest,
                                          models: dict[str, tuple[Family, Path]]) -> None:
    fam, model = models["llama"]
    rc, out = run_tool(tool(llama_build, "llama-bench"), bench_args(model, "-ctk", "turbo4", "-ctv", "turbo4"),
                       env={"TURBO_LAYER_ADAPTIVE": "7"})
    assert rc == 0, out[-3000:]
    contexts = parse_kv_log(out, len(fam.caches))
    assert len(contexts) == 1
    check_context(contexts[0], fam, expected_types(fam.n_layer, "turbo4", "turbo4", "0..1+-2..-1=-/q8_0"),
                  bench_cells(contexts[0]))


# --------------------------------------------------------------------------- TURBO_LAYER_ADAPTIVE

ADAPTIVE_CASES = [
    # mode, -ctk, -ctv, the rules the mode amounts to (only ever raising precision)
    ("0", "turbo4", "turbo3", ""),
    ("1", "turbo4", "turbo3", "0..3+-4..-1=q8_0/q8_0"),
    ("2", "turbo4", "turbo2", "-8..-1=q8_0/q8_0"),
    ("5", "q8_0", "turbo3", "0..1+-2..-1=-/turbo4"),
    ("5", "q8_0", "q8_0", ""),  # turbo4 V would lower q8_0: no change
    ("6", "turbo4", "turbo2", "-8..-1=-/turbo4"),
    ("7", "turbo4", "turbo4", "0..1+-2..-1=-/q8_0"),  # the middle keeps turbo4 (not the fork's turbo2)
    ("7", "turbo4", "f16", ""),  # q8_0 V would lower f16: no change
]


@pytest.mark.parametrize("via", ["env", "flag"])
@pytest.mark.parametrize("mode,type_k,type_v,as_rules", ADAPTIVE_CASES)
def test_turbo_layer_adaptive_modes(llama_build: manifest.Manifest, models: dict[str, tuple[Family, Path]],
                                    tmp_path: Path, mode: str, type_k: str, type_v: str, as_rules: str,
                                    via: str) -> None:
    fam, model = models["llama"]
    types = expected_types(fam.n_layer, type_k, type_v, as_rules)
    kv = ["-ctk", type_k, "-ctv", type_v] + (["--kv-adaptive", mode] if via == "flag" else [])
    log = serve_and_check(llama_build, tmp_path, fam, model, kv, types,
                          env={"TURBO_LAYER_ADAPTIVE": mode} if via == "env" else None)
    # whenever a mode is used the per-layer table is printed
    line = next(ln for ln in log.splitlines() if "llama_kv_cache: KV layers: " in ln)
    assert line.split("KV layers: ", 1)[1].strip() == runs(types, list(range(fam.n_layer)))


def test_an_explicit_rule_wins_over_the_mode_with_a_warning(llama_build: manifest.Manifest,
                                                            models: dict[str, tuple[Family, Path]],
                                                            tmp_path: Path) -> None:
    fam, model = models["llama"]
    rule = "0=-/turbo3"
    types = expected_types(fam.n_layer, "turbo4", "turbo4", "1+-2..-1=-/q8_0;" + rule)
    log = serve_and_check(llama_build, tmp_path, fam, model,
                          ["-ctk", "turbo4", "-ctv", "turbo4", "--kv-layers", rule], types,
                          env={"TURBO_LAYER_ADAPTIVE": "7"})
    warn = [ln for ln in log.splitlines() if rule in ln and re.search(r"TURBO_LAYER_ADAPTIVE=7|adaptive 7|mode 7", ln)]
    assert warn, "no warning naming both the rule and the mode:\n" + log[-3000:]


def test_a_mode_on_fewer_than_8_layers_warns_and_changes_nothing(llama_build: manifest.Manifest,
                                                                 tmp_path: Path) -> None:
    from tests.integration.tinymodel import write_tiny_model

    model = write_tiny_model(tmp_path / "four.gguf", n_layer=4, n_head_kv=1, head_dim=128)
    fam = Family("llama4", 4, (frozenset(range(4)),), {}, dict.fromkeys(range(4), 128), dict.fromkeys(range(4), 128),
                 lambda p: p)
    log = serve_and_check(llama_build, tmp_path, fam, model, ["-ctk", "turbo4", "-ctv", "turbo4"],
                          expected_types(4, "turbo4", "turbo4"), env={"TURBO_LAYER_ADAPTIVE": "7"})
    warn = [ln for ln in log.splitlines() if "TURBO_LAYER_ADAPTIVE=7" in ln and (" W " in ln or "warn" in ln.lower())]
    assert warn, "no warning that the mode does not apply:\n" + log[-3000:]


def test_an_unknown_mode_is_refused(llama_build: manifest.Manifest, models: dict[str, tuple[Family, Path]]) -> None:
    _, model = models["llama"]
    for env, flag in (({"TURBO_LAYER_ADAPTIVE": "3"}, []), ({}, ["--kv-adaptive", "3"])):
        rc, out = run_tool(tool(llama_build, "llama-server"),
                           [*server_args(model, "-ctk", "turbo4", "-ctv", "turbo4", *flag), "--port", "0"], env=env)
        assert rc != 0
        assert "TURBO_LAYER_ADAPTIVE=3: unknown mode (known: 0 1 2 5 6 7)" in out, out[-3000:]
        assert "load_tensors:" not in out


# --------------------------------------------------------------------------- bad input

NEEDS_MODEL = "model"  # found after the GGUF metadata is read (n_layer), before the weights
SYNTAX = "syntax"      # found without a model

BAD_RULES = [
    # rules, kind, rule number, rule text, column, message tail
    ("0=f16;40=q8_0", NEEDS_MODEL, 2, "40=q8_0", 7,
     "layer 40 is out of range: the model has 8 layers (0..7, or -8..-1)"),
    ("-9=q8_0", NEEDS_MODEL, 1, "-9=q8_0", 1, "layer -9 is out of range: the model has 8 layers (0..7, or -8..-1)"),
    ("0..1=q9_0", SYNTAX, 1, "0..1=q9_0", 6, "unknown cache type 'q9_0'"),
    ("0=q8_0/q4_K", SYNTAX, 1, "0=q8_0/q4_K", 8, "'q4_K' is not a KV cache type (accepted: "),
    ("0..3=q8_0;2=f16", NEEDS_MODEL, 2, "2=f16", 11, "layer 2 K is already set by rule 1"),
    ("0..3=-/q8_0;2=-/f16", NEEDS_MODEL, 2, "2=-/f16", 13, "layer 2 V is already set by rule 1"),
    ("0=f16;3..1=q8_0", NEEDS_MODEL, 2, "3..1=q8_0", 7, "empty range 3..1"),
    ("-1..-2=q8_0", NEEDS_MODEL, 1, "-1..-2=q8_0", 1, "empty range "),
    ("0..=q8_0", SYNTAX, 1, "0..=q8_0", 4, "expected a layer index"),
    ("0-1=q8_0", SYNTAX, 1, "0-1=q8_0", 2, "expected '..', '+' or '='"),
    ("0=", SYNTAX, 1, "0=", 3, "expected a cache type"),
    ("0=q8_0 1=f16", SYNTAX, 1, "0=q8_0 1=f16", 8, "expected ';'"),
]
BAD_IDS = ["out-of-range", "out-of-range-negative", "unknown-type", "not-a-kv-type", "overlap-k", "overlap-v",
           "empty-range", "empty-range-negative", "no-index", "dash-range", "no-type", "no-semicolon"]


def check_refusal(rc: int, out: str, kind: str, n: int, text: str, col: int, tail: str) -> None:
    assert rc != 0, out[-3000:]
    head = f'kv layers: rule {n} "{text}" at column {col}: '
    lines = [ln for ln in out.splitlines() if "kv layers: rule" in ln]
    assert lines, f"no kv layers error in:\n{out[-3000:]}"
    assert any(head + tail in ln for ln in lines), f"expected {head + tail!r} in one line of:\n" + "\n".join(lines)
    if tail.startswith("'q4_K'"):
        m = re.search(r"\(accepted: ([^)]*)\)", lines[0])
        assert m and set(m[1].split()) == set(KV_TYPES), lines[0]
    if tail.startswith("empty range") and tail == "empty range ":  # negative indices: either form of the range
        assert re.search(r"empty range (-1\.\.-2|7\.\.6)", lines[0]), lines[0]
    # before any weights load
    assert "load_tensors:" not in out, "the tool loaded the weights before refusing the rules"
    if kind == SYNTAX:
        assert "llama_model_loader:" not in out, "a syntax error was found only after opening the model"


@pytest.mark.parametrize("rules,kind,n,text,col,tail", BAD_RULES, ids=BAD_IDS)
@pytest.mark.parametrize("program", ["llama-server", "llama-cli", "llama-perplexity", "llama-bench"])
def test_bad_rules_are_refused_before_the_weights_load(llama_build: manifest.Manifest,
                                                       models: dict[str, tuple[Family, Path]], corpus: Path,
                                                       program: str, rules: str, kind: str, n: int, text: str,
                                                       col: int, tail: str) -> None:
    _, model = models["llama"]
    kv = ["-ctk", "turbo4", "-ctv", "turbo3"]
    flag = ["-kvl" if program == "llama-bench" else "--kv-layers", rules]
    args = {"llama-server": [*server_args(model, *kv, *flag), "--port", "0"], "llama-cli": cli_args(model, *kv, *flag),
            "llama-perplexity": ppl_args(model, corpus, *kv, *flag), "llama-bench": bench_args(model, *kv, *flag)}
    rc, out = run_tool(tool(llama_build, program), args[program], timeout=120)
    check_refusal(rc, out, kind, n, text, col, tail)


def test_bad_rules_from_the_environment_are_refused(llama_build: manifest.Manifest,
                                                    models: dict[str, tuple[Family, Path]]) -> None:
    _, model = models["llama"]
    rc, out = run_tool(tool(llama_build, "llama-server"),
                       [*server_args(model, "-ctk", "turbo4", "-ctv", "turbo3"), "--port", "0"],
                       env={"LLAMA_ARG_KV_LAYERS": "0..=q8_0"})
    check_refusal(rc, out, SYNTAX, 1, "0..=q8_0", 4, "expected a layer index")


@pytest.mark.parametrize("family,rules", [("qwen35", "0..2=q8_0"), ("qwen35", "0+1+4..6=-/f16"),
                                          ("gemma4", "-4..-1=q8_0"), ("gemma4", "0=f16;6+8=q8_0")])
def test_a_rule_naming_only_layers_without_a_cache_is_refused(llama_build: manifest.Manifest,
                                                              models: dict[str, tuple[Family, Path]],
                                                              family: str, rules: str) -> None:
    """Recurrent layers (qwen35) and layers that reuse another layer's cache (gemma4) own no
    KV cache: a rule naming only such layers is an error (found by libllama)."""
    _, model = models[family]
    n = len(rules.split(";"))
    text = rules.split(";")[-1]
    col = len(rules) - len(text) + 1
    for program, args in (("llama-server", [*server_args(model, "-ctk", "turbo4", "-ctv", "turbo3",
                                                         "--kv-layers", rules), "--port", "0"]),
                          ("llama-cli", cli_args(model, "-ctk", "turbo4", "-ctv", "turbo3", "--kv-layers", rules))):
        rc, out = run_tool(tool(llama_build, program), args, timeout=120)
        assert rc != 0, out[-3000:]
        head = f'kv layers: rule {n} "{text}" at column {col}: names only layers without a KV cache of their own'
        assert any(head in ln for ln in out.splitlines()), f"{program}: expected {head!r} in:\n{out[-3000:]}"


def test_a_rule_on_a_k_and_a_v_side_do_not_overlap(llama_build: manifest.Manifest,
                                                   models: dict[str, tuple[Family, Path]], tmp_path: Path) -> None:
    """Overlap is per side: one rule sets K, another V of the same layers."""
    fam, model = models["llama"]
    rules = "0..3=q8_0/-;2..5=-/f16"
    serve_and_check(llama_build, tmp_path, fam, model, ["-ctk", "turbo4", "-ctv", "turbo3", "--kv-layers", rules],
                    expected_types(fam.n_layer, "turbo4", "turbo3", rules))


# --------------------------------------------------------------------------- KV state

def tokenize(srv: LlamaServer, content: str) -> list[int]:
    status, doc = http_any(f"{srv.url}/tokenize", {"content": content, "add_special": True})
    assert status == 200
    toks = doc["tokens"]
    assert isinstance(toks, list)
    return [int(t) for t in toks]


def generate(srv: LlamaServer, prompt: list[int], n: int) -> tuple[list[int], list[float], dict[str, object]]:
    """n tokens at temperature 0 after ``prompt`` in slot 0: the tokens, their log-probabilities
    and the timings."""
    # no byte tokens: a random model's bytes are not UTF-8, and the server merges the
    # probabilities of incomplete characters
    doc = srv.completion({"prompt": prompt, "n_predict": n, "ignore_eos": True, "temperature": 0, "n_probs": 1,
                          "return_tokens": True, "cache_prompt": True, "id_slot": 0,
                          "logit_bias": [[t, False] for t in range(3, 3 + 256)]})
    toks = doc["tokens"]
    assert isinstance(toks, list) and len(toks) == n, doc
    probs = doc["completion_probabilities"]
    assert isinstance(probs, list) and len(probs) == n
    timings = doc["timings"]
    assert isinstance(timings, dict)
    return [int(t) for t in toks], [float(p["logprob"]) for p in probs], timings


def slot(srv: LlamaServer, action: str, filename: str) -> tuple[int, dict[str, object]]:
    return http_any(f"{srv.url}/slots/0?action={action}", {"filename": filename})


@pytest.mark.parametrize("family", ["llama", "gemma4", "qwen35"])
def test_slot_save_restart_restore_continue(llama_build: manifest.Manifest, models: dict[str, tuple[Family, Path]],
                                            tmp_path: Path, family: str) -> None:
    fam, model = models[family]
    saves = tmp_path / "slots"
    saves.mkdir()
    L = fam.n_layer
    recipe = ["-ctk", "turbo4", "-ctv", "turbo3", "--kv-layers", "0..1+-2..-1=q8_0;3=f16/-"]
    # the same per-layer types, written differently: restoring must not depend on the spelling
    same = ["-ctk", "turbo4", "-ctv", "turbo3", "--kv-layers", f"-{L}..-{L - 1}+{L - 2}..{L - 1}=q8_0/q8_0;3=f16/-"]
    # layers 0..1 and the last two keep a turbo3 V: another recipe
    other = ["-ctk", "turbo4", "-ctv", "turbo3", "--kv-layers", "0..1+-2..-1=q8_0/-;3=f16/-"]
    prompt_text = " ".join(WORDS[(i * 5) % len(WORDS)] for i in range(40))  # about 200 tokens
    slot_args = ["--slot-save-path", str(saves) + os.sep]
    if family == "gemma4":
        # a sliding-window cache of its default size drops the cells a restored prompt needs,
        # and the server then re-processes the whole prompt: keep them all
        slot_args.append("--swa-full")

    # the uninterrupted run
    with LlamaServer(tool(llama_build, "llama-server"), server_args(model, *recipe, *slot_args),
                     tmp_path / "ref.log") as srv:
        prompt = tokenize(srv, prompt_text)
        ref, ref_lp, _ = generate(srv, prompt, 32)
    check_kv_log(srv.log(), fam, expected_types(L, "turbo4", "turbo3", "0..1+-2..-1=q8_0;3=f16/-"), N_CTX)

    # the first half, saved
    with LlamaServer(tool(llama_build, "llama-server"), server_args(model, *recipe, *slot_args),
                     tmp_path / "save.log") as srv:
        first, first_lp, _ = generate(srv, prompt, 16)
        status, doc = slot(srv, "save", "mixed.bin")
        assert status == 200, doc
        assert int(doc["n_saved"]) >= len(prompt)  # type: ignore[call-overload]
    srv.assert_clean_exit()
    assert first == ref[:16]
    assert (saves / "mixed.bin").stat().st_size > 0

    # a new server (the same types, another spelling): restore, continue
    with LlamaServer(tool(llama_build, "llama-server"), server_args(model, *same, *slot_args),
                     tmp_path / "restore.log") as srv:
        status, doc = slot(srv, "restore", "mixed.bin")
        assert status == 200, doc
        n_restored = int(doc["n_restored"])  # type: ignore[call-overload]
        assert n_restored >= len(prompt)
        second, second_lp, timings = generate(srv, prompt + first, 16)
    srv.assert_clean_exit()
    assert first + second == ref, f"restored run {first + second} != uninterrupted {ref}"
    # and with the same probabilities: the restored cells are the saved ones
    assert max(abs(a - b) for a, b in zip(first_lp + second_lp, ref_lp, strict=True)) < 1e-3
    # the continuation used the restored cells: only the tokens after them were evaluated
    assert int(timings["cache_n"]) >= len(prompt), timings  # type: ignore[call-overload]
    assert int(timings["prompt_n"]) <= len(prompt + first) - n_restored + 1, timings  # type: ignore[call-overload]

    # a server with another recipe refuses the file, says so, and serves as if nothing was restored
    with LlamaServer(tool(llama_build, "llama-server"), server_args(model, *other, *slot_args),
                     tmp_path / "other.log") as srv:
        status, doc = slot(srv, "restore", "mixed.bin")
        after, after_lp, timings = generate(srv, prompt, 16)
    srv.assert_clean_exit()
    assert status >= 400, f"a slot saved with another recipe was restored: {doc}"
    err = doc.get("error")
    assert isinstance(err, dict) and "Unable to restore slot" in str(err.get("message")), doc
    log = srv.log()
    assert re.search(r"mismatched (key|value) type .*layer \d+", log), \
        "the server log does not say which layer's type differs:\n" + log[-3000:]
    assert int(timings["cache_n"]) == 0, timings  # type: ignore[call-overload]
    # the fresh run of the other recipe, for comparison
    with LlamaServer(tool(llama_build, "llama-server"), server_args(model, *other, *slot_args[2:]),
                     tmp_path / "fresh.log") as srv:
        fresh, fresh_lp, _ = generate(srv, prompt, 16)
    assert after == fresh
    assert max(abs(a - b) for a, b in zip(after_lp, fresh_lp, strict=True)) < 1e-3
