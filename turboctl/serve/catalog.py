"""Where profiles are found, and what ``turboctl profiles list|show`` print.

Search path, first match wins:

1. ``./profiles`` (the current directory's),
2. the user config dir's ``profiles`` (``platformdirs.user_config_dir("turboctl")``; the
   ``TURBOCTL_CONFIG`` environment variable replaces that config dir),
3. ``~/.hermes/profiles`` (the Hermes agent's),
4. the shipped profiles (``turboctl/serve/shipped/*.yaml``).

A profile is found by its file name without ``.yaml``/``.yml`` or by the ``name`` it declares
(``profile.name`` in the Hermes format), so ``hermes-profile-gemma4-turboquant.yaml`` with
``name: gemma4-turboquant`` answers to both.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from platformdirs import user_config_dir

from .. import __version__
from ..errors import ProfileError, ProfileNotFound, TurboctlError
from ..ui import UI
from .command import SECRET_NAME
from .profile import MAX_FILE_BYTES, SHIPPED_DIR, Profile, check_profile_args, load_profile

CONFIG_ENV = "TURBOCTL_CONFIG"
SCHEMA_LIST = "turboctl.profiles.list/1"
SCHEMA_SHOW = "turboctl.profiles.show/1"
SCHEMA_VALIDATE = "turboctl.profiles.validate/1"
SUFFIXES = (".yaml", ".yml")

OriginKind = Literal["cwd", "user", "hermes", "shipped", "file"]


@dataclass(frozen=True)
class SearchDir:
    kind: OriginKind
    path: Path


def config_dir() -> Path:
    """turboctl's config dir: ``$TURBOCTL_CONFIG``, else the platform's user config dir."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env).expanduser() if env else Path(user_config_dir("turboctl"))


def search_path(cwd: Path | None = None) -> list[SearchDir]:
    return [
        SearchDir("cwd", (cwd or Path.cwd()) / "profiles"),
        SearchDir("user", config_dir() / "profiles"),
        SearchDir("hermes", Path.home() / ".hermes" / "profiles"),
        SearchDir("shipped", SHIPPED_DIR),
    ]


def _files(d: SearchDir) -> list[Path]:
    try:
        return sorted(p for p in d.path.iterdir() if p.suffix in SUFFIXES and p.is_file())
    except OSError:
        return []


