"""Ollama's HTTP API in front of llama-server: a small async proxy (aiohttp server + client).

llama-server b11312 speaks the OpenAI API and its own; upstream removed its few ``/api`` routes
and will not carry Ollama's. This proxy answers Ollama clients as they are and translates to
llama-server's OpenAI routes (``/v1/chat/completions``, ``/v1/completions``): the request
options to llama-server's sampling, the response to Ollama's NDJSON stream (or one object)
with durations from llama-server's own ``timings``. Every other path (``/v1/*``, ``/health``,
``/props``, ``/slots``, ``/metrics``, ``/tokenize``, ``/completion``, ``/v1/messages``, ...) goes
to llama-server unchanged, streamed, so the endpoint is a superset of llama-server's; only
``GET``/``HEAD /`` ("Ollama is running") and ``/api/*`` are the proxy's own. Every answer
carries the header ``X-Turboctl: <turboctl version>`` (see :func:`probe`).

``make_app(upstream, models)`` builds the application; ``run_proxy(app, host, port)`` serves it
on a thread with its own event loop and returns a handle with ``.stop()``.

The package by concern: :mod:`.common` (the served models, errors, what every route shares),
:mod:`.options` (Ollama's options to llama-server's sampling), :mod:`.chat` (chat and generate),
:mod:`.embed` (embeddings), :mod:`.app` (the routes, the passthrough, the key, the proxy's
thread), :mod:`.probe` (who holds a port).
"""

from .app import MANAGEMENT_ROUTES, OLLAMA_VERSION, ProxyHandle, make_app, run_proxy
from .common import DETAIL_KEYS, PUBLIC_PATHS, TURBOCTL_HEADER, OllamaError, ServedModel, served_model
from .options import JSON_OBJECT_GRAMMAR, OPTION_TYPES, OPTIONS, option_table_markdown
from .probe import Probe, probe

__all__ = ["DETAIL_KEYS", "JSON_OBJECT_GRAMMAR", "MANAGEMENT_ROUTES", "OLLAMA_VERSION", "OPTIONS", "OPTION_TYPES",
           "PUBLIC_PATHS", "TURBOCTL_HEADER", "OllamaError", "Probe", "ProxyHandle", "ServedModel", "make_app",
           "option_table_markdown", "probe", "run_proxy", "served_model"]
