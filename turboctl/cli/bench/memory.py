"""``turboctl bench memory``: KV bytes per configuration and context, from llama-server's log."""

from typing import Annotated

import typer

from ...bench import memory as memory_logic
from ...bench.common import with_no_repack
from ...paths import get_paths
from ...preflight import current_build
from ..common import JsonOpt, handle_errors, start
from .options import (
    KvOpt,
    NoRepackOpt,
    OptModelOpt,
    OutputOpt,
    ProfileOpt,
    ReportOpt,
    app,
    finish,
    model_and_profile,
)


@app.command("memory")
@handle_errors
def memory(
    model: OptModelOpt = None,
    profile: ProfileOpt = None,
    kv: KvOpt = None,
    ctx_list: Annotated[
        str | None, typer.Option("--ctx-list", help="Contexts to measure, comma-separated (default: 1024, 2048, "
                                                    "4096 up to the model's training context, plus the training "
                                                    "context when it fits).", show_default=False)] = None,
    no_repack: NoRepackOpt = False,
    output: OutputOpt = None,
    report: ReportOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """KV cache bytes per configuration and context, read from llama-server's own log and
    compared with the bits/value arithmetic; and the largest context that fits this machine.

    One llama-server starts per configuration and context (results are cached: a rerun only
    measures what is missing). Default configurations: f16, turbo4, turbo3 (and the profile's)."""
    ui = start(json_out)
    paths = get_paths()
    m = current_build(paths)
    model_path, extra_kv, server_args = model_and_profile(model, profile, paths, ui)
    plan = memory_logic.make_plan(m, paths, ui, model=model_path, kv=kv or [], ctx_list=ctx_list, extra_kv=extra_kv,
                                  extra_args=with_no_repack(server_args, no_repack))
    result = memory_logic.run(plan, m, paths, ui)
    finish(ui, memory_logic.to_json(result, m), output, json_out, lambda: memory_logic.render(result, m, ui), report)