def _declared_name(path: Path) -> str | None:
    """The ``name`` (or ``profile.name``) a file declares, read without validating it (None when
    the file is not YAML or names nothing)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            return None
        data = yaml.safe_load(raw)
    except (OSError, yaml.YAMLError, ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("profile"), dict):
        data = data["profile"]
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


@dataclass(frozen=True)
class Entry:
    """One profile file on the search path."""

    name: str  # the declared name, else the file name without its suffix
    kind: OriginKind
    path: Path
    profile: Profile | None
    error: str | None
    shadowed_by: Path | None = None
    shadowed_by_kind: OriginKind | None = None

    @property
    def aliases(self) -> tuple[str, ...]:
        stem = self.path.stem
        return (self.name,) if stem == self.name else (self.name, stem)


def _entries() -> Iterator[Entry]:
    for d in search_path():
        for path in _files(d):
            try:
                profile = load_profile(path)
                yield Entry(profile.name, d.kind, path, profile, None)
            except TurboctlError as exc:
                yield Entry(_declared_name(path) or path.stem, d.kind, path, None, exc.message)


def list_profiles() -> list[Entry]:
    """Every profile file on the search path, in search order; a later file with a name already
    taken is marked with the file that shadows it; invalid files carry their one-line error."""
    out: list[Entry] = []
    taken: dict[str, Entry] = {}
    for entry in _entries():
        shadow = next((taken[a] for a in entry.aliases if a in taken), None)
        if shadow is not None:
            entry = Entry(entry.name, entry.kind, entry.path, entry.profile, entry.error, shadow.path, shadow.kind)
        for alias in entry.aliases:
            taken.setdefault(alias, entry)
        out.append(entry)
    return out


def is_path(name_or_path: str) -> bool:
    return "/" in name_or_path or os.sep in name_or_path or name_or_path.endswith(SUFFIXES)


def find_profile(name_or_path: str, *, cwd: Path | None = None) -> Profile:
    """The profile of that name (first match on the search path, ``./profiles`` taken in ``cwd``)
    or that file. ProfileNotFound names the closest names and the directories searched; a
    matching file that is invalid raises its ProfileError."""
    if is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ProfileNotFound(f"profile file not found: {path}")
        return load_profile(path)
    names: list[str] = []
    dirs = search_path(cwd)
    for d in dirs:
        for path in _files(d):
            if path.stem == name_or_path:
                return load_profile(path)
            declared = _declared_name(path)
            if declared == name_or_path:
                return load_profile(path)
            names += [n for n in (declared, path.stem) if n]
    near = difflib.get_close_matches(name_or_path, sorted(set(names)), n=3, cutoff=0.4)
    closest = f" (closest: {', '.join(near)})" if near else ""
    searched = ", ".join(str(d.path) for d in dirs)
    raise ProfileNotFound(f"no profile {name_or_path!r}{closest}; searched: {searched}",
                          hint="turboctl profiles list shows every profile found")


# --------------------------------------------------------------------------- list / validate output
def list_json(entries: list[Entry]) -> dict[str, Any]:
    return {
        "schema": SCHEMA_LIST,
        "turboctl_version": __version__,
        "search_path": [{"kind": d.kind, "path": str(d.path), "exists": d.path.is_dir()} for d in search_path()],
        "profiles": [
            {
                "name": e.name,
                "origin": e.kind,
                "path": str(e.path),
                "format": e.profile.format if e.profile else None,
                "description": e.profile.description if e.profile else None,
                "model": e.profile.model.describe() if e.profile else None,
                "kv": e.profile.kv.recipe_text() if e.profile else None,
                "context": e.profile.context if e.profile else None,
                "valid": e.error is None,
                "error": e.error,
                "shadowed_by": str(e.shadowed_by) if e.shadowed_by else None,
            }
            for e in entries
        ],
    }


def render_list(entries: list[Entry], ui: UI) -> None:
    rows = []
    for e in entries:
        if e.profile is not None:
            p = e.profile
            state = "ok" if e.shadowed_by is None else f"shadowed ({e.shadowed_by_kind})"
            rows.append([e.name, e.kind, p.kv.recipe_text(), str(p.context), p.model.kind, state, str(e.path)])
        else:
            rows.append([e.name, e.kind, "-", "-", "-", "invalid", str(e.path)])
    ui.table("profiles", ["name", "origin", "kv", "context", "model", "state", "file"], rows)
    for e in entries:
        if e.error:
            ui.warn(e.error)
    if not entries:
        ui.info("no profiles found; searched: " + ", ".join(str(d.path) for d in search_path()))


def server_help() -> str | None:
    """``llama-server --help`` of the current build (to check extra arguments), or None when
    nothing is built yet."""
    from .. import proc
    from ..build import manifest
    from ..paths import get_paths

    try:
        m = manifest.load_current(get_paths())
    except TurboctlError:
        return None
    if m is None or "llama-server" not in m.binaries or not m.binary("llama-server").is_file():
        return None
    result = proc.run([str(m.binary("llama-server")), "--help"], timeout=60, check=False, echo=False,
                      what="llama-server --help")
    return result.output if result.returncode == 0 else None


@dataclass(frozen=True)
class Checked:
    path: Path
    profile: Profile | None
    error: ProfileError | None
    args_checked: bool = False


def validate_files(paths: list[Path], help_text: str | None = None) -> list[Checked]:
    """Load each file; with ``help_text`` (the binary's --help) also check its extra arguments."""
    out = []
    for path in paths:
        try:
            profile = load_profile(path)
            if help_text is not None:
                check_profile_args(profile, help_text)
            out.append(Checked(path, profile, None, help_text is not None))
        except ProfileError as exc:
            out.append(Checked(path, None, exc))
    return out


def validate_json(results: list[Checked]) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VALIDATE,
        "turboctl_version": __version__,
        "valid": all(r.error is None for r in results),
        "results": [
            {"path": str(r.path), "valid": r.error is None,
             "name": r.profile.name if r.profile else None,
             "format": r.profile.format if r.profile else None,
             "notes": list(r.profile.notes) if r.profile else [],
             "args_checked": r.args_checked,
             "error": r.error.message if r.error else None}
            for r in results
        ],
    }


# --------------------------------------------------------------------------- show
@dataclass(frozen=True)
class ProfileView:
    """What ``profiles show`` prints. ``build_view`` fills the profile's own parts; the fit and the
    exact llama-server command are added by the serve stage (``dataclasses.replace(view,
    fit=..., command=...)``) and printed when present."""

    profile: Profile
    model_file: Path | None  # the local GGUF, when there is one
    explanation: Any | None = None  # turboctl.kv.explain.Explanation on the local model
    explain_error: str | None = None
    fit: dict[str, Any] | None = None  # filled by the serve stage
    command: list[str] | None = None  # filled by the serve stage
    extra: dict[str, Any] = field(default_factory=dict)


