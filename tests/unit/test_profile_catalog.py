"""The profile search path and ``turboctl profiles list|show|validate``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from turboctl.cli.main import app
from turboctl.errors import ProfileError, ProfileNotFound
from turboctl.serve import catalog
from turboctl.serve.profile import SHIPPED_DIR

from .kvmodels import llama

DATA = Path(__file__).parent.parent / "data" / "profiles"
SHIPPED = ["gemma4-turboquant", "qwen3.5-27b-128k", "smollm2-demo"]


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """cwd, TURBOCTL_CONFIG and HOME in tmp dirs (the guard already moved HOME; made explicit here)."""
    out = {"cwd": tmp_path / "work", "config": tmp_path / "config", "home": tmp_path / "home"}
    for d in out.values():
        d.mkdir()
    monkeypatch.chdir(out["cwd"])
    monkeypatch.setenv("TURBOCTL_CONFIG", str(out["config"]))
    monkeypatch.setenv("HOME", str(out["home"]))
    return {**out, "cwd_profiles": out["cwd"] / "profiles", "user": out["config"] / "profiles",
            "hermes": out["home"] / ".hermes" / "profiles"}


def put(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text(text)
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_search_path(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert [(d.kind, d.path) for d in catalog.search_path()] == [
        ("cwd", dirs["cwd_profiles"]), ("user", dirs["user"]), ("hermes", dirs["hermes"]), ("shipped", SHIPPED_DIR)]
    monkeypatch.delenv("TURBOCTL_CONFIG")
    assert catalog.config_dir() != dirs["config"] and catalog.config_dir().name == "turboctl"


def test_only_shipped(dirs: dict[str, Path]) -> None:
    entries = catalog.list_profiles()
    assert [(e.name, e.kind, e.error) for e in entries] == [(n, "shipped", None) for n in SHIPPED]
    assert catalog.find_profile("smollm2-demo").format == "shipped"


def test_first_match_wins_and_shadowing(dirs: dict[str, Path]) -> None:
    mine = put(dirs["cwd_profiles"], "smollm2-demo.yaml", "name: smollm2-demo\nmodel: {path: local.gguf}\n")
    hermes = shutil.copy(DATA / "hermes-profile-gemma4-turboquant.yaml", put(dirs["hermes"], "x", "").parent)
    p = catalog.find_profile("smollm2-demo")
    assert p.origin == mine and p.model.kind == "path"
    # a Hermes file answers to its declared name and to its file name
    assert catalog.find_profile("gemma4-turboquant").origin == Path(hermes)
    assert catalog.find_profile("hermes-profile-gemma4-turboquant").format == "hermes"
    entries = {(e.name, e.kind): e for e in catalog.list_profiles()}
    assert entries[("smollm2-demo", "shipped")].shadowed_by == mine
    assert entries[("smollm2-demo", "shipped")].shadowed_by_kind == "cwd"
    assert entries[("gemma4-turboquant", "shipped")].shadowed_by == Path(hermes)
    assert entries[("smollm2-demo", "cwd")].shadowed_by is None


def test_user_config_dir(dirs: dict[str, Path]) -> None:
    path = put(dirs["user"], "mine.yml", "name: other-name\nmodel: {path: /m.gguf}\n")
    assert catalog.find_profile("mine").origin == path
    assert catalog.find_profile("other-name").origin == path


def test_unknown_profile(dirs: dict[str, Path]) -> None:
    with pytest.raises(ProfileNotFound) as info:
        catalog.find_profile("gemma4-turboqant")
    searched = ", ".join(str(d) for d in (dirs["cwd_profiles"], dirs["user"], dirs["hermes"], SHIPPED_DIR))
    assert info.value.message == f"no profile 'gemma4-turboqant' (closest: gemma4-turboquant); searched: {searched}"
    assert info.value.exit_code == 18
    with pytest.raises(ProfileNotFound, match=r"^no profile 'zzzzzzzzzzzzzzzzzzzzz'; searched: "):
        catalog.find_profile("zzzzzzzzzzzzzzzzzzzzz")
    with pytest.raises(ProfileNotFound, match=r"^profile file not found: nope/x.yaml$"):
        catalog.find_profile("nope/x.yaml")


def test_invalid_profiles(dirs: dict[str, Path]) -> None:
    bad = put(dirs["cwd_profiles"], "broken.yaml", "name: broken\nmodel: {path: m}\nkv: {k: turbo5}\n")
    put(dirs["cwd_profiles"], "garbage.yaml", "name: [\n")
    # the matching file is invalid: its error, not a silent fallback to another profile
    with pytest.raises(ProfileError, match=r"broken.yaml:3: kv.k: unknown K cache type 'turbo5'"):
        catalog.find_profile("broken")
    entries = {e.name: e for e in catalog.list_profiles()}
    assert entries["broken"].error == f"{bad}:3: kv.k: unknown K cache type 'turbo5'; did you mean turbo4?"
    assert entries["garbage"].profile is None and entries["garbage"].error is not None


def test_profiles_list_command(dirs: dict[str, Path]) -> None:
    put(dirs["cwd_profiles"], "broken.yaml", "name: broken\nmodel: {path: m}\ncontxt: 1\n")
    code, out, err = invoke("profiles", "list")
    assert code == 0
    assert "smollm2-demo       shipped  turbo4  auto     url    ok" in out
    assert "broken" in out and "invalid" in out
    assert "unknown key 'contxt' (did you mean 'context'?)" in err
    code, out, _ = invoke("profiles", "list", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["schema"] == "turboctl.profiles.list/1"
    assert [d["kind"] for d in doc["search_path"]] == ["cwd", "user", "hermes", "shipped"]
    rows = {p["name"]: p for p in doc["profiles"]}
    assert rows["smollm2-demo"]["kv"] == "turbo4" and rows["smollm2-demo"]["valid"]
    assert rows["broken"]["valid"] is False and "contxt" in rows["broken"]["error"]


def test_profiles_show_command(dirs: dict[str, Path]) -> None:
    code, out, _ = invoke("profiles", "show", "smollm2-demo")
    assert code == 0
    assert "kv recipe       turbo4" in out and "llama.cpp args  -fa on -ctk turbo4 -ctv turbo4" in out
    assert "per-layer table: the model is not a local file yet" in out
    code, out, _ = invoke("profiles", "show", "smollm2-demo", "--json")
    doc = json.loads(out)
    assert doc["schema"] == "turboctl.profiles.show/1" and doc["layers"] is None
    assert doc["model_source"]["kind"] == "url"
    # nothing built or downloaded here: the fit waits for both, the command shows where it would run
    assert doc["fit"]["context"] == "auto (resolved once the model is here)"
    assert "the model is not downloaded yet: serve would fetch and verify it first" in doc["fit"]["notes"]
    assert doc["command"][0].endswith("/<not built yet>/llama-server") and "--no-repack" in doc["command"]


def test_profiles_show_with_a_local_model(dirs: dict[str, Path]) -> None:
    llama(dirs["cwd_profiles"].parent / "tiny.gguf", n_layer=8)
    put(dirs["cwd_profiles"], "tiny.yaml", "name: tiny\nmodel: {path: ../tiny.gguf}\ncontext: 2048\n"
                                          "kv: {k: turbo4, v: turbo3, layers: '0..1+-2..-1=q8_0'}\n"
                                          "server: {api_key: hidden-key, host: 0.0.0.0}\n"
                                          "environment: {HF_TOKEN: hidden-token, OMP_NUM_THREADS: 2}\n")
    code, out, _ = invoke("profiles", "show", "tiny")
    assert code == 0, out
    assert "0-1     own    q8_0    q8_0    rule 1   64/64          3" in out
    assert "2-5     own    turbo4  turbo3  default  64/64          3" in out
    assert "listen          0.0.0.0:8080, 1 slot, key api_key (set)" in out
    assert "beyond loopback" not in out
    assert "environment     HF_TOKEN=(set, not shown) OMP_NUM_THREADS=2" in out
    assert "hidden-key" not in out and "hidden-token" not in out
    code, out, _ = invoke("profiles", "show", "tiny", "--json")
    doc = json.loads(out)
    assert doc["layers"]["ctx"] == 2048 and doc["layers"]["pairs"] == ["q8_0/q8_0", "turbo4/turbo3"]
    assert doc["profile"]["server"]["api_key"] == "(set, not shown)" and "hidden-key" not in out
    assert doc["profile"]["environment"] == {"HF_TOKEN": "(set, not shown)", "OMP_NUM_THREADS": "2"}
    assert "hidden-token" not in out


def test_profiles_show_warns_on_an_open_bind(dirs: dict[str, Path]) -> None:
    shutil.copy(DATA / "hermes-profile-gemma4-turboquant.yaml", put(dirs["hermes"], "x", "").parent)
    code, out, err = invoke("profiles", "show", "gemma4-turboquant")
    assert code == 0 and "listen          0.0.0.0:8080, 1 slot, key none" in out
    model = dirs["home"] / "models" / "gemma-4-31B-it-Q4_K_M.gguf"
    assert f"per-layer table: the model file {model} does not exist" in out
    assert ("warning: the profile listens on 0.0.0.0 (beyond loopback) without an API key: serving it needs a key "
            "(or the explicit opt-out)") in err


def test_profiles_show_unknown(dirs: dict[str, Path]) -> None:
    code, _, err = invoke("profiles", "show", "nosuch")
    assert code == 18 and err.startswith("error: no profile 'nosuch'")


def test_profiles_validate_command(tmp_path: Path) -> None:
    good = DATA / "hermes-profile-gemma4-turboquant.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: p\nmodel: {path: m}\nserver: {prot: 1}\n")
    code, out, err = invoke("profiles", "validate", str(good))
    assert code == 0
    assert f"ok {good}: profile gemma4-turboquant (hermes format)" in out
    assert "note: provider 'fallback' (ollama) ignored" in out
    code, out, err = invoke("profiles", "validate", str(good), str(bad))
    assert code == 17
    assert err.splitlines()[0] == f"error: {bad}:3: unknown key 'server.prot' (did you mean 'port'?)"
    code, out, _ = invoke("profiles", "validate", str(good), str(bad), "--json")
    doc = json.loads(out)
    assert code == 17 and doc["schema"] == "turboctl.profiles.validate/1" and doc["valid"] is False
    assert [r["valid"] for r in doc["results"]] == [True, False]
    assert doc["results"][1]["error"] == f"{bad}:3: unknown key 'server.prot' (did you mean 'port'?)"
    code, _, err = invoke("profiles", "validate", str(tmp_path / "missing.yaml"))
    assert code == 17 and err.startswith(f"error: {tmp_path / 'missing.yaml'}: no such profile file")


def test_every_shipped_profile_through_the_command() -> None:
    code, out, _ = invoke("profiles", "validate", *(str(SHIPPED_DIR / f"{n}.yaml") for n in SHIPPED))
    assert code == 0 and out.count("(shipped format)") == 3


def test_validate_checks_extra_args_with_the_help_text(tmp_path: Path) -> None:
    help_text = (DATA / "llama-server-help.txt").read_text()
    path = tmp_path / "args.yaml"
    path.write_text("name: p\nmodel: {path: m}\nserver:\n  args: [--no-repack, --thraeds, '2']\n")
    assert catalog.server_help() is None  # nothing built in the test's TURBOCTL_HOME
    (r,) = catalog.validate_files([path])
    assert r.error is None and not r.args_checked
    (r,) = catalog.validate_files([path], help_text)
    assert r.error is not None and r.error.message == (
        f"{path}:4: server.args[1]: unknown llama-server flag '--thraeds' (did you mean '--threads'?)")
    code, out, _ = invoke("profiles", "validate", str(path))
    assert code == 0 and "note: server.args not checked against llama-server --help: nothing built yet" in out
