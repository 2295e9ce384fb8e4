"""Serving profiles: our YAML schema (frozen pydantic models), the loader, and the checks of the
extra llama-server arguments.

A profile names a model source, a KV recipe, a context size (or ``auto``), the server's address,
key and extra arguments, environment variables and sampling defaults. ``load_profile`` reads our
format or the Hermes-agent format (a top-level ``profile:`` key, see :mod:`.hermes`) into the same
:class:`Profile`. Every problem is a :class:`~turboctl.errors.ProfileError` with ONE line::

    FILE:LINE: <what is wrong> (did you mean 'closest_key'?)

The line comes from the YAML node of the offending key or value (the file is parsed once into a
node tree; the data are built from that tree, so both always agree). Keys are never guessed:
an unknown key, a duplicate key, a YAML alias or a value of the wrong type is an error.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..errors import ProfileError, TurboctlError, UsageError
from ..kv.config import make_config
from ..kv.recipe import Recipe, parse_recipe
from ..kv.rules import MODES, check_mode, parse_rules
from ..workers.check import parse_endpoints

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 24
MAX_CONTEXT = 16 * 1024 * 1024
MAX_TEXT = 4096
MAX_DESCRIPTION = 16384
MAX_ENV_VALUE = 32768
MAX_ITEMS = 256
MAX_BATCH = 1 << 20
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
NEGATIVE_NUMBER_RE = re.compile(r"^-\d")

# llama-server flags turboctl sets itself → the profile key that sets them
MANAGED_FLAGS: dict[str, str] = {
    "-m": "model", "--model": "model",
    "-mu": "model.url", "--model-url": "model.url",
    "-hf": "model.hf", "-hfr": "model.hf", "--hf-repo": "model.hf",
    "-hff": "model.hf.file", "--hf-file": "model.hf.file",
    "-c": "context", "--ctx-size": "context",
    "-ctk": "kv.k", "--cache-type-k": "kv.k",
    "-ctv": "kv.v", "--cache-type-v": "kv.v",
    "-kvl": "kv.layers", "--kv-layers": "kv.layers",
    "--kv-adaptive": "kv.adaptive_mode",
    "--host": "server.host", "--port": "server.port",
    "--api-key": "server.api_key or server.api_key_env",
    "--api-key-file": "server.api_key or server.api_key_env",
    "-np": "server.parallel", "--parallel": "server.parallel",
    "-b": "server.batch_size", "--batch-size": "server.batch_size",
    "-fa": "nothing: turboctl always turns flash attention on",
    "--flash-attn": "nothing: turboctl always turns flash attention on",
    "--rpc": "workers (checked before the server starts)",
}
# the environment variables llama-server reads for those flags (its --help, "(env: ...)")
MANAGED_ENV: dict[str, str] = {
    "LLAMA_ARG_MODEL": "model", "LLAMA_ARG_MODEL_URL": "model.url", "LLAMA_ARG_HF_REPO": "model.hf",
    "LLAMA_ARG_HF_FILE": "model.hf.file", "LLAMA_ARG_CTX_SIZE": "context", "LLAMA_ARG_CACHE_TYPE_K": "kv.k",
    "LLAMA_ARG_CACHE_TYPE_V": "kv.v", "LLAMA_ARG_KV_LAYERS": "kv.layers", "TURBO_LAYER_ADAPTIVE": "kv.adaptive_mode",
    "LLAMA_ARG_HOST": "server.host", "LLAMA_ARG_PORT": "server.port", "LLAMA_ARG_RPC": "workers",
    "LLAMA_API_KEY": "server.api_key or server.api_key_env",
    "LLAMA_ARG_API_KEY_FILE": "server.api_key or server.api_key_env",
    "LLAMA_ARG_N_PARALLEL": "server.parallel", "LLAMA_ARG_BATCH": "server.batch_size",
    "LLAMA_ARG_FLASH_ATTN": "nothing: turboctl always turns flash attention on",
}
LOADER_FIELDS = ("origin", "format", "notes")
SECRET_PATHS = (("server", "api_key"),)

Path_ = tuple[str | int, ...]


# --------------------------------------------------------------------------- helpers
def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters made visible (messages are one line)."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append(" ")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (huge inputs stay readable)."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**18:
        return f"a {len(str(abs(value)))}-digit number"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def closest(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def _fail(message: str, key: str | Path_ | None = None) -> PydanticCustomError:
    ctx: dict[str, Any] = {"text": message}
    if key is not None:
        ctx["key"] = (key,) if isinstance(key, str) else tuple(key)
    return PydanticCustomError("profile", "{text}", ctx)


def _text(value: Any, what: str, *, limit: int = MAX_TEXT, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(f"expected a string, got {short(value)}")
    if not value.strip() and not empty:
        raise _fail("must not be empty")
    if len(value) > limit:
        raise _fail(f"{what} is {len(value)} characters long; at most {limit}")
    if "\x00" in value:
        raise _fail("must not contain a NUL character")
    return value


Text = Annotated[str, Field(strict=True, max_length=MAX_TEXT)]
Sha256 = Annotated[str, Field(strict=True)]
Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _sha(value: Any) -> Any:
    if value is None:
        return value
    if not isinstance(value, str) or not SHA256_RE.match(value):
        raise _fail(f"expected a sha256: 64 hex digits, got {short(value)}")
    return value.lower()


# --------------------------------------------------------------------------- the schema
class HFSource(_Model):
    """A GGUF file in a Hugging Face repository (downloaded into the standard Hugging Face cache)."""

    repo: Text
    file: Text
    revision: Text = "main"

    @field_validator("repo", mode="before")
    @classmethod
    def _repo(cls, value: Any) -> Any:
        value = _text(value, "repo")
        if not HF_REPO_RE.match(value):
            raise _fail(f"expected OWNER/NAME (a Hugging Face repository), got {short(value)}")
        return value

    @field_validator("file", mode="before")
    @classmethod
    def _file(cls, value: Any) -> Any:
        value = _text(value, "file")
        if value.startswith("/") or ".." in value.split("/") or "\\" in value:
            raise _fail(f"expected a path inside the repository, got {short(value)}")
        return value

    @field_validator("revision", mode="before")
    @classmethod
    def _revision(cls, value: Any) -> Any:
        value = _text(value, "revision")
        if any(ch.isspace() for ch in value):
            raise _fail(f"expected a branch, tag or commit, got {short(value)}")
        return value


class ModelSource(_Model):
    """Where the GGUF comes from: exactly one of a local path, a Hugging Face file or a URL."""

    path: Path | None = None
    hf: HFSource | None = None
    url: Text | None = None
    url_sha256: Sha256 | None = None
    member: Text | None = None
    sha256: Sha256 | None = None
    name: Text | None = None

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        if value is None:
            return value
        path = Path(_text(value, "path"))
        try:
            return path.expanduser()
        except RuntimeError:  # ~name of a user this machine does not have
            raise _fail(f"{path.parts[0]}: no user of that name to expand it to a home directory "
                        "(write ~/..., or the full path)") from None

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        if value is None:
            return value
        value = _text(value, "url")
        if not value.startswith(("http://", "https://")) or any(ch.isspace() for ch in value):
            raise _fail(f"expected an http:// or https:// URL, got {short(value)}")
        return value

    @field_validator("member", mode="before")
    @classmethod
    def _member(cls, value: Any) -> Any:
        if value is None:
            return value
        value = _text(value, "member")
        if value.startswith("/") or ".." in value.split("/"):
            raise _fail(f"expected a path inside the archive, got {short(value)}")
        return value

    @field_validator("url_sha256", "sha256", mode="before")
    @classmethod
    def _sha256(cls, value: Any) -> Any:
        return _sha(value)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        given = [k for k in ("path", "hf", "url") if getattr(self, k) is not None]
        if len(given) != 1:
            found = f" (found {' and '.join(given)})" if given else ""
            raise _fail(f"give exactly one model source: path, hf or url{found}",
                        given[1] if len(given) > 1 else None)
        if self.url is not None and self.url_sha256 is None:
            raise _fail("needs url_sha256 (the sha256 of the file the URL serves): a download is never used "
                        "unverified", "url")
        if self.url_sha256 is not None and self.url is None:
            raise _fail("is only used with url", "url_sha256")
        if self.member is not None and self.url is None:
            raise _fail("is only used with url (the GGUF's path inside the zip archive the URL serves)", "member")
        if self.member is not None and self.sha256 is None:
            raise _fail("needs sha256 (the sha256 of the GGUF inside the archive)", "member")
        return self

    @property
    def kind(self) -> Literal["path", "hf", "url"]:
        return "path" if self.path is not None else "hf" if self.hf is not None else "url"

    def describe(self) -> str:
        """One line: ``path /x/y.gguf``, ``hf owner/repo file@revision``, ``url U [member M]``."""
        if self.path is not None:
            return f"path {self.path}"
        if self.hf is not None:
            return f"hf {self.hf.repo} {self.hf.file}@{self.hf.revision}"
        text = f"url {self.url}"
        return text + (f" member {self.member}" if self.member else "")


def _kv_message(exc: TurboctlError) -> str:
    return exc.message.removeprefix("kv layers: ")


class KVSpec(_Model):
    """The KV cache: default K and V types, per-layer rules, a TURBO_LAYER_ADAPTIVE mode."""

    k: Text = "f16"
    v: Text | None = None
    layers: Text | None = None
    adaptive_mode: Annotated[int, Field(strict=True)] | None = None

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, value: Any) -> Any:
        value = _text(value, "k")
        try:
            make_config(value, "f16")
        except TurboctlError as exc:
            raise _fail(_kv_message(exc)) from None
        return value

    @field_validator("v", mode="before")
    @classmethod
    def _v(cls, value: Any) -> Any:
        if value is None:
            return value
        value = _text(value, "v")
        try:
            make_config("f16", value)
        except TurboctlError as exc:
            raise _fail(_kv_message(exc)) from None
        return value

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        if value is None:
            return value
        value = _text(value, "layers", empty=True)
        try:
            parse_rules(value)
        except TurboctlError as exc:
            raise _fail(_kv_message(exc)) from None
        return value

    @field_validator("adaptive_mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(f"expected a TURBO_LAYER_ADAPTIVE mode number ({' '.join(map(str, MODES))}), "
                        f"got {short(value)}")
        if value not in MODES:
            raise _fail(f"unknown TURBO_LAYER_ADAPTIVE mode {short(value)} (known: {' '.join(map(str, MODES))})")
        check_mode(value)
        return value

    @model_validator(mode="after")
    def _recipe(self) -> KVSpec:
        try:
            self.recipe()
        except TurboctlError as exc:
            raise _fail(_kv_message(exc)) from None
        return self

    def recipe_text(self) -> str:
        """``K/V[;mode=N][;RULES]`` for :func:`turboctl.kv.recipe.parse_recipe` (``K`` alone when V = K)."""
        v = self.v or self.k
        text = self.k if v == self.k else f"{self.k}/{v}"
        if self.adaptive_mode is not None:
            text += f";mode={self.adaptive_mode}"
        if self.layers and self.layers.strip():
            text += ";" + self.layers.strip()
        return text

    def recipe(self) -> Recipe:
        """The parsed recipe (flash attention on: turboctl always serves with it)."""
        return parse_recipe(self.recipe_text(), "on")


class ServerSpec(_Model):
    host: Text = "127.0.0.1"
    port: Port = 8080
    parallel: Annotated[int, Field(strict=True, ge=1, le=256)] = 1
    api_key: SecretStr | None = None
    api_key_env: Text | None = None
    batch_size: Annotated[int, Field(strict=True, ge=1, le=MAX_BATCH)] | None = None
    args: tuple[Text, ...] = Field(default=(), max_length=MAX_ITEMS)

    @field_validator("host", mode="before")
    @classmethod
    def _host(cls, value: Any) -> Any:
        value = _text(value, "host")
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not HOSTNAME_RE.match(value):
                raise _fail(f"expected an IP address or a host name, got {short(value)}") from None
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _api_key(cls, value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, str):
            raise _fail("expected a string (the key itself; its value is not shown)")
        if not value.strip() or len(value) > MAX_TEXT or any(ch in value for ch in "\r\n\x00,"):
            raise _fail("must be one non-empty line without ',' and at most 4096 characters (its value is not shown)")
        return value

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _api_key_env(cls, value: Any) -> Any:
        if value is None:
            return value
        value = _text(value, "api_key_env")
        if not ENV_NAME_RE.match(value):
            raise _fail(f"expected the name of an environment variable, got {short(value)}")
        return value

    @field_validator("args", mode="before")
    @classmethod
    def _args(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _fail(f"expected a list of llama-server arguments, got {short(value)}")
        if len(value) > MAX_ITEMS:
            raise _fail(f"has {len(value)} entries; at most {MAX_ITEMS}")
        for i, arg in enumerate(value):
            if not isinstance(arg, str):
                raise _fail(f"expected a string, got {short(arg)}", (i,))
            if len(arg) > MAX_TEXT or "\x00" in arg:
                raise _fail(f"is {len(arg)} characters long; at most {MAX_TEXT}, no NUL", (i,))
            flag = arg.split("=", 1)[0]
            if flag in MANAGED_FLAGS:
                raise _fail(f"'{flag}' is set by turboctl: set it as {MANAGED_FLAGS[flag]}", (i,))
        return tuple(value)

    @model_validator(mode="after")
    def _one_key(self) -> ServerSpec:
        if self.api_key is not None and self.api_key_env is not None:
            raise _fail("give api_key or api_key_env, not both", "api_key_env")
        return self

    @property
    def loopback(self) -> bool:
        """True when the host is a loopback address (or ``localhost``)."""
        if self.host.rstrip(".").lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class Generation(_Model):
    """llama-server's sampling defaults (each one only when set)."""

    temperature: Annotated[Finite, Field(ge=0, le=100)] | None = None
    top_p: Annotated[Finite, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(strict=True, ge=0, le=1_000_000)] | None = None
    min_p: Annotated[Finite, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[Finite, Field(ge=0, le=100)] | None = None
    seed: Annotated[int, Field(strict=True, ge=-1, le=2**32 - 1)] | None = None
    max_tokens: Annotated[int, Field(strict=True, ge=-1, le=MAX_CONTEXT)] | None = None

    def llama_args(self) -> list[str]:
        """``--temp T --top-p P ... -n N`` for the values that are set."""
        flags = (("temperature", "--temp"), ("top_p", "--top-p"), ("top_k", "--top-k"), ("min_p", "--min-p"),
                 ("repeat_penalty", "--repeat-penalty"), ("seed", "--seed"), ("max_tokens", "-n"))
        out: list[str] = []
        for key, flag in flags:
            value = getattr(self, key)
            if value is not None:
                out += [flag, str(value)]
        return out


def _context(value: Any) -> Any:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"expected a positive integer or 'auto', got {short(value)}")
    if value < 1:
        raise _fail(f"must be at least 1 (or 'auto'), got {short(value)}")
    if value > MAX_CONTEXT:
        raise _fail(f"{short(value)} is too large (at most {MAX_CONTEXT})")
    return value


