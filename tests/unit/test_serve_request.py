"""serve's request → plan: what is refused before anything starts, and the build step (faked:
unit tests never build)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from turboctl.build import builder, manifest
from turboctl.errors import BinaryMissing, ModelError, UsageError
from turboctl.paths import Paths
from turboctl.serve import launch, request
from turboctl.serve.profile import load_profile
from turboctl.serve.request import ServeRequest, api_key, prepare
from turboctl.ui import UI


def profile_file(tmp_path: Path, server: str = "") -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(f"name: p\nmodel: {{path: {tmp_path / 'm.gguf'}}}\nkv: {{k: turbo4}}\n{server}")
    return p


def test_profile_or_model_not_both_not_neither(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "home")
    with pytest.raises(UsageError, match=r"^give either --profile NAME or --model FILE.gguf$"):
        prepare(ServeRequest(), paths, UI(quiet=True))
    prof = load_profile(profile_file(tmp_path))
    with pytest.raises(UsageError, match=r"^--profile and --model cannot be combined$"):
        prepare(ServeRequest(profile=prof, model=tmp_path / "m.gguf"), paths, UI(quiet=True))


def test_no_build_refuses(tmp_path: Path) -> None:
    with pytest.raises(BinaryMissing) as err:
        launch.ensure_build(Paths(tmp_path / "home"), UI(quiet=True), no_build=True)
    assert err.value.message == (f"no build of llama-server matches this turboctl (nothing built yet in "
                                 f"{tmp_path / 'home'})")
    assert err.value.exit_code == 21


def test_missing_build_is_built_first_and_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[str] = []
    sentinel: Any = object()
    fake_plan = type("P", (), {"rows": lambda s: []})()
    monkeypatch.setattr(builder, "make_plan", lambda **kw: calls.append("plan") or fake_plan)
    monkeypatch.setattr(builder, "run", lambda plan, ui: calls.append("run") or sentinel)
    got = launch.ensure_build(Paths(tmp_path / "home"), UI(), no_build=False)
    assert got is sentinel and calls == ["plan", "run"]
    assert "building first: nothing built yet in" in capsys.readouterr().out


def test_dry_run_never_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(builder, "run", lambda plan, ui: pytest.fail("a dry run built"))
    assert launch.ensure_build(Paths(tmp_path / "home"), UI(), no_build=False, dry_run=True) is None
    assert "note: serve would build first (nothing built yet in" in capsys.readouterr().out


def test_a_stale_build_names_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "load_current", lambda paths: object())
    monkeypatch.setattr(manifest, "compare", lambda m, pin, series: ["patch series differs (not applied: 0014-x)"])
    with pytest.raises(BinaryMissing, match=r"\(patch series differs \(not applied: 0014-x\)\)"):
        launch.ensure_build(Paths(tmp_path / "home"), UI(quiet=True), no_build=True)


def test_model_missing_is_refused_before_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "ensure_build", lambda *a, **k: pytest.fail("looked at the build first"))
    with pytest.raises(ModelError, match=r"^model file not found: .*nope\.gguf$"):
        prepare(ServeRequest(model=tmp_path / "nope.gguf"), Paths(tmp_path / "home"), UI(quiet=True))


def test_api_key_sources(tmp_path: Path) -> None:
    keyfile = tmp_path / "k"
    keyfile.write_text("from-file\n")
    env_prof = load_profile(profile_file(tmp_path, "server: {api_key_env: MY_KEY}\n"))
    assert api_key(ServeRequest(profile=env_prof), {"MY_KEY": "from-env"}) == "from-env"
    assert api_key(ServeRequest(profile=env_prof, api_key_file=keyfile), {"MY_KEY": "x"}) == "from-file"
    with pytest.raises(UsageError) as err:
        api_key(ServeRequest(profile=env_prof), {})
    assert err.value.message.endswith("server.api_key_env names MY_KEY, which is not set in this environment")
    assert err.value.hint == "export MY_KEY=<key> first"
    assert api_key(ServeRequest(model=tmp_path / "m.gguf"), {}) is None


def test_preview_of_a_profile_without_build_or_model(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"")  # present but not a GGUF: the preview still only plans
    prof = load_profile(profile_file(tmp_path, "context: 4096\n"))
    plan = request.preview(prof, Paths(tmp_path / "home"))
    assert plan.settings.context == 4096 and plan.projection is None
    assert plan.argv[0].endswith("<not built yet>/llama-server")
    assert request.preview_fit(plan) == {"context": 4096, "context source": "requested"}
