"""A fake current build for the gate, doctor and bench tests.

Its manifest points at small scripts that stand in for llama-perplexity and llama-bench and
replay the recorded real outputs in ``tests/data/bench``; its self-test record is made from
the recorded real ``test-backend-ops`` SQL in ``tests/data/selftest`` (optionally with rows
edited to fail or be unsupported).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests.conftest import DATA
from turboctl.build import gitrepo, manifest, selftest
from turboctl.build.pins import load_pin
from turboctl.paths import Paths

REPO = Path(__file__).resolve().parents[2]
SQL = DATA / "selftest" / "test-backend-ops-cpu-turbo.sql"
ALL_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1",
             "turbo2", "turbo3", "turbo4"]

FAKE_PERPLEXITY = r'''
import json, os, pathlib, sys
DATA = pathlib.Path(%(data)r)
args = sys.argv[1:]
def arg(flag):
    return args[args.index(flag) + 1] if flag in args else None
record = os.environ.get("FAKE_ARGS_LOG")
if record:
    with open(record, "a") as f:
        f.write(json.dumps(args) + "\n")
envlog = os.environ.get("FAKE_ENV_LOG")  # the per-layer KV variables each run saw
if envlog:
    with open(envlog, "a") as f:
        f.write(json.dumps({k: os.environ.get(k) for k in ("TURBO_LAYER_ADAPTIVE", "LLAMA_ARG_KV_LAYERS")}) + "\n")
ctk, ctv = arg("-ctk"), arg("-ctv")
if os.environ.get("FAKE_PPL_FAIL") in (ctk, ctv):
    sys.stdout.write((DATA / "perplexity-turbo-fa-off.txt").read_text())
    sys.exit(1)
if "--kl-divergence" in args:
    # FAKE_PPL_KLD_OUTPUT: replay this recorded output (a file in tests/data/bench) instead
    text = (DATA / os.environ.get("FAKE_PPL_KLD_OUTPUT", "perplexity-kld-turbo4.txt")).read_text()
    if ctk == "f16" and ctv == "f16":
        kld = os.environ.get("FAKE_F16_KLD", "0.000002")
        text = text.replace("Mean    KLD:   0.007736", "Mean    KLD:   " + kld)
        text = text.replace("99.0%%   KLD:   0.062813", "99.0%%   KLD:   0.000011")
        text = text.replace("Same top p: 95.870", "Same top p: 99.990")
    elif ctk == "q4_0":
        text = text.replace("Mean    KLD:   0.007736", "Mean    KLD:   0.008812")
    sys.stdout.write(text)
else:
    # FAKE_PPL_BASE_OUTPUT: replay this recorded output instead; FAKE_PPL_NO_BASE_FILE: write no base file
    if not os.environ.get("FAKE_PPL_NO_BASE_FILE"):
        pathlib.Path(arg("--kl-divergence-base")).write_bytes(b"_logits_" + bytes(4088))
    sys.stdout.write((DATA / os.environ.get("FAKE_PPL_BASE_OUTPUT", "perplexity-base-f16.txt")).read_text())
'''

FAKE_BENCH = r'''
import json, os, pathlib, sys
DATA = pathlib.Path(%(data)r)
args = sys.argv[1:]
def arg(flag):
    return args[args.index(flag) + 1] if flag in args else None
record = os.environ.get("FAKE_ARGS_LOG")
if record:
    with open(record, "a") as f:
        f.write(json.dumps(args) + "\n")
envlog = os.environ.get("FAKE_ENV_LOG")  # the per-layer KV variables each run saw
if envlog:
    with open(envlog, "a") as f:
        f.write(json.dumps({k: os.environ.get(k) for k in ("TURBO_LAYER_ADAPTIVE", "LLAMA_ARG_KV_LAYERS")}) + "\n")
ctk, ctv = arg("-ctk"), arg("-ctv")
if os.environ.get("FAKE_BENCH_OUTPUT") == "garbage":
    print("not json")
    sys.exit(0)
if os.environ.get("FAKE_BENCH_OUTPUT"):  # replay this recorded document (a file in tests/data/bench)
    sys.stdout.write((DATA / os.environ["FAKE_BENCH_OUTPUT"]).read_text())
    sys.exit(0)
speed = {"f16": 1.0, "q8_0": 0.95, "q4_0": 0.9, "turbo4": 0.8, "turbo3": 0.75, "turbo2": 0.7}
tests = json.loads((DATA / "llama-bench-turbo4.json").read_text())
for i, t in enumerate(tests):
    sys.stderr.write("llama-bench: benchmark %%d/%%d: starting\n" %% (i + 1, len(tests)))
    t["type_k"], t["type_v"] = ctk, ctv
    t["avg_ts"] = round(t["avg_ts"] * speed.get(ctk, 0.5), 6)
print(json.dumps(tests, indent=2))
'''


def edit_sql(text: str, op: str, params: str, *, supported: int, passed: int, error: str) -> str:
    """Set supported/passed/error of every row of ``op`` whose params contain ``params``."""
    out = []
    for line in text.splitlines(keepends=True):
        if f"'{op}', '" in line and params in line:
            line = re.sub(r"'test', '1', '1', ''",
                          f"'test', '{supported}', '{passed}', '{error}'", line)
        out.append(line)
    return "".join(out)


def metal_like_sql(cpu_text: str) -> str:
    """A CPU recording as the Metal backend reports it: the backend named MTL0, and every
    FLASH_ATTN_EXT case whose K and V head dims differ "not supported" (Metal's supports_op
    claims turbo pairs at dk == dv only: turbo_fa_head_dims_supported in turbo-fa.h). In
    test-backend-ops such a row has supported = passed = 0 and the error "not supported"."""
    out = []
    for line in cpu_text.splitlines(keepends=True):
        if line.startswith("INSERT INTO test_backend_ops"):
            line = re.sub(r"^(.* VALUES \('[^']*', '[^']*', )'CPU', ", r"\1'MTL0', ", line)
            dims = re.search(r"'FLASH_ATTN_EXT', 'hsk=(\d+),hsv=(\d+),", line)
            if dims and dims.group(1) != dims.group(2):
                line = line.replace("'test', '1', '1', ''", "'test', '0', '0', 'not supported'")
        out.append(line)
    return "".join(out)


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n" + body % {"data": str(DATA / "bench")})
    path.chmod(0o755)


def fake_build(home: Path, *, cache_types: list[str] | None = None, sql: str | None = None,
               with_selftest: bool = True, backend: str = "cpu") -> manifest.Manifest:
    """Write the fake build under ``home`` and make it the current one."""
    paths = Paths(home)
    build_dir = home / "build" / "fake-cpu"
    bin_dir = build_dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    _script(bin_dir / "llama-perplexity", FAKE_PERPLEXITY)
    _script(bin_dir / "llama-bench", FAKE_BENCH)
    for name in ("llama-server", "test-backend-ops"):
        _script(bin_dir / name, "print(%(data)r)\n")
    rpc = {"base": load_pin().commit, "series": "f" * 64, "types": {"turbo2": 43, "turbo3": 44, "turbo4": 45}}
    (build_dir / "rpc-identity.json").write_text(json.dumps(rpc))
    worker = bin_dir / "ggml-rpc-server"
    worker.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                      f"from tests.unit.rpcfakes import main\n"
                      f"sys.exit(main(sys.argv[1:], {str(build_dir / 'rpc-identity.json')!r}))\n")
    worker.chmod(0o755)
    (bin_dir / "libggml-cpu.so.0.1").write_bytes(b"\x7fELF fake ggml cpu")
    link = bin_dir / "libggml-cpu.so"
    if not link.is_symlink():
        link.symlink_to("libggml-cpu.so.0.1")
    binaries = {
        p.name: manifest.BinaryInfo(path=str(p), sha256=gitrepo.file_sha256(p), size=p.stat().st_size)
        for p in sorted(bin_dir.iterdir()) if not p.name.startswith("lib")
    }
    record = None
    if with_selftest:
        record = record_from_sql(sql if sql is not None else SQL.read_text(), bin_dir / "test-backend-ops",
                                 home / "logs" / "selftest-fake.log", backend=backend)
    pin = load_pin()
    m = manifest.Manifest.model_validate({
        "schema": manifest.SCHEMA, "turboctl_version": "0", "created": manifest.now_iso(),
        "pin": {"url": pin.llama_cpp.url, "tag": pin.llama_cpp.tag, "commit": pin.commit},
        "source": {"kind": "sdist", "detail": "", "path": "", "base_commit": "a" * 40},
        "patches": {"directory": "", "series": [], "head": "b" * 40},
        "backend": backend, "host": {"system": "Linux", "machine": "x86_64"},
        "cmake": {"generator": "Ninja", "flags": [], "build_dir": str(build_dir), "targets": [],
                  "jobs": 2, "configured": False, "build_steps": 0},
        "compiler": {}, "binaries": {k: v.model_dump() for k, v in binaries.items()},
        "cache_types": cache_types if cache_types is not None else ALL_TYPES,
        "version": ["version: 0.5.0-dev (build 1, commit fake000)", "built with GNU 12.2.0 for Linux x86_64"],
        "timings_s": {},
        "selftest": record.model_dump(mode="json") if record else None,
        "rpc": {**rpc, "worker": "ggml-rpc-server"},
    })
    manifest.save(m, build_dir, paths)
    return m


def record_from_sql(text: str, binary: Path, log: Path, *, backend: str = "cpu",
                    returncode: int = 0) -> manifest.Selftest:
    """The self-test record turboctl would write for this SQL output."""
    device = {"cpu": "CPU", "metal": "MTL0", "cuda": "CUDA0"}[backend]
    rows, bad = selftest.parse_sql(text)
    summary = selftest.summarize(rows)
    status, reason = selftest.verdict(summary, returncode=returncode, timed_out=False, timeout=900,
                                      device=device, unreadable=bad)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("$ test-backend-ops\n")
    return manifest.Selftest(
        backend=backend, device=device, command=selftest.command(binary, device), binary=str(binary),
        binary_sha256=gitrepo.file_sha256(binary), libraries=selftest.library_hashes(binary),
        when="2026-11-29T18:16:51+00:00", duration_s=3.6, status=status,  # type: ignore[arg-type]
        reason=reason, returncode=returncode, counts=summary.counts, per_op=summary.per_op,
        per_type=summary.per_type, per_pair=summary.per_pair, failing=summary.failing,
        unsupported=summary.unsupported, fa_cases=summary.fa_cases, log=str(log),
        output=str(log.with_suffix(".sql")))
