"""bench kld / bench speed: parsing the recorded outputs, bits/value, tables, JSON, every error,
and both commands end to end against stand-ins that replay the recorded outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import DATA
from tests.integration.tinymodel import write_tiny_model
from tests.unit.fakebuild import fake_build
from turboctl.bench import kld, speed
from turboctl.cli.main import app
from turboctl.paths import get_paths

BENCH = DATA / "bench"
runner = CliRunner()


# --------------------------------------------------------------------------- parsers
def test_parse_recorded_kld_output() -> None:
    f = kld.parse_kld_output((BENCH / "perplexity-kld-turbo4.txt").read_text())
    assert f is not None
    assert (f.ppl, f.ppl_error) == (12.368293, 0.550514)
    assert (f.ppl_base, f.ppl_base_error) == (12.289431, 0.547408)
    assert (f.mean_kld, f.mean_kld_error) == (0.007736, 0.000215)
    assert (f.kld_99, f.kld_max, f.kld_median) == (0.062813, 0.268986, 0.004046)
    assert (f.same_top_p, f.same_top_p_error) == (95.870, 0.311)
    assert (f.rms_dp, f.rms_dp_error) == (2.702, 0.094)
    assert f.chunks == 4


def test_parse_recorded_base_and_failed_runs() -> None:
    assert kld.parse_base_output((BENCH / "perplexity-base-f16.txt").read_text()) == (19.7569, 1.26797, 2)
    failed = (BENCH / "perplexity-turbo-fa-off.txt").read_text()
    assert kld.parse_kld_output(failed) is None
    assert kld.parse_base_output(failed) is None


def test_parse_recorded_bench_json() -> None:
    ms = speed.parse_bench_json((BENCH / "llama-bench-turbo4.json").read_text())
    assert [(m.test, m.n_depth, m.avg_ts, m.stddev_ts) for m in ms] == [
        ("pp64", 0, 74.177217, 0.0), ("tg16", 0, 4.588632, 0.0), ("pp64", 256, 269.928741, 0.0),
        ("tg16", 256, 90.557232, 0.0)]
    assert all((m.type_k, m.type_v) == ("turbo4", "turbo4") for m in ms)
    assert ms[0].samples_ts == (74.1772,)


def test_depths() -> None:
    assert speed.parse_depths("0,4096") == [0, 4096]
    assert speed.parse_depths("0, 4096,0") == [0, 4096]
    for bad in ("", "x", "-1", "0,-5"):
        with pytest.raises(Exception, match="--depth"):
            speed.parse_depths(bad)


# --------------------------------------------------------------------------- bench kld, end to end
@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    fake_build(get_paths().home)
    corpus = tmp_path / "docs-valid.txt"
    corpus.write_text("the cache of the model was the first key to the value\n" * 200)
    args_log = tmp_path / "args.jsonl"
    monkeypatch.setenv("FAKE_ARGS_LOG", str(args_log))
    monkeypatch.delenv("LLAMA_ATTN_ROT_DISABLE", raising=False)
    return {"model": write_tiny_model(tmp_path / "tiny.gguf"), "corpus": corpus, "args": args_log}


def started(world: dict[str, Path]) -> list[list[str]]:
    path = world["args"]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kld_args(world: dict[str, Path], *extra: str) -> list[str]:
    return ["bench", "kld", "--model", str(world["model"]), "--corpus", str(world["corpus"]), "--ctx", "2048",
            "--chunks", "4", "--threads", "2", *extra]


def test_bench_kld_json(world: dict[str, Path]) -> None:
    r = runner.invoke(app, kld_args(world, "--json"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["schema"] == "turboctl.bench.kld/1"
    assert [x["label"] for x in doc["results"]] == list(kld.DEFAULT_KV)
    assert [x["bits_per_value"] for x in doc["results"]] == [16, 8.5, 4.5, 4.5, 4.25, 3.25, 2.25, 5.875]
    assert [x["upstream_rotated"] for x in doc["results"]] == [False, True, True, True, False, False, False, True]
    assert (doc["ctx"], doc["chunks"], doc["chunks_run"], doc["threads"]) == (2048, 4, 2, 2)
    assert doc["corpus"]["name"] == "docs-valid.txt" and len(doc["corpus"]["sha256"]) == 64
    assert doc["llama_cpp"]["version"][0] == "version: 0.5.0-dev (build 1, commit fake000)"
    f16, q4, t4 = doc["results"][0], doc["results"][2], doc["results"][4]
    assert f16["mean_kld"] == 0.000002 and q4["mean_kld"] == 0.008812 and t4["mean_kld"] == 0.007736
    assert t4["kld_99"] == 0.062813 and t4["same_top_p"] == 95.87 and t4["ppl"] == 12.368293
    assert doc["pipeline_check"] == {"ok": True, "f16_mean_kld": 0.000002, "limit": kld.PIPELINE_KLD_MAX}
    assert doc["notes"] == [kld.ROTATION_NOTE]
    base = doc["base"]
    assert (base["ppl"], base["ppl_error"], base["size_bytes"], base["kept"]) == (19.7569, 1.26797, 4096, False)
    assert not Path(base["logits_file"]).exists()  # deleted at the end
    assert Path(base["logits_file"]).parent == get_paths().cache / "kld"
    # the exact commands, in order: the base, then each configuration against it
    runs = started(world)
    perplexity = str(Path(get_paths().home) / "build" / "fake-cpu" / "bin" / "llama-perplexity")
    common = ["-m", str(world["model"].resolve()), "-f", str(world["corpus"].resolve()), "-c", "2048",
              "--chunks", "4", "-t", "2", "-fa", "on"]
    assert runs[0] == [*common, "-ctk", "f16", "-ctv", "f16", "--kl-divergence-base", base["logits_file"]]
    assert runs[8] == [*common, "-ctk", "q8_0", "-ctv", "turbo3", "--kl-divergence-base", base["logits_file"],
                       "--kl-divergence"]
    assert len(runs) == 9
    assert base["command"] == [perplexity, *runs[0]]
    assert doc["results"][7]["command"] == [perplexity, *runs[8]]
    assert doc["results"][7]["command_line"].startswith(f"{perplexity} -m ")
    assert "==> [8/8] q8_0/turbo3: K=q8_0 V=turbo3 (5.875 bits/value)" in r.stderr  # progress per config


def test_bench_kld_table_keep_base_and_output(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    r = runner.invoke(app, kld_args(world, "--kv", "q4_0", "--kv", "turbo4,q8_0/turbo3", "--keep-base",
                                    "--output", str(out)))
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert [x["label"] for x in doc["results"]] == ["q4_0", "turbo4", "q8_0/turbo3"]
    assert doc["pipeline_check"] is None  # no f16 row asked for
    assert Path(doc["base"]["logits_file"]).is_file() and doc["base"]["kept"] is True
    text = r.stdout
    assert "corpus                  docs-valid.txt sha256:" + doc["corpus"]["sha256"] in text
    assert "ctx / chunks / threads  2048 / 2 / 2" in text
    assert "llama.cpp               version: 0.5.0-dev (build 1, commit fake000)" in text
    assert "base                    f16 K/V, PPL 19.7569 ± 1.2680; logits 0.0 MiB kept at" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("K/V"))
    assert lines[header].split() == ["K/V", "bits/value", "mean", "KLD", "99.0%", "KLD", "same", "top", "p", "%",
                                     "PPL"]
    assert lines[header + 1].split() == ["q4_0", "*", "4.5", "0.008812", "±", "0.000215", "0.062813", "95.870",
                                         "±", "0.311", "12.3683", "±", "0.5505"]
    assert lines[header + 2].split()[:3] == ["turbo4", "4.25", "0.007736"]
    assert lines[header + 3].split()[:3] == ["q8_0/turbo3", "*", "5.875"]
    assert "* q8_0, q4_0, q4_1, iq4_nl, q5_0 and q5_1 K/V are rotated by upstream llama.cpp b11312" in text
    assert f"ok results: {out}" in text


def test_bench_kld_pipeline_check_and_rotation_env(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_F16_KLD", "0.012000")
    monkeypatch.setenv("LLAMA_ATTN_ROT_DISABLE", "1")
    r = runner.invoke(app, kld_args(world, "--kv", "f16", "--kv", "q4_0", "--json"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["pipeline_check"]["ok"] is False and doc["attn_rot_disabled"] is True
    assert doc["notes"][0].startswith("LLAMA_ATTN_ROT_DISABLE is set: upstream's attn_rot was OFF")
    assert doc["notes"][1].startswith("pipeline check FAILED: f16 against its own f16 base gave mean KLD 0.012000")


def test_bench_kld_refuses_before_starting(world: dict[str, Path], tmp_path: Path) -> None:
    fake_build(get_paths().home, with_selftest=False)
    r = runner.invoke(app, kld_args(world, "--kv", "q4_0", "--kv", "turbo4"))
    assert r.exit_code == 12
    assert "error: refusing turbo4 on the cpu backend: the backend self-test never ran" in r.stderr
    assert started(world) == []  # nothing ran, not even the base
    fake_build(get_paths().home)
    odd = write_tiny_model(tmp_path / "hd80.gguf", head_dim=80)
    r = runner.invoke(app, ["bench", "kld", "--model", str(odd), "--corpus", str(world["corpus"]), "--kv", "q8_0",
                            "--kv", "turbo3"])
    assert r.exit_code == 13
    assert f"error: {odd}: K cache type turbo3 does not support head dim 80 (layers 0-1)" in r.stderr
    assert "hint: use q8_0 or q4_0 for this model" in r.stderr
    assert started(world) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--kv", "turbo5"], 2, "error: unknown K cache type 'turbo5'; did you mean turbo4?"),
        (["--ctx", "8"], 2, "error: --ctx 8: must be at least 16"),
        (["--chunks", "0"], 2, "error: --chunks 0: must be at least 1"),
        (["--threads", "0"], 2, "error: --threads 0: must be at least 1"),
    ],
)
def test_bench_kld_usage_errors(world: dict[str, Path], args: list[str], code: int, message: str) -> None:
    r = runner.invoke(app, kld_args(world, *args))
    assert r.exit_code == code and message in r.stderr
    assert started(world) == []


def test_bench_kld_missing_inputs(world: dict[str, Path], tmp_path: Path) -> None:
    r = runner.invoke(app, ["bench", "kld", "--model", str(world["model"]), "--corpus", str(tmp_path / "no.txt")])
    assert r.exit_code == 2 and f"error: --corpus {tmp_path / 'no.txt'}: file not found" in r.stderr
    r = runner.invoke(app, ["bench", "kld", "--model", str(tmp_path / "no.gguf"), "--corpus", str(world["corpus"])])
    assert r.exit_code == 14 and f"error: model file not found: {tmp_path / 'no.gguf'}" in r.stderr
    get_paths().current_manifest.unlink()
    r = runner.invoke(app, kld_args(world))
    assert r.exit_code == 3 and "error: nothing built yet in" in r.stderr
    assert "hint: run turboctl build first" in r.stderr


def test_bench_kld_run_failures(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_PPL_FAIL", "turbo2")
    r = runner.invoke(app, kld_args(world, "--kv", "q4_0", "--kv", "turbo2"))
    assert r.exit_code == 15
    assert "error: llama-perplexity (turbo2) failed (exit code 1):" in r.stderr
    assert "the TurboQuant cache type turbo4 requires flash attention" in r.stderr  # the relevant log lines
    assert "log: " in r.stderr
    base = Path(started(world)[0][-1])
    assert not base.exists()  # removed after a failure too


LOST = "so the last lines of its output were lost at exit"  # the hint for output lost at exit
FIGURES = '"Mean PPL(Q)", "Mean    KLD", "99.0%   KLD" or "Same top p"'


@pytest.mark.parametrize(("env", "message", "hint"), [
    # real outputs of b11312's llama-perplexity whose logger lost the last lines at exit (exit code 0)
    ({"FAKE_PPL_KLD_OUTPUT": "perplexity-kld-lost-tail.txt"},
     f'llama-perplexity (q4_0) printed no KL divergence statistics: no {FIGURES} line; its output ends '
     'with "3     401.0089 ±   31.0880      -0.00099 ±    0.00060    ..." (after chunk 3 of 4)', LOST),
    ({"FAKE_PPL_KLD_OUTPUT": "perplexity-kld-lost-stats.txt"},
     'llama-perplexity (q4_0) printed incomplete KL divergence statistics: no "99.0%   KLD" or "Same top p" '
     'line; its output ends with "99.9%   KLD:   0.000094" (after chunk 4 of 4)', LOST),
    # too few scored tokens: llama-perplexity computes no statistics (--ctx 32, 2 chunks)
    ({"FAKE_PPL_KLD_OUTPUT": "perplexity-kld-few-tokens.txt"},
     f"llama-perplexity (q4_0) printed no KL divergence statistics: no {FIGURES} line: it scored only 30 "
     "tokens (2 chunk(s) x 15)",
     "llama-perplexity computes the statistics over at least 100 scored tokens (the second half of each "
     "chunk of --ctx 32): use more --chunks, a larger --ctx or a longer corpus"),
    # an error it reported, exit code 0 all the same (a base file cut short)
    ({"FAKE_PPL_KLD_OUTPUT": "perplexity-kld-cut-base.txt"},
     f"llama-perplexity (q4_0) printed no KL divergence statistics: no {FIGURES} line; it reported: "
     "0.00.115.184 E kl_divergence: failed reading log-probs for chunk 1",
     "the log has its full output; run the command above by hand to see it"),
    # the base run
    ({"FAKE_PPL_BASE_OUTPUT": "perplexity-base-lost-tail.txt"},
     'llama-perplexity (base f16) printed no "Final estimate: PPL" line; its output ends with '
     '"[1]533.0752,[2]401.1204,[3]401.4070," (after its "calculating perplexity over 4 chunks" line)', LOST),
    ({"FAKE_PPL_BASE_OUTPUT": "perplexity-base-short-corpus.txt"},
     'llama-perplexity (base f16) printed no "Final estimate: PPL" line: the corpus is too short for --ctx 128',
     "the corpus tokenizes to 68 tokens, but needs at least 256 tokens (2 x --ctx); use a longer corpus or a "
     "smaller --ctx"),
    ({"FAKE_PPL_NO_BASE_FILE": "1"},
     "llama-perplexity (base f16) printed its final estimate but there is no base file {base}",
     "it writes the file given to --kl-divergence-base; check {base_dir}"),
])
def test_bench_kld_missing_figures(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                   env: dict[str, str], message: str, hint: str) -> None:
    """Every way a run can end with exit code 0 but without its figures has its own message:
    what is missing, in which run, where the output stops, and the log."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    r = runner.invoke(app, kld_args(world, "--kv", "q4_0", "--json"))
    assert r.exit_code == 15
    base = started(world)[0][-1]
    doc = json.loads(r.stdout)
    fill = {"base": base, "base_dir": str(Path(base).parent)}
    assert doc["message"] == message.format(**fill)
    assert hint.format(**fill) in doc["hint"]
    assert doc["log"] and Path(doc["log"]).is_file()
    assert f"log: {doc['log']}" in r.stderr
    assert doc["details"]  # the lines that show it
    if hint == LOST:
        assert "patch series flushes it at exit" in doc["hint"]
        assert doc["details"][-1] in (BENCH / next(iter(env.values()))).read_text()
    assert not Path(base).exists()  # removed after a failure too


