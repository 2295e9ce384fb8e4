"""The Hermes-agent profile format, loaded as it is and mapped onto :class:`~.profile.Profile`.

A Hermes profile has one top-level key, ``profile``::

    profile:
      name: gemma4-turboquant
      description: ...
      providers:
        primary:
          type: llama.cpp
          endpoint: http://0.0.0.0:8080/v1          # → server.host, server.port
          model: {name: ..., path: ~/models/x.gguf}  # → model.name, model.path
          turboquant: {enabled: true, kv_type: turbo3, layer_adaptive_mode: 7}
          context: {max_tokens: 131072, batch_size: 512}
          generation: {temperature: 0.7, ...}
        fallback: {...}                              # ignored, with a note
      environment: {TURBO_LAYER_ADAPTIVE: 7, ...}    # the mode; the other variables are kept
      server_command: llama-server ...               # ignored, with a note

Every key inside the sections that are mapped is checked: a typo is an error naming the closest
key, never a silent default. Sections that are ignored (other providers, ``server_command``) are
named in :attr:`Profile.notes`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ProfileError
from .profile import Document, Path_, Profile, closest, coerce_scalars, short, validate_data

PRIMARY_TYPES = ("llama.cpp", "llamacpp", "llama-cpp", "llama_cpp", "llama-server", "openai", "openai-compatible",
                 "custom")
PROFILE_KEYS = ("name", "description", "providers", "environment", "server_command")
PRIMARY_KEYS = ("type", "endpoint", "model", "turboquant", "context", "generation")
MODEL_KEYS = ("name", "path")
TURBOQUANT_KEYS = ("enabled", "kv_type", "layer_adaptive_mode")
CONTEXT_KEYS = ("max_tokens", "batch_size")
ENV_MODE = "TURBO_LAYER_ADAPTIVE"
DEFAULT_PORT = 8080

P: Path_ = ("profile",)
PRIMARY: Path_ = ("profile", "providers", "primary")


class _Reader:
    def __init__(self, doc: Document) -> None:
        self.doc = doc

    def mapping(self, value: Any, path: Path_, keys: tuple[str, ...], *, what: str) -> dict[str, Any]:
        """The mapping at ``path``, its keys checked against ``keys`` (closest key on a typo)."""
        if not isinstance(value, dict):
            raise self.doc.error(path, f"{'.'.join(map(str, path))}: expected a mapping ({what}), got {short(value)}")
        for key in value:
            if key not in keys:
                near = closest(key, keys)
                hint = f" (did you mean '{near}'?)" if near else ""
                raise self.doc.error((*path, key), f"unknown key '{'.'.join(map(str, (*path, key)))}'{hint}",
                                     key=True, hint=f"valid keys here: {', '.join(keys)}")
        return value

    def fail(self, path: Path_, message: str) -> ProfileError:
        return self.doc.error(path, f"{'.'.join(map(str, path))}: {message}")


def _endpoint(reader: _Reader, value: Any) -> tuple[str, int]:
    path = (*PRIMARY, "endpoint")
    if not isinstance(value, str) or not value.strip():
        raise reader.fail(path, f"expected a URL like http://127.0.0.1:8080/v1, got {short(value)}")
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as exc:
        raise reader.fail(path, f"not a valid URL ({exc}): {short(value)}") from None
    if parts.scheme == "https":
        raise reader.fail(path, "https: turboctl serves plain http (put a TLS proxy in front of it, and give the "
                                "endpoint as http://HOST:PORT here)")
    if parts.scheme != "http" or not parts.hostname:
        raise reader.fail(path, f"expected a URL like http://127.0.0.1:8080/v1, got {short(value)}")
    return parts.hostname, port if port is not None else DEFAULT_PORT


def profile_from_document(doc: Document, origin: Path) -> Profile:
    """The Hermes profile of ``doc`` as a :class:`Profile` (format ``hermes``; notes say what was ignored)."""
    r = _Reader(doc)
    top = r.mapping(doc.data, (), ("profile",), what="the top level")
    prof = r.mapping(top["profile"], P, PROFILE_KEYS, what="the Hermes profile")
    notes: list[str] = []
    data: dict[str, Any] = {}
    # our path → the path in the file (the longest matching prefix wins)
    table: list[tuple[Path_, Path_]] = [((), P), (("name",), (*P, "name")), (("description",), (*P, "description")),
                                        (("environment",), (*P, "environment"))]
    for key in ("name", "description"):
        if key in prof:
            data[key] = prof[key]
    if "providers" not in prof:
        raise doc.error(P, "profile: missing key 'providers' (with a 'primary' provider)", key=True)
    providers = prof["providers"]
    if not isinstance(providers, dict):
        raise r.fail((*P, "providers"), f"expected a mapping of providers (primary, fallback, ...), got "
                                        f"{short(providers)}")
    if "primary" not in providers:
        near = closest("primary", [str(k) for k in providers])
        hint = f" (is '{near}' meant to be it?)" if near else ""
        raise doc.error((*P, "providers"), f"profile.providers: missing key 'primary'{hint}", key=True)
    for name, other in providers.items():
        if name == "primary":
            continue
        kind = other.get("type") if isinstance(other, dict) else None
        label = f" ({kind})" if isinstance(kind, str) else ""
        notes.append(f"provider '{name}'{label} ignored: turboctl serves the primary provider only")
    primary = r.mapping(providers["primary"], PRIMARY, PRIMARY_KEYS, what="the primary provider")

    kind = primary.get("type")
    if kind is not None and (not isinstance(kind, str) or kind.lower() not in PRIMARY_TYPES):
        raise r.fail((*PRIMARY, "type"), f"turboctl serves llama.cpp (llama-server) providers; got {short(kind)} "
                                         f"(accepted: {', '.join(PRIMARY_TYPES)})")

    server: dict[str, Any] = {}
    if "endpoint" in primary:
        server["host"], server["port"] = _endpoint(r, primary["endpoint"])
        table += [(("server",), (*PRIMARY, "endpoint")), (("server", "host"), (*PRIMARY, "endpoint")),
                  (("server", "port"), (*PRIMARY, "endpoint"))]

    if "model" not in primary:
        raise doc.error(PRIMARY, "profile.providers.primary: missing key 'model' (with the GGUF file's path)", key=True)
    model = r.mapping(primary["model"], (*PRIMARY, "model"), MODEL_KEYS, what="name and path of the GGUF")
    if "path" not in model:
        raise doc.error((*PRIMARY, "model"), "profile.providers.primary.model: missing key 'path' (turboctl needs "
                                             "the GGUF file)", key=True)
    data["model"] = dict(model)
    table += [(("model",), (*PRIMARY, "model"))]

    kv: dict[str, Any] = {}
    mode_src: Path_ | None = None
    enabled = True
    if "turboquant" in primary:
        tq = r.mapping(primary["turboquant"], (*PRIMARY, "turboquant"), TURBOQUANT_KEYS,
                       what="enabled, kv_type, layer_adaptive_mode")
        table += [(("kv",), (*PRIMARY, "turboquant")), (("kv", "k"), (*PRIMARY, "turboquant", "kv_type")),
                  (("kv", "v"), (*PRIMARY, "turboquant", "kv_type"))]
        if "enabled" in tq:
            if not isinstance(tq["enabled"], bool):
                raise r.fail((*PRIMARY, "turboquant", "enabled"), f"expected true or false, got {short(tq['enabled'])}")
            enabled = tq["enabled"]
        kv_type = tq.get("kv_type")
        if kv_type is not None:
            if not isinstance(kv_type, str):
                raise r.fail((*PRIMARY, "turboquant", "kv_type"), f"expected a cache type such as turbo4 (or K/V), "
                                                                  f"got {short(kv_type)}")
            k, _, v = kv_type.partition("/")
            kv["k"] = k.strip()
            if v:
                kv["v"] = v.strip()
        if "layer_adaptive_mode" in tq:
            kv["adaptive_mode"] = tq["layer_adaptive_mode"]
            mode_src = (*PRIMARY, "turboquant", "layer_adaptive_mode")
        if not enabled:
            ignored = [k for k in ("kv_type", "layer_adaptive_mode") if k in tq]
            notes.append("turboquant.enabled is false: K/V f16" +
                         (f" ({' and '.join(ignored)} ignored)" if ignored else ""))
            kv = {"k": "f16"}
            mode_src = None

    if "environment" in prof:
        env = prof["environment"]
        if isinstance(env, dict):
            env = coerce_scalars(doc, env, (*P, "environment"))
            if ENV_MODE in env:
                env_path = (*P, "environment", ENV_MODE)
                text = env.pop(ENV_MODE)
                if not isinstance(text, str) or not text.strip().lstrip("-").isdigit() or len(text) > 6:
                    raise r.fail(env_path, f"expected a TURBO_LAYER_ADAPTIVE mode number, got {short(text)}")
                env_mode = int(text)
                if mode_src is not None and kv.get("adaptive_mode") != env_mode:
                    other = doc.line(mode_src)
                    raise doc.error(env_path, f"profile.environment.{ENV_MODE}={env_mode} conflicts with "
                                              f"{'.'.join(map(str, mode_src))}={short(kv.get('adaptive_mode'))} "
                                              f"(line {other}): give one mode")
                if enabled:
                    if mode_src is None:
                        kv["adaptive_mode"] = env_mode
                        mode_src = env_path
                    notes.append(f"{ENV_MODE}={env_mode} from profile.environment is the KV mode "
                                 f"(turboctl passes --kv-adaptive {env_mode})")
                else:
                    notes.append(f"{ENV_MODE}={env_mode} ignored: turboquant.enabled is false")
        data["environment"] = env
    if mode_src is not None:
        table += [(("kv", "adaptive_mode"), mode_src)]
    if kv:
        data["kv"] = kv

    if "context" in primary:
        ctx = r.mapping(primary["context"], (*PRIMARY, "context"), CONTEXT_KEYS, what="max_tokens, batch_size")
        if "max_tokens" in ctx:
            data["context"] = ctx["max_tokens"]
            table += [(("context",), (*PRIMARY, "context", "max_tokens"))]
        if "batch_size" in ctx:
            server["batch_size"] = ctx["batch_size"]
            table += [(("server", "batch_size"), (*PRIMARY, "context", "batch_size"))]
    if server:
        data["server"] = server
    if "generation" in primary:
        data["generation"] = primary["generation"]
        table += [(("generation",), (*PRIMARY, "generation"))]
    if "server_command" in prof:
        notes.append("server_command ignored: turboctl builds its own llama-server command (profiles show prints it)")

    table.sort(key=lambda pair: len(pair[0]), reverse=True)

    def translate(path: Path_) -> Path_:
        for ours, theirs in table:
            if path[:len(ours)] == ours:
                return (*theirs, *path[len(ours):])
        return path

    return validate_data(data, doc, translate, origin=origin, fmt="hermes", notes=notes)