class Profile(_Model):
    name: Text
    description: Annotated[str, Field(strict=True, max_length=MAX_DESCRIPTION)] = ""
    model: ModelSource
    kv: KVSpec = KVSpec()
    context: int | Literal["auto"] = "auto"
    server: ServerSpec = ServerSpec()
    environment: dict[str, str] = Field(default_factory=dict)
    generation: Generation = Generation()
    workers: tuple[Text, ...] = Field(default=(), max_length=MAX_ITEMS)
    """RPC workers (``turboctl worker``) the model is split across, as ``HOST:PORT``."""
    # filled by the loader, not by YAML
    origin: Path | None = None
    format: Literal["turboctl", "hermes", "shipped"] = "turboctl"
    notes: tuple[str, ...] = ()

    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        value = _text(value, "name")
        if not NAME_RE.match(value):
            raise _fail(f"{short(value)}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or "
                        "digit (it is typed on the command line and names files)")
        return value

    @field_validator("context", mode="before")
    @classmethod
    def _ctx(cls, value: Any) -> Any:
        return _context(value)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _fail(f"expected a list of HOST:PORT strings, got {short(value)}")
        try:
            return tuple(str(ep) for ep in parse_endpoints(list(value), option="workers")) if value else ()
        except UsageError as exc:
            raise _fail(exc.message.removeprefix("workers ").removeprefix("workers: ")) from None

    @field_validator("environment", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _fail(f"expected a mapping NAME: value, got {short(value)}")
        if len(value) > MAX_ITEMS:
            raise _fail(f"has {len(value)} variables; at most {MAX_ITEMS}")
        for key, item in value.items():
            if not isinstance(key, str) or not ENV_NAME_RE.match(key):
                raise _fail("is not an environment variable name (letters, digits and '_', not starting with a "
                            "digit)", (key,) if isinstance(key, str) else None)
            if key in MANAGED_ENV:
                raise _fail(f"is set by turboctl: set it as {MANAGED_ENV[key]}", (key,))
            if not isinstance(item, str):
                raise _fail(f"expected a string value, got {short(item)}", (key,))
            if len(item) > MAX_ENV_VALUE or "\x00" in item:
                raise _fail(f"the value is {len(item)} characters long; at most {MAX_ENV_VALUE}, no NUL", (key,))
        return value

    # -- line numbers of the keys (for errors raised after loading) ---------------------------
    def where(self, key: str) -> str:
        """``FILE:LINE`` of a dotted key of our schema (``server.args``), or ``FILE``, or ``profile NAME``."""
        if self.origin is None:
            return f"profile {self.name}"
        line = self._lines.get(key)
        while line is None and key:
            key = re.sub(r"(\[\d+\]|\.?[^.\[]+)$", "", key)
            line = self._lines.get(key)
        return f"{self.origin}:{line}" if line is not None else str(self.origin)

    def recipe(self) -> Recipe:
        return self.kv.recipe()


# --------------------------------------------------------------------------- YAML → data + lines
@dataclass
class Document:
    """A parsed YAML file: the data (plain dicts, lists, scalars) and each path's key/value node."""

    name: str
    data: Any
    nodes: dict[Path_, tuple[yaml.Node | None, yaml.Node]] = field(default_factory=dict)

    def line(self, path: Path_, *, key: bool = False) -> int:
        """The 1-based line of the value at ``path`` (of its key with ``key=True``), or of the nearest
        ancestor that exists."""
        for n in range(len(path), -1, -1):
            entry = self.nodes.get(path[:n])
            if entry is None:
                continue
            key_node, value_node = entry
            container = isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode))
            node = key_node if (key or container or n < len(path)) and key_node is not None else value_node
            return int(node.start_mark.line) + 1
        return 1

    def has(self, path: Path_) -> bool:
        return path in self.nodes

    def raw(self, path: Path_) -> str | None:
        """The text of a scalar as written (``7`` for ``TURBO_LAYER_ADAPTIVE: 7``)."""
        entry = self.nodes.get(path)
        if entry is None or not isinstance(entry[1], yaml.ScalarNode):
            return None
        return str(entry[1].value)

    def error(self, path: Path_, message: str, *, key: bool = False, hint: str | None = None) -> ProfileError:
        return ProfileError(one_line(f"{self.name}:{self.line(path, key=key)}: {message}"), hint=hint)