def test_kld_parsers_on_lost_output() -> None:
    lost = (BENCH / "perplexity-kld-lost-stats.txt").read_text()
    assert kld.parse_kld_output(lost) is None
    assert kld.missing_figures(lost) == ["99.0%   KLD", "Same top p"]
    assert kld.missing_figures((BENCH / "perplexity-kld-turbo4.txt").read_text()) == []
    assert kld.parse_base_output((BENCH / "perplexity-base-lost-tail.txt").read_text()) is None


# --------------------------------------------------------------------------- bench speed, end to end
def speed_args(world: dict[str, Path], *extra: str) -> list[str]:
    return ["bench", "speed", "--model", str(world["model"]), "-p", "64", "-n", "16", "--depth", "0,256",
            "--threads", "2", "--reps", "1", *extra]


def test_bench_speed_json(world: dict[str, Path]) -> None:
    r = runner.invoke(app, speed_args(world, "--json"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["schema"] == "turboctl.bench.speed/1"
    assert [x["label"] for x in doc["results"]] == list(speed.DEFAULT_KV)
    assert (doc["n_prompt"], doc["n_gen"], doc["depths"], doc["threads"], doc["reps"]) == (64, 16, [0, 256], 2, 1)
    turbo4 = doc["results"][3]
    assert [(t["test"], t["depth"]) for t in turbo4["tests"]] == [("pp64", 0), ("tg16", 0), ("pp64", 256),
                                                                  ("tg16", 256)]
    for t in turbo4["tests"]:  # the stand-in runs turbo4 at 0.8x and q4_0 at 0.9x the f16 speed
        assert t["ratio_vs_f16"] == pytest.approx(0.8, rel=1e-5)
        assert t["ratio_vs_q4_0"] == pytest.approx(0.8 / 0.9, rel=1e-5)
    # one llama-bench run per K/V pair, never a cross product
    runs = started(world)
    assert len(runs) == 6
    assert runs[3] == ["-m", str(world["model"].resolve()), "-fa", "1", "-ctk", "turbo4", "-ctv", "turbo4",
                       "-p", "64", "-n", "16", "-d", "0,256", "-t", "2", "-r", "1", "-o", "json", "--progress"]
    assert turbo4["command"][1:] == runs[3]
    # the commands to run by hand are printed before the runs
    assert f"  {turbo4['command_line']}" in r.stderr


def test_bench_speed_table(world: dict[str, Path]) -> None:
    r = runner.invoke(app, speed_args(world, "--kv", "f16", "--kv", "turbo4"))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("K/V"))
    assert lines[header].split() == ["K/V", "bits/value", "test", "depth", "t/s", "vs", "f16"]  # no q4_0 in the run
    assert lines[header + 1].split() == ["f16", "16", "pp64", "0", "74.18", "±", "0.00", "1.000"]
    assert lines[header + 5].split() == ["turbo4", "4.25", "pp64", "0", "59.34", "±", "0.00", "0.800"]


def test_bench_speed_errors(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    r = runner.invoke(app, speed_args(world, "-p", "0", "-n", "0"))
    assert r.exit_code == 2 and "need a prompt or a generation length > 0" in r.stderr
    r = runner.invoke(app, speed_args(world, "--reps", "0"))
    assert r.exit_code == 2 and "--reps 0: must be at least 1" in r.stderr
    r = runner.invoke(app, speed_args(world, "--kv", "turbo3/f16"))
    assert r.exit_code == 12 and "no FLASH_ATTN_EXT case for this K/V pair" in r.stderr
    assert started(world) == []
    monkeypatch.setenv("FAKE_BENCH_OUTPUT", "garbage")
    r = runner.invoke(app, speed_args(world, "--kv", "q8_0"))
    assert r.exit_code == 15 and "error: llama-bench (q8_0) printed no usable JSON" in r.stderr



@pytest.mark.parametrize(("replay", "kv", "problem"), [
    ("garbage", "q8_0", "printed no usable JSON to {out}: not a JSON document: Expecting value: line 1 column 1 "
                        "(char 0)"),
    # what a llama-bench that stops during its third test leaves (it prints each test as it completes)
    ("llama-bench-turbo4-cut.json", "turbo4",
     "printed no usable JSON to {out}: the document is cut short: it ends at line 93 before it is complete"),
    # a real document of a run at depth 0 only, for a plan at depths 0 and 256
    ("llama-bench-turbo4-depth0.json", "turbo4",
     "reported 2 of the 4 tests: no pp64 at depth 256, tg16 at depth 256 in {out}"),
    # the recorded turbo4 document for a q8_0 run
    ("llama-bench-turbo4.json", "q8_0",
     "reported 4 of its 4 tests for other cache types (K=turbo4 V=turbo4, expected K=q8_0 V=q8_0) in {out}"),
])
def test_bench_speed_unusable_output(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                     replay: str, kv: str, problem: str) -> None:
    """Each way a llama-bench document can lack figures says what is missing, in which
    configuration, and where the document and the log are."""
    monkeypatch.setenv("FAKE_BENCH_OUTPUT", replay)
    r = runner.invoke(app, speed_args(world, "--kv", kv, "--json"))
    assert r.exit_code == 15
    doc = json.loads(r.stdout)
    out = Path(doc["log"]).with_name(f"{Path(doc['log']).stem}-1-{kv}.json")
    assert out.is_file()
    assert doc["message"] == f"llama-bench ({kv}) " + problem.format(out=out)
    assert f"log: {doc['log']}" in r.stderr


def test_parse_bench_json_errors() -> None:
    for text, message in [("", "the document is empty"), ("{}", "expected a JSON array of tests"),
                          ('[{"type_k": "f16"}]', "test 1 of 1 lacks 'type_v'"),
                          ('[1]', "test 1 of 1 is not a JSON object")]:
        with pytest.raises(ValueError, match=message):
            speed.parse_bench_json(text)
    good = json.loads((BENCH / "llama-bench-turbo4.json").read_text())
    good[1]["avg_ts"] = "fast"
    with pytest.raises(ValueError, match="test 2 of 4 has a malformed value"):
        speed.parse_bench_json(json.dumps(good))


# --------------------------------------------------------------------------- recipes in --kv
def test_bench_kld_recipes(world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    envlog = tmp_path / "env.jsonl"
    monkeypatch.setenv("FAKE_ENV_LOG", str(envlog))
    monkeypatch.setenv("TURBO_LAYER_ADAPTIVE", "1")  # the user's environment: left out of every run
    r = runner.invoke(app, kld_args(world, "--kv", "q4_0,turbo4/turbo3;0=q8_0", "--kv", "turbo4;mode=7", "--json"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [x["label"] for x in doc["results"]] == ["q4_0", "turbo4/turbo3;0=q8_0", "turbo4;mode=7"]
    # the tiny model: 2 layers, head dim 128 for K and V: layer 0 q8_0/q8_0, layer 1 turbo4/turbo3
    assert [x["bits_per_value"] for x in doc["results"]] == [4.5, (8.5 * 2 + 4.25 + 3.25) / 4, 4.25]
    assert doc["results"][1]["recipe"] == {"mode": None, "rules": "0=q8_0", "pairs": ["q8_0/q8_0", "turbo4/turbo3"],
                                           "warnings": []}
    assert doc["results"][1]["upstream_rotated"] is True and doc["results"][2]["upstream_rotated"] is False
    assert doc["results"][2]["recipe"]["warnings"] == [
        "TURBO_LAYER_ADAPTIVE=7: the modes need at least 8 layers and the model has 2: no change"]
    runs = started(world)
    assert runs[2][-9:-3] == ["-ctk", "turbo4", "-ctv", "turbo3", "--kv-layers", "0=q8_0"]
    assert runs[3][-9:-3] == ["-ctk", "turbo4", "-ctv", "turbo4", "--kv-adaptive", "7"]
    assert runs[0][-4:-2] == ["-ctv", "f16"] and "--kv-layers" not in runs[0]  # the base: f16 on every layer
    envs = [json.loads(line) for line in envlog.read_text().splitlines()]
    assert envs == [{"TURBO_LAYER_ADAPTIVE": None, "LLAMA_ARG_KV_LAYERS": None}] * 4
    assert "warning: TURBO_LAYER_ADAPTIVE=1 is set: left out of every run" in r.stderr
    assert "[2/3] turbo4/turbo3;0=q8_0: per layer K=q8_0 V=q8_0, K=turbo4 V=turbo3 (6.125 bits/value)" in r.stderr
    assert "warning: turbo4;mode=7: TURBO_LAYER_ADAPTIVE=7: the modes need at least 8 layers" in r.stderr


def test_bench_speed_recipes(world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    envlog = tmp_path / "env.jsonl"
    monkeypatch.setenv("FAKE_ENV_LOG", str(envlog))
    monkeypatch.setenv("LLAMA_ARG_KV_LAYERS", "0=f16")
    r = runner.invoke(app, speed_args(world, "--kv", "turbo4/turbo3;-1=q8_0,turbo4;mode=7", "--json"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [x["label"] for x in doc["results"]] == ["turbo4/turbo3;-1=q8_0", "turbo4;mode=7"]
    assert doc["results"][0]["bits_per_value"] == (4.25 + 3.25 + 8.5 * 2) / 4
    assert doc["results"][0]["recipe"] == {"mode": None, "rules": "-1=q8_0",
                                           "pairs": ["turbo4/turbo3", "q8_0/q8_0"], "env": {}}
    assert doc["results"][1]["recipe"]["env"] == {"TURBO_LAYER_ADAPTIVE": "7"}
    runs = started(world)
    assert runs[0][2:10] == ["-fa", "1", "-ctk", "turbo4", "-ctv", "turbo3", "-kvl", "-1=q8_0"]
    assert runs[1][2:8] == ["-fa", "1", "-ctk", "turbo4", "-ctv", "turbo4"] and "-kvl" not in runs[1]
    envs = [json.loads(line) for line in envlog.read_text().splitlines()]
    assert envs == [{"TURBO_LAYER_ADAPTIVE": None, "LLAMA_ARG_KV_LAYERS": None},
                    {"TURBO_LAYER_ADAPTIVE": "7", "LLAMA_ARG_KV_LAYERS": None}]
    assert "TURBO_LAYER_ADAPTIVE=7 " in r.stderr + r.stdout  # the command to run by hand names the variable


def test_bench_recipe_errors_before_anything_starts(world: dict[str, Path]) -> None:
    cases = [
        (["--kv", "turbo4;0..=q8_0"], 2, 'kv layers: rule 1 "0..=q8_0" at column 4: expected a layer index'),
        (["--kv", "turbo4;5=q8_0"], 13, 'kv layers: rule 1 "5=q8_0" at column 1: layer 5 is out of range: the model '
                                        "has 2 layers (0..1, or -2..-1)"),
        (["--kv", "turbo4;0=q8_0;0=-/f16"], 13, "layer 0 V is already set by rule 1"),
        # every distinct pair goes through the gate: turbo2/turbo4 has no FLASH_ATTN_EXT case in the self-test
        (["--kv", "turbo4/turbo3;1=turbo2/turbo4"], 12, "refusing K=turbo2 V=turbo4 on the cpu backend: the self-test "
                                                        "has no FLASH_ATTN_EXT case for this K/V pair"),
    ]
    for extra, code, message in cases:
        r = runner.invoke(app, kld_args(world, *extra))
        assert r.exit_code == code, r.output
        assert message in r.stderr
        r = runner.invoke(app, speed_args(world, *extra))
        assert r.exit_code == code and message in r.stderr
    assert started(world) == []


def test_bench_recipe_a_build_without_the_type(world: dict[str, Path]) -> None:
    fake_build(get_paths().home, cache_types=["f32", "f16", "q8_0", "q4_0"])
    r = runner.invoke(app, kld_args(world, "--kv", "q8_0;1=-/turbo3"))
    assert r.exit_code == 12
    assert "this build's llama.cpp does not accept the KV cache type turbo3" in r.stderr
    # a type the recipe names but no layer ends up with is refused too (llama.cpp parses it)
    r = runner.invoke(app, kld_args(world, "--kv", "q8_0;mode=5"))
    assert r.exit_code == 12 and "does not accept the KV cache type turbo4" in r.stderr
    assert started(world) == []
