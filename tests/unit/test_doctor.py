"""doctor: recorded macOS outputs, toolchain parsing, JSON schema, exit codes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from tests.conftest import DATA
from turboctl import doctor
from turboctl.cli import doctor as doctor_cli
from turboctl.cli.main import app
from turboctl.errors import DoctorFailed
from turboctl.paths import get_paths

MAC = DATA / "macos"
GIB = 1024**3
runner = CliRunner()

TOOLS_LINUX = {
    ("git", "--version"): "git version 2.39.5\n",
    ("cmake", "--version"): "cmake version 3.25.1\n\nCMake suite maintained and supported by Kitware\n",
    ("c++", "--version"): "c++ (Debian 12.2.0-14+deb12u1) 12.2.0\nCopyright (C) 2022\n",
    ("ccache", "--version"): "ccache version 4.8+really4.7.5\n",
    ("ninja", "--version"): "1.11.1\n",
}
TOOLS_MAC = {
    ("git", "--version"): "git version 2.39.3 (Apple Git-146)\n",
    ("cmake", "--version"): "cmake version 3.29.2\n",
    ("c++", "--version"): "Apple clang version 15.0.0 (clang-1500.3.9.4)\nTarget: arm64-apple-darwin23.4.0\n",
}


def mac_outputs(displays: str = "system_profiler-SPDisplaysDataType-m3pro.json",
                clt: bool = True) -> dict[tuple[str, ...], str | None]:
    out: dict[tuple[str, ...], str | None] = {
        ("sysctl", "-n", "machdep.cpu.brand_string"):
            (MAC / "sysctl-machdep.cpu.brand_string.txt").read_text(),
        ("sysctl", "-n", "hw.memsize"): (MAC / "sysctl-hw.memsize.txt").read_text(),
        ("sysctl", "iogpu.wired_limit_mb"): (MAC / "sysctl-iogpu.wired_limit_mb.txt").read_text(),
        ("system_profiler", "SPDisplaysDataType", "-json"): (MAC / displays).read_text(),
        ("xcode-select", "-p"): (MAC / "xcode-select-p.txt").read_text() if clt else None,
        # pkgutil exits 1 with the "No receipt" text when the tools are missing: None
        ("pkgutil", "--pkg-info=com.apple.pkg.CLTools_Executables"):
            (MAC / "pkgutil-CLTools_Executables.txt").read_text() if clt else None,
    }
    out.update(TOOLS_MAC)
    return out


def probe(system: str, machine: str, outputs: dict[tuple[str, ...], str | None],
          tools: Sequence[str] = (), free: int = 100 * GIB) -> doctor.Probe:
    def run(args: Sequence[str]) -> str | None:
        return outputs.get(tuple(args))

    return doctor.Probe(system, machine, "14.4" if system == "Darwin" else "6.1.0", run=run,
                        which=lambda t: f"/usr/bin/{t}" if t in tools else None,
                        memory=lambda: (36 * GIB, 20 * GIB), disk_free=lambda p: free)


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_recorded_macos_outputs_parse() -> None:
    assert doctor.parse_sysctl_value((MAC / "sysctl-iogpu.wired_limit_mb.txt").read_text()) == "0"
    assert doctor.parse_sysctl_value((MAC / "sysctl-hw.memsize.txt").read_text()) == "17179869184"
    m3 = doctor.parse_displays((MAC / "system_profiler-SPDisplaysDataType-m3pro.json").read_text())
    assert m3 == {"name": "Apple M3 Pro", "metal_raw": "spdisplays_metal3", "metal": "Metal 3"}
    m1 = doctor.parse_displays((MAC / "system_profiler-SPDisplaysDataType-m1-bigsur.json").read_text())
    assert m1 is not None and m1["name"] == "Apple M1"
    assert m1["metal"] == "Metal GPU family Apple 7"
    assert doctor.parse_pkg_version((MAC / "pkgutil-CLTools_Executables.txt").read_text()) == \
        "15.0.0.0.1.1694021235"
    assert doctor.parse_pkg_version((MAC / "pkgutil-CLTools_Executables-missing.txt").read_text()) is None
    assert doctor.parse_displays("not json") is None
    assert doctor.parse_displays('{"SPDisplaysDataType": []}') is None


def test_macos_checks_with_recorded_outputs() -> None:
    checks = by_name(doctor.run_checks(probe("Darwin", "arm64", mac_outputs()), get_paths()))
    assert checks["os"].status == "ok" and "Apple Silicon" in checks["os"].detail
    assert checks["chip"].detail == "Apple M1 Max"
    assert checks["unified memory"].detail == "16.0 GiB"
    assert checks["gpu wired limit"].detail == "0 (the macOS default limit for GPU memory)"
    assert checks["gpu wired limit"].data == {"mb": 0}
    assert checks["metal"].status == "ok" and checks["metal"].detail == "Apple M3 Pro: Metal 3"
    assert checks["xcode command line tools"].detail == \
        "/Library/Developer/CommandLineTools (CLTools 15.0.0.0.1.1694021235)"
    assert checks["c++ compiler"].detail == "apple-clang 15.0.0"
    assert checks["git"].status == "ok"
    assert "nvcc" not in checks  # not probed on macOS
    assert not doctor.failed_required(list(checks.values()))


def test_wired_limit_set_is_shown_as_share_of_memory() -> None:
    outputs = mac_outputs()
    outputs[("sysctl", "iogpu.wired_limit_mb")] = "iogpu.wired_limit_mb: 12288\n"
    checks = by_name(doctor.macos_checks(probe("Darwin", "arm64", outputs)))
    assert checks["gpu wired limit"].detail == "12288 MB (75 % of unified memory)"


def test_macos_without_command_line_tools_fails() -> None:
    checks = doctor.run_checks(probe("Darwin", "arm64", mac_outputs(clt=False)), get_paths())
    failed = doctor.failed_required(checks)
    assert [c.name for c in failed] == ["xcode command line tools"]
    assert failed[0].fix == "xcode-select --install"


def test_older_macos_without_iogpu_sysctl() -> None:
    outputs = mac_outputs(displays="system_profiler-SPDisplaysDataType-m1-bigsur.json")
    outputs[("sysctl", "iogpu.wired_limit_mb")] = None
    checks = by_name(doctor.macos_checks(probe("Darwin", "arm64", outputs)))
    assert checks["gpu wired limit"].status == "warn"
    assert "debug.iogpu.wired_limit" in checks["gpu wired limit"].detail


def test_linux_checks() -> None:
    p = probe("Linux", "x86_64", dict(TOOLS_LINUX), tools=("ccache", "ninja"))
    checks = by_name(doctor.run_checks(p, get_paths()))
    assert checks["chip"].status == "skip"
    assert checks["c++ compiler"].detail == "gcc 12.2.0"
    assert checks["cmake"].detail == "3.25.1 (>= 3.14)"
    assert checks["ccache"].status == "ok" and checks["ninja"].status == "ok"
    assert checks["nvcc"].status == "skip" and checks["nvidia gpu"].status == "skip"
    assert checks["build"].status == "warn" and "nothing built yet" in checks["build"].detail
    assert checks["memory"].detail == "36.0 GiB total, 20.0 GiB available"


def test_old_tools_and_missing_cmake() -> None:
    outputs = dict(TOOLS_LINUX)
    outputs[("git", "--version")] = "git version 2.17.1\n"
    outputs[("cmake", "--version")] = None
    checks = by_name(doctor.toolchain_checks(probe("Linux", "x86_64", outputs)))
    assert checks["git"].status == "fail" and checks["git"].detail == "2.17.1 (need >= 2.25)"
    assert checks["cmake"].status == "fail" and checks["cmake"].detail == "not found"
    assert checks["ccache"].status == "warn"


def test_cuda_tools_reported_when_present() -> None:
    outputs = dict(TOOLS_LINUX)
    outputs[("nvcc", "--version")] = ("nvcc: NVIDIA (R) Cuda compiler driver\n"
                                      "Cuda compilation tools, release 13.0, V13.0.48\n")
    outputs[("nvidia-smi", "-L")] = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)\n"
    checks = by_name(doctor.toolchain_checks(probe("Linux", "x86_64", outputs,
                                                   tools=("nvcc", "nvidia-smi"))))
    assert checks["nvcc"].detail == "CUDA 13.0"
    assert checks["nvidia gpu"].status == "ok"


def test_low_disk_fails() -> None:
    p = probe("Linux", "x86_64", dict(TOOLS_LINUX), free=GIB // 2)
    failed = doctor.failed_required(doctor.run_checks(p, get_paths()))
    assert [c.name for c in failed] == ["disk"]
    low = by_name(doctor.run_checks(probe("Linux", "x86_64", dict(TOOLS_LINUX), free=2 * GIB),
                                     get_paths()))
    assert low["disk"].status == "warn" and "keep at least 5 GiB free" in (low["disk"].fix or "")


def test_json_report_validates_against_schema() -> None:
    schema = json.loads(doctor.schema_path().read_text())
    for p in (probe("Darwin", "arm64", mac_outputs()), probe("Linux", "x86_64", dict(TOOLS_LINUX)),
              probe("Darwin", "arm64", mac_outputs(clt=False))):
        jsonschema.validate(doctor.report(doctor.run_checks(p, get_paths())), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": "turboctl.doctor/1"}, schema)


def test_cli_doctor_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_cli, "current_probe",
                        lambda: probe("Darwin", "arm64", mac_outputs()))
    r = runner.invoke(app, ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, json.loads(doctor.schema_path().read_text()))
    assert doc["schema"] == "turboctl.doctor/2" and doc["ok"] is True
    assert doc["selftest"] is None  # nothing built


def test_cli_doctor_failure_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_cli, "current_probe",
                        lambda: probe("Darwin", "arm64", mac_outputs(clt=False)))
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == DoctorFailed.exit_code == 10
    assert "error: 1 required check(s) failed: xcode command line tools" in r.stderr
    assert "hint: xcode-select --install" in r.stderr
    assert "xcode command line tools  fail" in r.stdout  # plain table off a terminal
    r = runner.invoke(app, ["doctor", "--json"])
    assert r.exit_code == 10
    assert json.loads(r.stdout)["ok"] is False


def test_cli_doctor_on_this_machine() -> None:
    # the real probe: must run and produce a schema-valid document whatever the machine
    r = runner.invoke(app, ["doctor", "--json"])
    assert r.exit_code in (0, 10)
    jsonschema.validate(json.loads(r.stdout), json.loads(doctor.schema_path().read_text()))


def test_build_state_checks(tmp_path: Path) -> None:
    from turboctl.build import manifest
    from turboctl.build.pins import load_pin
    from turboctl.paths import Paths

    paths = Paths(tmp_path / "h")
    pin = load_pin()
    doc = {
        "schema": manifest.SCHEMA, "turboctl_version": "0", "created": "now",
        "pin": {"url": pin.llama_cpp.url, "tag": pin.llama_cpp.tag, "commit": pin.commit},
        "source": {"kind": "sdist", "detail": "", "path": "", "base_commit": "a" * 40},
        "patches": {"directory": "", "series": [{"name": "0001-x.patch", "sha256": "b" * 64}],
                    "head": "c" * 40},
        "backend": "cpu", "host": {}, "compiler": {}, "binaries": {},
        "cmake": {"generator": "Ninja", "flags": [], "build_dir": "", "targets": [], "jobs": 1,
                  "configured": True, "build_steps": 1},
        "cache_types": ["f16", "q8_0", "turbo3"], "version": [], "timings_s": {},
    }
    manifest.write_atomic(paths.current_manifest, doc)
    checks = by_name(doctor.build_checks(paths))
    assert checks["build"].status == "warn"
    assert "no longer in the series: 0001-x.patch" in checks["build"].detail
    assert checks["turbo cache types"].detail == "llama-server does not accept turbo2, turbo4"


def test_selftest_checks_and_json_schema() -> None:
    from tests.unit.fakebuild import SQL, edit_sql, fake_build

    paths = get_paths()
    schema = json.loads(doctor.schema_path().read_text())
    p = probe("Linux", "x86_64", dict(TOOLS_LINUX), tools=("ccache", "ninja"))

    fake_build(paths.home)
    checks = doctor.run_checks(p, paths)
    st = by_name(checks)["self-test"]
    assert st.status == "ok"
    assert st.detail == "pass: 523/523 turbo cases passed on CPU (2026-11-29T18:16:51+00:00, 3.6 s)"
    doc = doctor.report(checks)
    jsonschema.validate(doc, schema)
    assert doc["selftest"]["status"] == "pass" and doc["selftest"]["counts"]["total"] == 523
    assert doc["selftest"]["stale"] is None

    text = edit_sql(SQL.read_text(), "GET_ROWS", "type=turbo2", supported=1, passed=0, error="compare failed")
    fake_build(paths.home, sql=text)
    checks = doctor.run_checks(p, paths)
    st = by_name(checks)["self-test"]
    assert st.status == "warn" and not st.required  # non-turbo types still serve
    assert st.detail.startswith("fail: 8 failed of 523 turbo cases (2026-11-29T18:16:51+00:00, 3.6 s); "
                                "cases: GET_ROWS(type=turbo2,n=128,")
    assert st.detail.endswith(" and 5 more; the turbo KV cache types are refused on this build (q8_0, q4_0 "
                              "still work)")
    assert st.fix is not None and st.fix.startswith("turboctl selftest")
    doc = doctor.report(checks)
    jsonschema.validate(doc, schema)
    assert len(doc["selftest"]["failing"]) == 8 and doc["selftest"]["failing"][0].startswith("GET_ROWS(type=turbo2")

    # Metal-like: the optional cases (K and V head dims that differ) not supported, still a pass
    from tests.unit.fakebuild import metal_like_sql

    fake_build(paths.home, sql=metal_like_sql(SQL.read_text()), backend="metal")
    st = by_name(doctor.run_checks(p, paths))["self-test"]
    assert st.status == "ok"
    assert st.detail == ("pass: 493/523 turbo cases passed on MTL0, 30 not supported (30 of them optional) "
                         "(2026-11-29T18:16:51+00:00, 3.6 s)")

    m = fake_build(paths.home)
    (Path(m.cmake.build_dir) / "bin" / "libggml-cpu.so.0.1").write_bytes(b"rebuilt by hand")
    st = by_name(doctor.run_checks(p, paths))["self-test"]
    assert st.status == "warn" and "but it ran on other binaries" in st.detail
    jsonschema.validate(doctor.report(doctor.run_checks(p, paths)), schema)

    fake_build(paths.home, with_selftest=False)
    checks = doctor.run_checks(p, paths)
    st = by_name(checks)["self-test"]
    assert (st.status, st.fix) == ("warn", "turboctl selftest")
    assert st.detail == "never ran for this build: the turbo KV cache types are refused until it passes"
    assert doctor.report(checks)["selftest"] is None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doctor.report(checks), "selftest": {"status": "maybe"}}, schema)