class _Builder:
    def __init__(self, name: str, loader: Any) -> None:
        self.name = name
        self.loader = loader
        self.nodes: dict[Path_, tuple[yaml.Node | None, yaml.Node]] = {}
        self.seen: set[int] = set()

    def fail(self, node: yaml.Node, message: str) -> ProfileError:
        return ProfileError(one_line(f"{self.name}:{node.start_mark.line + 1}: {message}"))

    def build(self, node: yaml.Node, path: Path_, key_node: yaml.Node | None) -> Any:
        if id(node) in self.seen:
            raise self.fail(node, "YAML aliases (*name) are not supported in profiles: write the value out")
        self.seen.add(id(node))
        if len(path) > MAX_DEPTH:
            raise self.fail(node, f"nested deeper than {MAX_DEPTH} levels")
        self.nodes[path] = (key_node, node)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            first: dict[str, int] = {}
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode):
                    raise self.fail(k, "a key must be a plain name, not a list or mapping")
                name = str(k.value)
                if name in first:
                    raise self.fail(k, f"duplicate key {short(name)} (first at line {first[name]})")
                first[name] = k.start_mark.line + 1
                out[name] = self.build(v, (*path, name), k)
            return out
        if isinstance(node, yaml.SequenceNode):
            if len(node.value) > 4 * MAX_ITEMS:
                raise self.fail(node, f"a list of {len(node.value)} entries; at most {4 * MAX_ITEMS}")
            return [self.build(v, (*path, i), None) for i, v in enumerate(node.value)]
        try:
            return self.loader.construct_object(node, deep=True)
        except Exception as exc:  # constructor errors, int() digit limits, bad timestamps, ...
            problem = str(getattr(exc, "problem", None) or exc).split("\n")[0] or type(exc).__name__
            if "Exceeds the limit" in problem:
                problem = "a number with too many digits"
            raise self.fail(node, f"cannot read this value: {problem[:160]}") from None


