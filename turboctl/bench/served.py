"""The served run shared by ``bench prompts``, ``bench long-session``, ``bench niah`` and
``bench memory``: one llama-server per configuration, started the way ``turboctl serve
--direct`` starts it (:func:`turboctl.serve.request.prepare` then
:func:`turboctl.serve.launch.start`: the build, the model, the gate, the fit and the log check of
the per-layer KV types and bytes), asked through its own HTTP API at temperature 0.

Generation goes through ``POST /completion`` with ``return_tokens`` so that the generated token
ids come back with the text; a chat is first turned into its prompt by the model's template
(``POST /apply-template``) and then completed the same way. When the server exits while a
benchmark runs, the request fails and :class:`ServerDied` names the configuration and the log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from .. import proc
from ..build.manifest import Manifest
from ..errors import BenchError, ServerFailed
from ..kv.recipe import RecipePlan
from ..paths import Paths
from ..serve import launch
from ..serve import request as request_mod
from ..ui import UI
from . import common

HOST = "127.0.0.1"
REQUEST_TIMEOUT_S = 1800.0
STOP_REASONS = ("eos", "limit", "word")


class ServerDied(ServerFailed):
    """llama-server exited while a benchmark was using it (what was measured before is kept by
    the caller)."""


@dataclass(frozen=True)
class Completion:
    """One generation at temperature 0, as llama-server returned it."""

    text: str
    tokens: list[int]      # the generated token ids
    n_prompt: int          # prompt tokens evaluated (tokens_evaluated)
    n_predicted: int       # tokens generated (tokens_predicted)
    stop_reason: str       # "eos" | "limit" | "word"
    timings: dict[str, Any]


def parse_completion(doc: Any) -> Completion:
    """A ``/completion`` response (``return_tokens`` set) as a :class:`Completion`; ValueError
    naming what is missing or malformed (no figure is ever defaulted)."""
    if not isinstance(doc, dict):
        raise ValueError("the response is not a JSON object")
    for key in ("content", "tokens", "tokens_evaluated", "tokens_predicted", "stop_type", "timings"):
        if key not in doc:
            raise ValueError(f"the response has no {key!r}")
    text, tokens, timings = doc["content"], doc["tokens"], doc["timings"]
    if not isinstance(text, str):
        raise ValueError("'content' is not a string")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise ValueError("'tokens' is not a list of token ids")
    n_prompt, n_predicted = doc["tokens_evaluated"], doc["tokens_predicted"]
    if not isinstance(n_prompt, int) or not isinstance(n_predicted, int):
        raise ValueError("'tokens_evaluated' / 'tokens_predicted' are not integers")
    stop = doc["stop_type"]
    if stop not in STOP_REASONS:
        raise ValueError(f"'stop_type' is {stop!r}, expected one of {', '.join(STOP_REASONS)}")
    if not isinstance(timings, dict):
        raise ValueError("'timings' is not a JSON object")
    if len(tokens) != n_predicted:
        raise ValueError(f"{len(tokens)} token ids for {n_predicted} tokens predicted")
    return Completion(text=text, tokens=list(tokens), n_prompt=n_prompt, n_predicted=n_predicted,
                      stop_reason=str(stop), timings=dict(timings))


class BenchServer:
    """``with BenchServer(m, paths, model, "turbo4", 2048, ui) as s: s.complete(...)``.

    The server listens on a free loopback port (no API key: loopback only). ``extra_args`` are
    appended to llama-server's command line (e.g. ``--no-repack``); they are not part of the fit
    projection, so pass only arguments that do not change memory."""

    def __init__(self, m: Manifest, paths: Paths, model: Path, recipe_text: str, context: int, ui: UI, *,
                 parallel: int = 1, extra_args: Sequence[str] = ()) -> None:
        self.manifest = m
        self.paths = paths
        self.model = model
        self.recipe_text = recipe_text
        self.context = context
        self.ui = ui
        self.parallel = parallel
        self.extra_args = tuple(extra_args)
        self.log = common.log_path(paths, f"bench-server-{recipe_text.replace('/', '-').replace(';', '_')}"[:80])
        self._running: launch.RunningServer | None = None
        self._session: requests.Session | None = None
        self._plan: launch.ServePlan | None = None

    # ------------------------------------------------------------------ lifecycle
    def prepare(self) -> launch.ServePlan:
        """The serve plan (every refusal: the gate, the model, the fit), without starting anything."""
        if self._plan is None:
            req = request_mod.ServeRequest(model=self.model, kv=self.recipe_text, context=self.context,
                                           host=HOST, port=launch.free_loopback_port(), parallel=self.parallel,
                                           direct=True, no_build=True)
            p = request_mod.prepare(req, self.paths, self.ui)
            if self.extra_args:
                settings = replace(p.settings, extra_args=(*p.settings.extra_args, *self.extra_args))
                p = launch.make_serve_plan(settings, Path(p.argv[0]), plan=p.plan, info=p.info,
                                           context_source=p.context_source, budget=p.budget,
                                           projection=p.projection, notes=p.notes, front=p.front,
                                           backend=p.backend, details=p.details)
            self._plan = p
        return self._plan

    def __enter__(self) -> BenchServer:
        p = self.prepare()
        self._running = launch.start(p, self.log, self.ui)
        self._session = requests.Session()
        self._session.trust_env = False  # loopback: never through a proxy from the environment
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> int | None:
        """Stop the server (and close the HTTP session); its exit code, None when it never started."""
        code = None
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._running is not None:
            code = self._running.stop()
            self._running = None
        return code

    @property
    def plan(self) -> launch.ServePlan:
        return self.prepare()

    @property
    def recipe_plan(self) -> RecipePlan:
        rp = self.plan.plan
        assert rp is not None  # prepare() with a build and a model always resolves the recipe
        return rp

    @property
    def url(self) -> str:
        return self._require().url

    @property
    def pid(self) -> int:
        return self._require().child.pid

    @property
    def label(self) -> str:
        return self.plan.settings.recipe.label

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def _require(self) -> launch.RunningServer:
        if self._running is None:
            raise RuntimeError("the bench server is not running (use it as a context manager)")
        return self._running

    # ------------------------------------------------------------------ requests
    def _died(self, code: int, what: str) -> ServerDied:
        running = self._require()
        lines = running.log_text().splitlines()
        return ServerDied(f"llama-server for {self.label} exited (code {code}) during {what}; its log: {self.log}",
                          log_path=self.log, details=proc.relevant_lines(lines),
                          hint="what was measured before it is kept; the log says why it stopped")

    def _post(self, route: str, body: Mapping[str, Any], what: str) -> Any:
        running = self._require()
        assert self._session is not None
        code = running.child.poll()
        if code is not None:
            raise self._died(code, what)
        try:
            r = self._session.post(f"{running.url}{route}", json=dict(body), timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as exc:
            code = running.child.wait(timeout=5)
            if code is not None:
                raise self._died(code, what) from None
            raise BenchError(f"llama-server for {self.label}: {route} failed during {what}: {exc}",
                             log_path=self.log) from None
        if r.status_code != 200:
            code = running.child.poll()
            if code is not None:
                raise self._died(code, what)
            raise BenchError(f"llama-server for {self.label}: {route} answered HTTP {r.status_code} during {what}: "
                             f"{r.text[:300]}", log_path=self.log)
        try:
            return r.json()
        except ValueError:
            raise BenchError(f"llama-server for {self.label}: {route} answered something that is not JSON "
                             f"during {what}: {r.text[:300]}", log_path=self.log) from None

    def complete(self, prompt: str, *, n_predict: int, seed: int = 0, cache_prompt: bool = False) -> Completion:
        """The raw prompt completed at temperature 0 (no template applied). ``cache_prompt``
        lets llama-server reuse the KV of the previous request's common prefix (a long session:
        each turn's prompt extends the previous one; the reused cells were written by the same
        configuration, so the figures stay this configuration's)."""
        if n_predict < 1:
            raise ValueError("n_predict must be at least 1")
        body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0.0, "seed": seed,
                "return_tokens": True, "cache_prompt": cache_prompt, "stream": False}
        doc = self._post("/completion", body, "a completion")
        try:
            return parse_completion(doc)
        except ValueError as exc:
            raise BenchError(f"llama-server for {self.label}: unusable /completion response: {exc}",
                             log_path=self.log) from None

    def apply_template(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt the model's chat template makes of ``messages`` (generation prompt added)."""
        doc = self._post("/apply-template", {"messages": [dict(x) for x in messages]}, "applying the chat template")
        if not isinstance(doc, dict) or not isinstance(doc.get("prompt"), str):
            raise BenchError(f"llama-server for {self.label}: /apply-template returned no prompt", log_path=self.log)
        return str(doc["prompt"])

    def chat(self, messages: Sequence[Mapping[str, str]], *, n_predict: int, seed: int = 0,
             cache_prompt: bool = False) -> Completion:
        """A chat turn at temperature 0: the template applied by the server, then :meth:`complete`."""
        return self.complete(self.apply_template(messages), n_predict=n_predict, seed=seed, cache_prompt=cache_prompt)

    def tokenize(self, text: str) -> list[int]:
        """The model's tokens of ``text`` (no special tokens added)."""
        doc = self._post("/tokenize", {"content": text, "add_special": False}, "tokenizing")
        tokens = doc.get("tokens") if isinstance(doc, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise BenchError(f"llama-server for {self.label}: /tokenize returned no token list", log_path=self.log)
        return list(tokens)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (the model's own detokenizer)."""
        doc = self._post("/detokenize", {"tokens": list(tokens)}, "detokenizing")
        content = doc.get("content") if isinstance(doc, dict) else None
        if not isinstance(content, str):
            raise BenchError(f"llama-server for {self.label}: /detokenize returned no text", log_path=self.log)
        return content
