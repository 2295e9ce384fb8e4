"""Several models on one endpoint: llama-server's router mode, generated from the profiles.

llama-server b11312 started without ``-m`` and with ``--models-preset FILE`` is a *router*: it
reads one INI section per model (keys are llama-server's own flag names), starts a child
llama-server per model when a request names it (or at start for ``load-on-startup``), forwards
requests by the body's ``model`` field (GET routes by ``?model=``), unloads the least recently
used one beyond ``--models-max``, and forwards each child's log lines prefixed ``[<port>] ``.

turboctl writes that file from each profile's own serve plan (the plan ``turboctl serve
--profile X`` alone would start: its K/V types, per-layer rules, context, slots and arguments),
decides from the plans' memory projections how many models may be loaded at once, and proves
from each child's part of the log that the child made the KV cache its plan says
(:func:`turboctl.serve.launch.verify_log`), at start and for every later on-demand load.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DoesNotFit, UsageError
from . import command
from . import fit as fit_mod

if TYPE_CHECKING:
    from .launch import Front, ServePlan

SCHEMA = "turboctl.serve.router/1"

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Model names the router takes as INI section names unchanged (a ``:tag`` would be rewritten:
b11312 upper-cases what follows the last colon of a section name)."""

# Arguments the router sets for every child itself (host, port, alias = the section name, key)
# or that belong to the router, not to a model.
ROUTER_OWNED = {"--host": True, "--port": True, "-a": True, "--alias": True, "--api-key": True,
                "--api-key-file": True, "--models-preset": True, "--models-dir": True, "--models-max": True,
                "--models-autoload": False, "--no-models-autoload": False}

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_SPAWN = re.compile(r"spawning server instance with name=(\S+) on port (\d+)")
_CHILD = re.compile(r"^\[\s*(\d+)\] ?(.*)$")
_READY = re.compile(r"listening on http://")


def _is_value(token: str) -> bool:
    return not token.startswith("-") or bool(_NUMBER.match(token))


def preset_options(argv: Sequence[str], *, where: str) -> list[tuple[str, str]]:
    """One model's llama-server arguments (without the binary) as ``(key, value)`` preset lines:
    ``--flag VALUE`` -> ``flag = VALUE``, a lone ``--flag`` -> ``flag = true``. The router's own
    arguments are dropped. UsageError for what the INI file cannot carry: a value with ``;`` or
    ``#`` (comments in llama-server's INI reader, which has no quoting) or a line break, or a flag
    given twice (a section holds a key once)."""
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if not flag.startswith("-") or flag == "-":
            raise UsageError(f"{where}: cannot write {flag!r} to the router's preset file (not an option)")
        has_value = i + 1 < len(argv) and _is_value(argv[i + 1])
        value = argv[i + 1] if has_value else "true"
        i += 2 if has_value else 1
        if flag in ROUTER_OWNED:
            continue
        key = flag.lstrip("-")
        if key in seen:
            raise UsageError(f"{where}: {flag} is given twice ({seen[key]!r} and {value!r}); a model's section in "
                             "the router's preset file holds each option once", hint="keep one of them")
        if any(c in value for c in ";#\n\r") or value != value.strip():
            raise UsageError(f"{where}: {flag} {value!r} cannot be written to the router's preset file "
                             "(llama-server's INI reader takes ';' and '#' as comments and has no quoting)",
                             hint="rename the file or directory, or serve this profile alone")
        seen[key] = value
        out.append((key, value))
    return out


@dataclass(frozen=True)
class Member:
    """One model of the router: its name (the INI section, the ``model`` clients send) and the
    serve plan it would have alone."""

    name: str
    plan: ServePlan
    load_on_startup: bool

    @property
    def total_bytes(self) -> int:
        proj = self.plan.projection
        return int(proj["total"]) if proj else 0


def at_once(totals: Sequence[int], budget: int) -> int:
    """How many models may be loaded together: the largest k such that the k largest projections
    fit the budget together (so any k of them do). At least 1 when the largest fits alone."""
    k, used = 0, 0
    for t in sorted(totals, reverse=True):
        if used + t > budget:
            break
        used += t
        k += 1
    return k


def preset_text(members: Sequence[Member], argv_of: Mapping[str, Sequence[str]]) -> str:
    """The ``--models-preset`` file: ``version = 1`` then one section per model."""
    lines = ["; written by turboctl serve: one section per profile (llama-server router mode)", "version = 1", ""]
    for m in members:
        lines.append(f"[{m.name}]")
        where = m.plan.settings.alias or m.name
        for key, value in preset_options(argv_of[m.name], where=f"profile {where}"):
            lines.append(f"{key} = {value}")
        if m.load_on_startup:
            lines.append("load-on-startup = true")
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class RouterPlan:
    """Everything decided before the router starts."""

    members: tuple[Member, ...]
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    shown: str
    preset: str
    preset_path: Path
    models_max: int
    host: str
    port: int
    api_key: str | None = field(default=None, repr=False)
    budget: str | None = None
    budget_bytes: int | None = None
    front: Front | None = None  # where the Ollama proxy listens (None: the router itself is the endpoint)
    notes: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return command.http_url(self.host, self.port)

    def fit_rows(self) -> list[dict[str, Any]]:
        """The what-if of several models: each model's projection, and how many fit at once."""
        rows = []
        for m in self.members:
            s = m.plan.settings
            rows.append({"model": m.name, "kv": s.recipe.label, "context": s.context, "parallel": s.parallel,
                         "total_bytes": m.total_bytes, "load_on_startup": m.load_on_startup})
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "endpoint": self.front.endpoint if self.front else self.endpoint,
                "router": self.endpoint, "models_max": self.models_max, "budget": self.budget,
                "budget_bytes": self.budget_bytes, "api_key": "set" if self.api_key else "none",
                "command": self.shown, "argv": self.argv, "preset_file": str(self.preset_path),
                "preset": self.preset, "fit": self.fit_rows(),
                "models": [m.plan.to_json() for m in self.members], "notes": list(self.notes)}