def _mark_line(exc: yaml.YAMLError, text: str) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    position = getattr(exc, "position", None)
    if isinstance(position, int):
        return text.count("\n", 0, position) + 1
    return 1


# libyaml's loader when PyYAML has it (several times faster), else the pure-Python one; both give
# the same node tree with positions
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_document(raw: bytes, name: str) -> Document:
    """Bytes → :class:`Document` (ProfileError, one line, for anything that is not plain YAML)."""
    if len(raw) > MAX_FILE_BYTES:
        raise ProfileError(f"{name}:1: the file is over {MAX_FILE_BYTES} bytes; a profile is a small text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ProfileError(f"{name}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})") from None
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).split("\n")[0]
        raise ProfileError(one_line(f"{name}:{_mark_line(exc, text)}: invalid YAML: {problem}")) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or exc).split("\n")[0]
            raise ProfileError(one_line(f"{name}:{_mark_line(exc, text)}: invalid YAML: {problem}")) from None
        except RecursionError:
            raise ProfileError(f"{name}:1: invalid YAML: nested too deeply") from None
        if node is None:
            return Document(name, None)
        builder = _Builder(name, loader)
        data = builder.build(node, (), None)
        return Document(name, data, builder.nodes)
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- validation
Translate = Callable[[Path_], Path_]


