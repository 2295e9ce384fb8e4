"""Ollama's ``options`` (and ``format``) mapped to llama-server's sampling fields: the complete
table (:data:`OPTIONS`, rendered into the README), type checks with Ollama's messages, the
served context as the limit of ``num_ctx``."""

from __future__ import annotations

import json
import logging
from typing import Any

from .common import OllamaError, ServedModel

#: Every option Ollama or its official clients know (``options`` of /api/chat and /api/generate),
#: and what the proxy does with it: the llama-server field it is sent as (b11312's
#: /v1/chat/completions and /v1/completions take them all), or why it is not sent. An option
#: that is not here is ignored and logged once per name, as Ollama does ("invalid option provided").
OPTIONS: dict[str, str] = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
    "num_predict": "max_tokens",
    "num_keep": "n_keep",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "num_ctx": "checked: more than the served context is refused (400); not sent, the context is the profile's",
    "num_batch": "ignored: set when the server starts (the profile's server.args -b/-ub)",
    "num_gpu": "ignored: GPU offload is set when the server starts (the profile's fit)",
    "main_gpu": "ignored: set when the server starts (the profile's server.args)",
    "num_thread": "ignored: set when the server starts (the profile's server.args -t)",
    "use_mmap": "ignored: set when the server starts (the profile's server.args)",
    "use_mlock": "ignored: set when the server starts (the profile's server.args)",
    "numa": "ignored: set when the server starts (the profile's server.args)",
    "low_vram": "ignored: set when the server starts (the profile's fit)",
    "f16_kv": "ignored: the K/V cache types are the profile's",
    "vocab_only": "ignored: a load-time option of old Ollama versions",
    "logits_all": "ignored: a load-time option of old Ollama versions",
    "embedding_only": "ignored: a load-time option of old Ollama versions",
    "draft_num_predict": "ignored: no draft model is served",
    "tfs_z": "ignored: tail-free sampling was removed from llama.cpp (and from Ollama)",
    "penalize_newline": "ignored: removed from llama.cpp (and from Ollama)",
}

#: The type of each option that is sent or checked (Ollama's: an integer may come as a float,
#: it is truncated; a float may come as an integer).
OPTION_TYPES: dict[str, str] = {
    "temperature": "float", "top_k": "integer", "top_p": "float", "min_p": "float", "typical_p": "float",
    "repeat_penalty": "float", "repeat_last_n": "integer", "presence_penalty": "float",
    "frequency_penalty": "float", "seed": "integer", "stop": "array", "num_predict": "integer",
    "num_keep": "integer", "mirostat": "integer", "mirostat_tau": "float", "mirostat_eta": "float",
    "num_ctx": "integer"}

log = logging.getLogger("turboctl.serve.ollama")


def option_table_markdown() -> str:
    """OPTIONS as a Markdown table (for the README)."""
    rows = ["| Ollama option | llama-server |", "|---|---|"]
    for name, how in OPTIONS.items():
        rows.append(f"| `{name}` | {how if ':' in how else f'`{how}`'} |")
    return "\n".join(rows) + "\n"

# A GBNF grammar for one JSON object (format: "json"); llama-server b11312 does not constrain a
# schema without properties (``{"type": "object"}``) on its chat route, a grammar it does.
JSON_OBJECT_GRAMMAR = r"""
root   ::= ws object ws
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( member ( ws "," ws member )* )? ws "}"
member ::= string ws ":" ws value
array  ::= "[" ws ( value ( ws "," ws value )* )? ws "]"
string ::= "\"" ( [^"\\\x00-\x1f] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws     ::= [ \t\n]{0,20}
"""



# --- chat and generate ------------------------------------------------------------------------

def _option_value(name: str, value: object) -> Any:
    kind = OPTION_TYPES[name]
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OllamaError(400, f'option "{name}" must be of type integer')
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OllamaError(400, f'option "{name}" must be of type float32')
        return float(value)
    if not isinstance(value, list):
        raise OllamaError(400, f'option "{name}" must be of type array')
    if not all(isinstance(x, str) for x in value):
        raise OllamaError(400, f'option "{name}" must be of an array of strings')
    return value


def _options(body: dict[str, Any], m: ServedModel, warned: set[str]) -> dict[str, Any]:
    """The request's options and format as llama-server fields (OPTIONS says which)."""
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise OllamaError(400, "options must be a JSON object")
    out: dict[str, Any] = {}
    for name, raw in opts.items():
        how = OPTIONS.get(name)
        if how is None:
            if name not in warned:
                warned.add(name)
                log.warning("option %r is not an Ollama option: ignored (as Ollama does; logged once)", name)
            continue
        if raw is None or how.startswith("ignored:"):
            continue
        value = _option_value(name, raw)
        if name == "num_ctx":
            if value > m.context:
                raise OllamaError(400, f"num_ctx {value} is larger than the context model '{m.name}' is served "
                                  f"with ({m.context} tokens): the context is set by the profile (context:); "
                                  "raise it there and restart turboctl serve, or ask for at most that")
        elif name == "num_predict":
            if value >= 0:  # -1: no limit, -2: until the context is full -- llama-server's default
                out[how] = value
        else:
            out[how] = value
    fmt = body.get("format")
    if fmt == "json":
        out["grammar"] = JSON_OBJECT_GRAMMAR
    elif isinstance(fmt, dict):
        if fmt.get("type") == "object" and not fmt.get("properties"):
            out["grammar"] = JSON_OBJECT_GRAMMAR
        else:
            out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    elif fmt not in (None, ""):
        raise OllamaError(400, f"format must be \"json\" or a JSON schema object, not {json.dumps(fmt)[:80]}")
    return out


def _no_images(obj: dict[str, Any]) -> None:
    if obj.get("images"):
        raise OllamaError(400, "images are not supported: the served model is text-only (no multimodal "
                          "projector is loaded)")
