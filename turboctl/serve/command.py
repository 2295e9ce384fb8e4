"""The llama-server command line and environment that ``turboctl serve`` starts.

Everything the user asked for (a profile or the command's options) is first turned into one
frozen :class:`ServeSettings`; :func:`server_argv` and :func:`server_env` are pure functions of
it. The API key never appears in the command line (it is visible in ``ps``): it is passed in
llama-server's ``LLAMA_API_KEY`` environment variable, and :func:`display` shows it redacted.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import UsageError
from ..kv.recipe import ENV_MODE, ENV_RULES, Recipe
from .fit import context_args

ENV_API_KEY = "LLAMA_API_KEY"
"""llama-server b11312 reads the API key from this variable when ``--api-key`` is not given."""

# Inherited variables that would change what the server does behind the plan's back: the
# per-layer KV variables (the recipe is passed explicitly) and llama-server's own API key
# settings (the key is ours to set, or nothing).
SCRUBBED_ENV = (ENV_MODE, ENV_RULES, ENV_API_KEY, "LLAMA_ARG_API_KEY_FILE")

REDACTED = "<hidden>"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW", re.IGNORECASE)
"""Environment variables whose values are never shown (dry run, logs, ``profiles show``)."""

@dataclass(frozen=True)
class ServeSettings:
    """One llama-server start, fully resolved (the model is a local, verified file and the
    context a number)."""

    model: Path
    recipe: Recipe
    context: int
    host: str = "127.0.0.1"
    port: int = 8080
    parallel: int = 1
    batch_size: int | None = None
    alias: str | None = None
    generation_args: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return http_url(self.host, self.port)


def parse_context(text: str) -> int | Literal["auto"]:
    """``--ctx`` value: ``auto`` or a positive number (``32k`` / ``128K`` accepted)."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    mult = 1024 if value.endswith("k") else 1
    digits = value[:-1] if mult > 1 else value
    if not digits.isdigit() or int(digits) <= 0:
        raise UsageError(f"--ctx {text}: expected auto or a positive number of tokens (e.g. 8192 or 32k)")
    return int(digits) * mult


def http_url(host: str, port: int) -> str:
    """``http://host:port`` (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_argv(binary: Path, s: ServeSettings) -> list[str]:
    """The exact llama-server command line (without the API key). The context-shaping part is
    :func:`turboctl.serve.fit.context_args`, the very arguments the memory projection used."""
    args = [str(binary), "--model", str(s.model),
            *context_args(s.recipe, s.context, parallel=s.parallel, batch_size=s.batch_size),
            "--host", s.host, "--port", str(s.port)]
    given = set(s.extra_args)
    if not given & {"--fit", "-fit"}:
        # llama-server would otherwise re-fit unset arguments (e.g. -ngl) behind the projection
        args += ["--fit", "off"]
    if not given & {"--cache-ram", "-cram"}:
        # the prompt cache grows at run time (8 GiB by default) outside the projection
        args += ["--cache-ram", "0"]
    if not given & {"-lv", "--verbosity", "--log-verbosity", "-v", "--verbose", "--log-verbose"}:
        # llama.cpp's own info lines (the per-layer KV types and bytes serve verifies) are level 4
        args += ["-lv", "4"]
    if s.alias:
        args += ["--alias", s.alias]
    args += [*s.generation_args, *s.extra_args]
    return args


def server_env(s: ServeSettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ours minus :data:`SCRUBBED_ENV`, plus the profile's
    variables, plus the API key."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in SCRUBBED_ENV}
    env.update(s.environment)
    if s.api_key:
        env[ENV_API_KEY] = s.api_key
    return env


def env_overrides(s: ServeSettings) -> dict[str, str]:
    """The variables the server gets on top of turboctl's environment, the key redacted
    (what ``--dry-run`` and the log show)."""
    shown = {k: REDACTED if SECRET_NAME.search(k) else v for k, v in s.environment.items()}
    if s.api_key:
        shown[ENV_API_KEY] = REDACTED
    return shown


def display(argv: Sequence[str], overrides: Mapping[str, str]) -> str:
    """A shell line a user could paste (the key shown as ``<hidden>``)."""
    prefix = " ".join(f"{k}={shlex.quote(v) if v != REDACTED else v}" for k, v in overrides.items())
    line = shlex.join(list(argv))
    return f"{prefix} {line}" if prefix else line
