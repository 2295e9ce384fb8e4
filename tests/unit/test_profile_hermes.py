"""The Hermes-agent profile format: loaded as it is, mapped onto Profile; typos are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from turboctl.errors import ProfileError
from turboctl.serve.profile import load_profile

DATA = Path(__file__).parent.parent / "data" / "profiles"
USER = DATA / "hermes-profile-gemma4-turboquant.yaml"
HEAD = "profile:\n  name: h\n  providers:\n    primary:\n      model: {path: m.gguf}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "h.yaml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert "\n" not in info.value.message and info.value.exit_code == 17
    assert info.value.message.startswith(f"{path}:")
    return info.value.message[len(str(path)) + 1:]


def test_the_users_profile_loads_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = load_profile(USER)
    assert p.format == "hermes" and p.name == "gemma4-turboquant" and p.origin == USER
    assert p.description == "Gemma 4 31B with TurboQuant KV cache on the local llama-server"
    assert (p.server.host, p.server.port, p.server.batch_size) == ("0.0.0.0", 8080, 512)
    assert not p.server.loopback
    assert p.model.name == "gemma-4-31b-it"
    assert p.model.path == Path.home() / "models" / "gemma-4-31B-it-Q4_K_M.gguf"
    assert p.kv.k == "turbo3" and p.kv.v is None and p.kv.adaptive_mode == 7
    assert p.kv.recipe_text() == "turbo3;mode=7"
    assert p.context == 131072
    assert (p.generation.temperature, p.generation.top_p, p.generation.top_k, p.generation.max_tokens) == \
        (1.0, 0.95, 64, 8192)
    # the mode left the environment: turboctl passes --kv-adaptive itself
    assert p.environment == {"GGML_METAL_NO_RESIDENCY": "1"}
    assert p.notes == (
        "provider 'fallback' (ollama) ignored: turboctl serves the primary provider only",
        "TURBO_LAYER_ADAPTIVE=7 from profile.environment is the KV mode (turboctl passes --kv-adaptive 7)",
        "server_command ignored: turboctl builds its own llama-server command (profiles show prints it)",
    )
    assert p.where("server.port") == f"{USER}:9"
    assert p.where("kv.adaptive_mode") == f"{USER}:16"


def test_the_second_profile() -> None:
    path = DATA / "hermes-profile-tiny-local.yaml"
    p = load_profile(path)
    assert (p.server.host, p.server.port) == ("127.0.0.1", 8181)
    assert p.model.path == (DATA / "models" / "tiny.gguf").absolute()
    assert p.kv.recipe_text() == "turbo4/turbo3;mode=1"
    assert p.context == "auto"
    assert p.environment == {"OMP_NUM_THREADS": "2"}
    assert (p.generation.temperature, p.generation.seed, p.generation.repeat_penalty) == (0.2, 42, 1.1)
    assert p.notes[0] == "provider 'secondary' (openai) ignored: turboctl serves the primary provider only"


def test_endpoint_without_port_and_turboquant_off(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, HEAD.replace("      model:", "      endpoint: http://localhost/v1\n      model:")
                           + "      turboquant: {enabled: false, kv_type: turbo3, layer_adaptive_mode: 7}\n"))
    assert (p.server.host, p.server.port) == ("localhost", 8080)
    assert p.kv.recipe_text() == "f16"
    assert p.notes == ("turboquant.enabled is false: K/V f16 (kv_type and layer_adaptive_mode ignored)",)
    p = load_profile(write(tmp_path, HEAD + "      turboquant: {enabled: false}\n"
                                             "  environment: {TURBO_LAYER_ADAPTIVE: 2}\n"))
    assert p.kv.recipe_text() == "f16" and p.environment == {}
    assert p.notes == ("turboquant.enabled is false: K/V f16", "TURBO_LAYER_ADAPTIVE=2 ignored: turboquant.enabled "
                                                                "is false")
    p = load_profile(write(tmp_path, HEAD + "      turboquant: {layer_adaptive_mode: 7}\n"
                                             "  environment: {TURBO_LAYER_ADAPTIVE: 7}\n"))
    assert p.kv.recipe_text() == "f16;mode=7"  # the same mode twice is no conflict


@pytest.mark.parametrize(("text", "message"), [
    (USER.read_text().replace("TURBO_LAYER_ADAPTIVE: 7", "TURBO_LAYER_ADAPTIVE: 5"),
     "31: profile.environment.TURBO_LAYER_ADAPTIVE=5 conflicts with "
     "profile.providers.primary.turboquant.layer_adaptive_mode=7 (line 16): give one mode"),
    (HEAD + "  environment: {TURBO_LAYER_ADAPTIVE: seven}\n",
     "6: profile.environment.TURBO_LAYER_ADAPTIVE: expected a TURBO_LAYER_ADAPTIVE mode number, got 'seven'"),
    (HEAD + "  environment: {TURBO_LAYER_ADAPTIVE: 4}\n",
     "6: profile.environment.TURBO_LAYER_ADAPTIVE: unknown TURBO_LAYER_ADAPTIVE mode 4 (known: 0 1 2 5 6 7)"),
    (HEAD + "      turboquant: {kv_typ: turbo4}\n",
     "6: unknown key 'profile.providers.primary.turboquant.kv_typ' (did you mean 'kv_type'?)"),
    (HEAD + "      turboquant: {kv_type: turbo5}\n",
     "6: profile.providers.primary.turboquant.kv_type: unknown K cache type 'turbo5'; did you mean turbo4?"),
    (HEAD + "      turboquant: {kv_type: 4}\n",
     "6: profile.providers.primary.turboquant.kv_type: expected a cache type such as turbo4 (or K/V), got 4"),
    (HEAD + "      turboquant: {enabled: 'yes please'}\n",
     "6: profile.providers.primary.turboquant.enabled: expected true or false, got 'yes please'"),
    (HEAD + "      turboquant: {layer_adaptive_mode: 3}\n",
     "6: profile.providers.primary.turboquant.layer_adaptive_mode: unknown TURBO_LAYER_ADAPTIVE mode 3 "
     "(known: 0 1 2 5 6 7)"),
    (HEAD + "      turboquant: turbo4\n",
     "6: profile.providers.primary.turboquant: expected a mapping (enabled, kv_type, layer_adaptive_mode), got "
     "'turbo4'"),
    (HEAD + "      generation: {temprature: 1}\n",
     "6: unknown key 'profile.providers.primary.generation.temprature' (did you mean 'temperature'?)"),
    (HEAD + "      generation: {top_p: 3}\n",
     "6: profile.providers.primary.generation.top_p: Input should be less than or equal to 1, got 3"),
    (HEAD + "      context: {max_token: 4096}\n",
     "6: unknown key 'profile.providers.primary.context.max_token' (did you mean 'max_tokens'?)"),
    (HEAD + "      context: {max_tokens: 0}\n",
     "6: profile.providers.primary.context.max_tokens: must be at least 1 (or 'auto'), got 0"),
    (HEAD + "      context: {batch_size: 0}\n",
     "6: profile.providers.primary.context.batch_size: Input should be greater than or equal to 1, got 0"),
    (HEAD + "      modle: {}\n", "6: unknown key 'profile.providers.primary.modle' (did you mean 'model'?)"),
    (HEAD.replace("{path: m.gguf}", "{name: m}"),
     "5: profile.providers.primary.model: missing key 'path' (turboctl needs the GGUF file)"),
    (HEAD.replace("{path: m.gguf}", "{path: m.gguf, sha: x}"),
     "5: unknown key 'profile.providers.primary.model.sha'"),
    ("profile:\n  name: h\n  providers:\n    primary:\n      type: llama.cpp\n",
     "4: profile.providers.primary: missing key 'model' (with the GGUF file's path)"),
    ("profile:\n  name: h\n  providers:\n    primery: {}\n",
     "3: profile.providers: missing key 'primary' (is 'primery' meant to be it?)"),
    ("profile:\n  name: h\n", "1: profile: missing key 'providers' (with a 'primary' provider)"),
    ("profile:\n  name: h\n  providers: [a]\n",
     "3: profile.providers: expected a mapping of providers (primary, fallback, ...), got ['a']"),
    ("profile:\n  providers:\n    primary:\n      model: {path: m}\n", "1: profile: missing key 'name'"),
    (HEAD + "  descripton: x\n", "6: unknown key 'profile.descripton' (did you mean 'description'?)"),
    (HEAD + "profiles: 1\n", "6: unknown key 'profiles' (did you mean 'profile'?)"),
    ("profile: [1]\n", "1: profile: expected a mapping (the Hermes profile), got [1]"),
    (HEAD.replace("      model:", "      type: ollama\n      model:"),
     "5: profile.providers.primary.type: turboctl serves llama.cpp (llama-server) providers; got 'ollama' "
     "(accepted: llama.cpp, llamacpp, llama-cpp, llama_cpp, llama-server, openai, openai-compatible, custom)"),
    (HEAD.replace("      model:", "      endpoint: https://h:1/v1\n      model:"),
     "5: profile.providers.primary.endpoint: https: turboctl serves plain http (put a TLS proxy in front of it, and "
     "give the endpoint as http://HOST:PORT here)"),
    (HEAD.replace("      model:", "      endpoint: http://h:99999/v1\n      model:"),
     "5: profile.providers.primary.endpoint: not a valid URL (Port out of range 0-65535): 'http://h:99999/v1'"),
    (HEAD.replace("      model:", "      endpoint: localhost:8080\n      model:"),
     "5: profile.providers.primary.endpoint: expected a URL like http://127.0.0.1:8080/v1, got 'localhost:8080'"),
    (HEAD.replace("      model:", "      endpoint: http://h:0/v1\n      model:"),
     "5: profile.providers.primary.endpoint: Input should be greater than or equal to 1, got 0"),
    (HEAD.replace("name: h", "name: 'Gemma 4'"),
     "2: profile.name: 'Gemma 4': use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit (it "
     "is typed on the command line and names files)"),
    (HEAD + "  environment: {LLAMA_ARG_PORT: 1}\n",
     "6: profile.environment.LLAMA_ARG_PORT: is set by turboctl: set it as server.port"),
])
def test_error_messages(tmp_path: Path, text: str, message: str) -> None:
    assert error(tmp_path, text) == message