def _identity(path: Path_) -> Path_:
    return path


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _valid_keys(loc: Path_) -> list[str]:
    """The keys our schema allows in the mapping at ``loc`` (of our schema)."""
    model: type[BaseModel] | None = Profile
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        nxt = None
        for cand in (HFSource, ModelSource, KVSpec, ServerSpec, Generation):
            if annotation is cand or cand in getattr(annotation, "__args__", ()):
                nxt = cand
        model = nxt
    if model is None:
        return []
    return [k for k in model.model_fields if not (model is Profile and k in LOADER_FIELDS)]


def _message(err: Mapping[str, Any], shown: Path_) -> str:
    kind = err["type"]
    dotted = _dotted(shown)
    if kind == "profile":
        return f"{dotted}: {err['ctx']['text']}" if dotted else str(err["ctx"]["text"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if any(shown[-len(s):] == s for s in SECRET_PATHS if len(shown) >= len(s)):
        return f"{dotted}: {msg} (the value is not shown)"
    return f"{dotted}: {msg}, got {short(err.get('input'))}" if dotted else msg


def validate_data(data: Any, doc: Document, translate: Translate = _identity, *,
                  origin: Path | None = None, fmt: Literal["turboctl", "hermes", "shipped"] = "turboctl",
                  notes: Sequence[str] = (), line_paths: Mapping[str, Path_] | None = None) -> Profile:
    """Our-schema data → :class:`Profile`; the first error becomes one line naming the file, the line
    (from ``doc``, through ``translate``: our path → the path in the file) and the closest key."""
    if not isinstance(data, dict):
        what = "nothing" if data is None else f"a {type(data).__name__}"
        raise doc.error((), f"a profile is a YAML mapping (key: value) with at least 'name' and 'model'; found {what}")
    for key in LOADER_FIELDS:
        if key in data:
            raise doc.error(translate((key,)), f"unknown key {short(key)} (it is filled in by turboctl)", key=True)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # an unknown key first: it often explains a missing one (a typo)
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc: Path_ = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        if err["type"] == "profile" and "key" in err.get("ctx", {}):
            loc = (*loc, *err["ctx"]["key"])
        src = translate(loc)
        if err["type"] == "extra_forbidden":
            parent, key = loc[:-1], str(loc[-1])
            near = closest(key, _valid_keys(parent))
            hint = f" (did you mean '{near}'?)" if near else ""
            raise doc.error(src, f"unknown key {short(_dotted(src))}{hint}", key=True,
                            hint=f"valid keys here: {', '.join(_valid_keys(parent))}") from None
        if err["type"] == "missing":
            parent_src = translate(loc[:-1])
            where = f"{_dotted(parent_src)}: " if parent_src else ""
            raise doc.error(parent_src, f"{where}missing key '{_dotted(src[len(parent_src):])}'",
                            key=True) from None
        raise doc.error(src, _message(err, src), key=err["type"] == "profile" and not doc.has(src)) from None
    profile = profile.model_copy(update={"origin": origin, "format": fmt, "notes": tuple(notes)})
    lines: dict[str, int] = {}
    for path in _our_paths(profile):
        src = translate(path)
        if doc.has(src):
            lines[_dotted(path)] = doc.line(src, key=True)
    for key, src in (line_paths or {}).items():
        if doc.has(src):
            lines[key] = doc.line(src, key=True)
    profile._lines = lines
    return profile


def _our_paths(profile: Profile) -> list[Path_]:
    out: list[Path_] = []
    for section in ("name", "description", "context", "environment"):
        out.append((section,))
    for section, model in (("model", profile.model), ("kv", profile.kv), ("server", profile.server),
                           ("generation", profile.generation)):
        out.append((section,))
        out += [(section, k) for k in type(model).model_fields]
    out += [("server", "args", i) for i in range(len(profile.server.args))]
    out += [("environment", k) for k in profile.environment]
    return out


def coerce_scalars(doc: Document, container: Any, path: Path_) -> Any:
    """The numbers and booleans of a mapping's values or a list's items as their YAML text
    (``TURBO_LAYER_ADAPTIVE: 7`` → ``"7"``, ``--threads: 4`` → ``"4"``); other values unchanged."""
    def fix(value: Any, sub: Path_) -> Any:
        if isinstance(value, (bool, int, float)):
            raw = doc.raw(sub)
            return raw if raw is not None else value
        return value

    if isinstance(container, dict):
        return {k: fix(v, (*path, k)) for k, v in container.items()}
    if isinstance(container, list):
        return [fix(v, (*path, i)) for i, v in enumerate(container)]
    return container


def _resolve_path(profile: Profile, origin: Path) -> Profile:
    path = profile.model.path
    if path is None or path.is_absolute():
        return profile
    model = profile.model.model_copy(update={"path": Path(os.path.normpath((origin.parent / path).absolute()))})
    out = profile.model_copy(update={"model": model})
    return out


def read_file(path: Path) -> bytes:
    try:
        if path.is_dir():
            raise ProfileError(f"{path}: is a directory, not a profile file")
        with path.open("rb") as fh:
            return fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file") from None
    except OSError as exc:
        raise ProfileError(one_line(f"{path}: cannot read: {exc.strerror or exc}")) from None


def is_shipped(path: Path) -> bool:
    try:
        return path.resolve().parent == SHIPPED_DIR
    except OSError:
        return False


def load_profile(path: Path) -> Profile:
    """Read a profile file: the Hermes-agent format when its top level has ``profile:``, else ours
    (``format="shipped"`` for the ones in the package). ProfileError, one line, at the first problem."""
    from . import hermes

    raw = read_file(path)
    return load_profile_bytes(raw, path, hermes_loader=hermes.profile_from_document)


def load_profile_bytes(raw: bytes, path: Path, *,
                       hermes_loader: Callable[[Document, Path], Profile] | None = None) -> Profile:
    """:func:`load_profile` on bytes already read (``path`` names the file in messages and anchors
    relative model paths)."""
    doc = parse_document(raw, str(path))
    if isinstance(doc.data, dict) and "profile" in doc.data:
        if hermes_loader is None:
            from . import hermes

            hermes_loader = hermes.profile_from_document
        profile = hermes_loader(doc, path)
    else:
        data = doc.data
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("environment"), dict):
                data["environment"] = coerce_scalars(doc, data["environment"], ("environment",))
            server = data.get("server")
            if isinstance(server, dict) and isinstance(server.get("args"), list):
                data["server"] = {**server, "args": coerce_scalars(doc, server["args"], ("server", "args"))}
        profile = validate_data(data, doc, origin=path, fmt="shipped" if is_shipped(path) else "turboctl")
    return _resolve_path(profile, path)


# --------------------------------------------------------------------------- extra llama-server args
@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    value: Literal["none", "required", "optional"]


_FLAG_LINE = re.compile(r"^(-\S.*?)(?:\s{2,}|$)")
_SEPARATOR = re.compile(r",\s+")


def help_flags(help_text: str) -> dict[str, Flag]:
    """The flags of ``llama-server --help``: every name (``-c``, ``--ctx-size``) → its :class:`Flag`."""
    out: dict[str, Flag] = {}
    for line in help_text.splitlines():
        if line.startswith("-----"):
            continue
        m = _FLAG_LINE.match(_SEPARATOR.sub(", ", line))
        if not m:
            continue
        names: list[str] = []
        value: Literal["none", "required", "optional"] = "none"
        for part in m.group(1).split(", "):
            words = part.split()
            if not words or not words[0].startswith("-"):
                continue
            names.append(words[0])
            if len(words) > 1:
                value = "optional" if words[1].startswith("[") else "required"
        flag = Flag(tuple(names), value)
        for name in names:
            out.setdefault(name, flag)
    return out


def validate_extra_args(args: Sequence[str], help_text: str, *, where: str | Callable[[int], str] | None = None
                        ) -> None:
    """Refuse an extra llama-server argument the binary does not know (naming the closest flag), a
    flag turboctl sets itself (naming the profile key), or a value where no flag takes one.
    ``where`` prefixes the message (``FILE:LINE``; a callable gets the argument's index)."""
    def fail(i: int, message: str) -> ProfileError:
        prefix = where(i) if callable(where) else where
        return ProfileError(one_line(f"{prefix + ': ' if prefix else ''}server.args[{i}]: {message}"))

    flags = help_flags(help_text)
    expect_value: Flag | None = None
    for i, arg in enumerate(args):
        is_flag = arg.startswith("-") and arg != "-" and not NEGATIVE_NUMBER_RE.match(arg)
        if not is_flag:
            if expect_value is None:
                previous = f" after '{args[i - 1]}', which takes no value" if i else ""
                raise fail(i, f"{short(arg)} is not a llama-server flag{previous} (flags start with '-')")
            expect_value = None
            continue
        if expect_value is not None and expect_value.value == "required":
            raise fail(i - 1, f"'{args[i - 1]}' needs a value")
        name, eq, _ = arg.partition("=")
        if name in MANAGED_FLAGS:
            raise fail(i, f"'{name}' is set by turboctl: set it as {MANAGED_FLAGS[name]}")
        flag = flags.get(name)
        if flag is None:
            near = closest(name, flags)
            raise fail(i, f"unknown llama-server flag {short(name)}" + (f" (did you mean '{near}'?)" if near else ""))
        expect_value = flag if flag.value != "none" and not eq else None
    if expect_value is not None and expect_value.value == "required":
        raise fail(len(args) - 1, f"'{args[-1]}' needs a value")


def check_profile_args(profile: Profile, help_text: str) -> None:
    """:func:`validate_extra_args` on the profile's ``server.args``, the message naming its file and
    the argument's line."""
    if profile.server.args:
        validate_extra_args(profile.server.args, help_text, where=lambda i: profile.where(f"server.args[{i}]"))