def build_view(profile: Profile, model_file: Path | None = None) -> ProfileView:
    """The profile, its model source and KV recipe, and — when the model is a local file (the
    profile's ``model.path`` that exists, or ``model_file`` from the model cache) — the per-layer
    table of its recipe on that model."""
    from ..kv.explain import explain

    if model_file is None and profile.model.path is not None and profile.model.path.is_file():
        model_file = profile.model.path
    if model_file is None:
        return ProfileView(profile, None)
    ctx = profile.context if isinstance(profile.context, int) else None
    try:
        return ProfileView(profile, model_file, explanation=explain(profile.kv.recipe_text(), model_file, ctx))
    except TurboctlError as exc:
        return ProfileView(profile, model_file, explain_error=exc.message)


HIDDEN = "(set, not shown)"


def shown_environment(profile: Profile) -> dict[str, str]:
    """The profile's environment with the values of secret-looking names (…KEY, …TOKEN, …SECRET,
    …PASSWORD) hidden."""
    return {k: HIDDEN if SECRET_NAME.search(k) else v for k, v in profile.environment.items()}


def profile_json(profile: Profile) -> dict[str, Any]:
    doc = profile.model_dump(mode="json", exclude={"server": {"api_key"}})
    doc["server"]["api_key"] = HIDDEN if profile.server.api_key is not None else None
    doc["environment"] = shown_environment(profile)
    return doc


def view_json(view: ProfileView) -> dict[str, Any]:
    from ..kv.explain import to_json

    p = view.profile
    return {
        "schema": SCHEMA_SHOW,
        "turboctl_version": __version__,
        "profile": profile_json(p),
        "model_source": {"kind": p.model.kind, "text": p.model.describe(),
                         "local_file": str(view.model_file) if view.model_file else None},
        "kv": {"recipe": p.kv.recipe_text(), "llama_args": p.kv.recipe().llama_args()},
        "generation_args": p.generation.llama_args(),
        "notes": list(p.notes),
        "layers": to_json(view.explanation) if view.explanation is not None else None,
        "layers_error": view.explain_error,
        "fit": view.fit,
        "command": view.command,
        **view.extra,
    }


def render_view(view: ProfileView, ui: UI) -> None:
    from ..kv.explain import render

    p = view.profile
    s = p.server
    key = "api_key (set)" if s.api_key is not None else f"${s.api_key_env}" if s.api_key_env else "none"
    rows = [
        ("file", f"{p.origin} ({p.format} format)" if p.origin else p.format),
        ("description", " ".join(p.description.split()) or "-"),
        ("model", p.model.describe() + (f" ({p.model.name})" if p.model.name else "")),
    ]
    if p.model.sha256:
        rows.append(("model sha256", p.model.sha256))
    if p.model.url_sha256:
        rows.append(("url sha256", p.model.url_sha256))
    rows += [
        ("kv recipe", p.kv.recipe_text()),
        ("llama.cpp args", " ".join(p.kv.recipe().llama_args())),
        ("context", str(p.context)),
        ("listen", f"{s.host}:{s.port}, {s.parallel} slot{'s' if s.parallel > 1 else ''}, key {key}"),
    ]
    if s.batch_size is not None:
        rows.append(("batch size", str(s.batch_size)))
    if s.args:
        rows.append(("extra args", " ".join(s.args)))
    if gen := p.generation.llama_args():
        rows.append(("generation", " ".join(gen)))
    if p.environment:
        rows.append(("environment", " ".join(f"{k}={v}" for k, v in shown_environment(p).items())))
    ui.kv(f"profile {p.name}", rows)
    for note in p.notes:
        ui.info(f"note: {note}")
    if not s.loopback and s.api_key is None and s.api_key_env is None:
        ui.warn(f"the profile listens on {s.host} (beyond loopback) without an API key: serving it needs a key "
                "(or the explicit opt-out)")
    if view.explanation is not None:
        render(view.explanation, ui)
    elif view.explain_error:
        ui.warn(f"per-layer table: {view.explain_error}")
    elif p.model.path is not None:
        ui.info(f"per-layer table: the model file {p.model.path} does not exist")
    else:
        ui.info("per-layer table: the model is not a local file yet (it is resolved when the profile is served)")
    if view.fit is not None:
        ui.kv("fit", [(str(k), str(v)) for k, v in view.fit.items()])
    endpoint = view.extra.get("endpoint")
    if isinstance(endpoint, dict):
        apis = ("the Ollama API, the OpenAI API at /v1 and llama-server's routes (turboctl in front, "
                "llama-server behind it on a loopback port)" if endpoint.get("ollama_api") else "llama-server itself")
        ui.kv("endpoint", [("url", str(endpoint.get("url"))), ("answers", apis)])
    if view.command is not None:
        ui.command(view.command)