def check_names(plans: Sequence[ServePlan]) -> list[str]:
    names = []
    for p in plans:
        name = p.settings.alias or p.settings.model.stem
        if not NAME.match(name):
            raise UsageError(f"model name {name!r} cannot name a model of the router: letters, digits, '.', '_' "
                             "and '-' only (no ':tag': llama-server rewrites what follows a colon)",
                             hint="set model.name in the profile, e.g. gemma4-31b")
        if name in names:
            raise UsageError(f"two profiles serve a model named {name!r}: clients choose a model by its name",
                             hint="give one of them another model.name")
        names.append(name)
    return names


def common_environment(plans: Sequence[ServePlan], names: Sequence[str]) -> dict[str, str]:
    """The profiles' extra environment, which the router's children inherit: it must be the same
    for every profile (the preset file cannot set a variable for one model)."""
    first: dict[str, str] | None = None
    for p, name in zip(plans, names, strict=True):
        env = dict(p.settings.environment)
        if first is None:
            first, first_name = env, name
        elif env != first:
            raise UsageError(f"profiles {first_name} and {name} set different environment variables "
                             f"({sorted(first.items())} vs {sorted(env.items())}); the router's models share one "
                             "environment", hint="move the setting into the recipe (kv:) or server.args")
    return first or {}


def make_plan(plans: Sequence[ServePlan], binary: Path, *, host: str, port: int, api_key: str | None,
              preset_path: Path, budget: str | None, budget_bytes: int | None, front: Front | None,
              base_env: Mapping[str, str] | None = None, notes: Iterable[str] = ()) -> RouterPlan:
    """The router for these per-profile plans (each already fitted alone). ``host``/``port`` are
    where the router listens (behind the proxy: a loopback port)."""
    if len(plans) < 2:
        raise UsageError("router mode needs two or more profiles")
    names = check_names(plans)
    env_extra = common_environment(plans, names)
    totals = [int(p.projection["total"]) if p.projection else 0 for p in plans]
    if budget_bytes is not None and all(totals):
        n = at_once(totals, budget_bytes)
        if n == 0:
            big = max(range(len(plans)), key=lambda i: totals[i])
            raise DoesNotFit(f"model {names[big]} needs {fit_mod.human(totals[big])}, more than the budget "
                             f"{budget}", hint="lower its context or pick a smaller KV type")
    else:
        n = len(plans)  # a dry run before the build or the models exist: nothing projected yet
    members = tuple(Member(name, p, load_on_startup=i < n)
                    for i, (name, p) in enumerate(zip(names, plans, strict=True)))
    argv_of = {m.name: m.plan.argv[1:] for m in members}
    text = preset_text(members, argv_of)
    argv = [str(binary), "--models-preset", str(preset_path), "--models-max", str(n), "--host", host,
            "--port", str(port) if port else "<free loopback port>", "-lv", "4"]
    settings = command.ServeSettings(model=Path(), recipe=plans[0].settings.recipe, context=0, host=host,
                                     port=port, environment=env_extra, api_key=api_key)
    env = command.server_env(settings, base_env)
    notes = list(notes)
    if n < len(plans):
        notes.append(f"{n} of {len(plans)} models fit in memory at once ({budget}): a request for another "
                     "unloads the least recently used one first (a reload takes the model's load time)")
    return RouterPlan(members=members, argv=argv, env=env,
                      shown=command.display(argv, command.env_overrides(settings)), preset=text,
                      preset_path=preset_path, models_max=n, host=host, port=port, api_key=api_key,
                      budget=budget, budget_bytes=budget_bytes, front=front, notes=tuple(notes))


# --------------------------------------------------------------------------- the router's log

@dataclass
class ChildLog:
    """The log of one child llama-server (one load of one model), without the ``[port]`` prefix."""

    name: str
    port: int
    lines: list[str] = field(default_factory=list)
    ready: bool = False
    verified: bool = False

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class LogSplitter:
    """Reads the router's log as it grows and splits it into one :class:`ChildLog` per load."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""
        self.children: list[ChildLog] = []
        self._by_port: dict[int, ChildLog] = {}

    def feed(self, text: str) -> None:
        data = self.partial + text
        lines = data.split("\n")
        self.partial = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        m = _CHILD.match(line)
        if m:
            child = self._by_port.get(int(m[1]))
            if child is not None:
                child.lines.append(m[2])
                if _READY.search(m[2]):
                    child.ready = True
            return
        s = _SPAWN.search(line)
        if s:
            child = ChildLog(name=s[1], port=int(s[2]))
            self.children.append(child)
            self._by_port[child.port] = child  # a port reused later belongs to the newest load

    def poll(self) -> list[ChildLog]:
        """Read what was added to the log; the loads that are ready and not verified yet."""
        try:
            with self.path.open("r", encoding="utf-8", errors="replace") as f:
                f.seek(self.offset)
                text = f.read()
                self.offset = f.tell()
        except FileNotFoundError:
            return []
        self.feed(text)
        return [c for c in self.children if c.ready and not c.verified]

    def latest(self, name: str) -> ChildLog | None:
        for c in reversed(self.children):
            if c.name == name:
                return c
        return None


def split_log(text: str) -> list[ChildLog]:
    """Every child's log in a router log (for tests and error details)."""
    s = LogSplitter(Path())
    s.feed(text if text.endswith("\n") else text + "\n")
    return s.children
