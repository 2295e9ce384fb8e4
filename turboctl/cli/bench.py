"""``turboctl bench kld`` and ``turboctl bench speed``: parse options, plan, run, print."""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..bench import kld as kld_logic
from ..bench import memory as memory_logic
from ..bench import speed as speed_logic
from ..bench.common import write_json
from ..errors import UsageError
from ..models import fetch
from ..paths import Paths, get_paths
from ..preflight import current_build
from ..serve import catalog
from ..ui import UI
from .common import JsonOpt, handle_errors, start

app = typer.Typer(
    name="bench",
    help="Benchmark KV cache configurations: quality (kld), speed and memory.",
    no_args_is_help=True,
    add_completion=False,
)

ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="The GGUF model file.", show_default=False)]
KvOpt = Annotated[
    list[str] | None,
    typer.Option("--kv", help="A KV recipe: TYPE (K and V alike) or K/V, then optionally ;mode=N (a "
                              "TURBO_LAYER_ADAPTIVE mode), then optionally ;RULES (per-layer types), e.g. q4_0, "
                              "q8_0/turbo3 or 'turbo4/turbo3;0..1+-2..-1=q8_0' (see turboctl kv explain); repeat it "
                              "(or separate with commas) for several. Replaces the defaults.",
                 show_default=False),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", "-t", help="CPU threads (default: the number of CPUs).",
                             show_default=False)]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help="A profile name (turboctl profiles list) or file: its model, and its "
                                               "KV recipe joins the configurations.", show_default=False)]
OptModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help="The GGUF model file (or --profile).",
                                                  show_default=False)]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Also write the JSON document to this file.",
                              show_default=False)]


def finish(ui: UI, document: dict[str, Any], output: Path | None, json_out: bool,
           render: Callable[[], None]) -> None:
    """A bench command's end: the document to ``--output``, then the JSON or the human table."""
    if output is not None:
        write_json(output, document)
    if json_out:
        ui.emit_json(document)
    else:
        render()
        if output is not None:
            ui.ok(f"results: {output}")


@app.command("kld")
@handle_errors
def kld(
    model: ModelOpt,
    corpus: Annotated[Path, typer.Option("--corpus", "-f", help="The text to evaluate on.", show_default=False)],
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="Context size (tokens per chunk).")] = 2048,
    chunks: Annotated[
        int | None, typer.Option("--chunks", help="Evaluate only the first N chunks (default: the whole text).",
                                 show_default=False)] = None,
    threads: ThreadsOpt = None,
    kv: KvOpt = None,
    output: OutputOpt = None,
    keep_base: Annotated[
        bool, typer.Option("--keep-base", help="Keep the f16 base logits file (deleted by default).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """KL divergence of each KV configuration against f16 K/V (llama-perplexity).

    Default configurations (K/V): f16, q8_0, q4_0, iq4_nl, turbo4, turbo3, turbo2, q8_0/turbo3."""
    ui = start(json_out)
    paths = get_paths()
    m = current_build(paths)
    plan = kld_logic.make_plan(m, paths, model=model, corpus=corpus, ctx=ctx, chunks=chunks, threads=threads,
                               kv=kv or [], keep_base=keep_base)
    report = kld_logic.run(plan, ui)
    finish(ui, kld_logic.to_json(report, m), output, json_out, lambda: kld_logic.render(report, m, ui))


@app.command("speed")
@handle_errors
def speed(
    model: ModelOpt,
    kv: KvOpt = None,
    n_prompt: Annotated[int, typer.Option("-p", "--n-prompt", help="Prompt tokens per pp test.")] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", help="Generated tokens per tg test.")] = 128,
    depth: Annotated[str, typer.Option("--depth", "-d",
                                       help="KV depths (tokens already in the cache), comma-separated.")] = "0,4096",
    threads: ThreadsOpt = None,
    reps: Annotated[int, typer.Option("--reps", "-r", help="Repetitions per test.")] = 5,
    output: OutputOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Prompt and generation speed of each KV configuration (llama-bench, once per K/V pair).

    Default configurations: f16, q8_0, q4_0, turbo4, turbo3, turbo2 (K and V alike)."""
    ui = start(json_out)
    paths = get_paths()
    m = current_build(paths)
    plan = speed_logic.make_plan(m, paths, model=model, kv=kv or [], n_prompt=n_prompt, n_gen=n_gen,
                                 depth=depth, threads=threads, reps=reps)
    report = speed_logic.run(plan, ui)
    finish(ui, speed_logic.to_json(report, m), output, json_out, lambda: speed_logic.render(report, m, ui))


def model_and_profile(model: Path | None, profile: str | None, paths: Paths,
                      ui: UI) -> tuple[Path, list[str], tuple[str, ...]]:
    """``--model`` or ``--profile``: the model file, the profile's recipe (as a configuration) and
    the profile's llama-server arguments."""
    if (model is None) == (profile is None):
        raise UsageError("give either --model FILE.gguf or --profile NAME" if model is None else
                         "--profile and --model cannot be combined", hint="turboctl profiles list shows the profiles")
    if model is not None:
        return model, [], ()
    assert profile is not None
    prof = catalog.find_profile(profile)
    base = prof.origin.parent if prof.origin else None
    got = fetch.resolve_model(prof.model, paths, ui, base_dir=base)
    return got.path, [prof.kv.recipe_text()], tuple(prof.server.args) if prof.server else ()


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
    output: OutputOpt = None,
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
                                  extra_args=server_args)
    report = memory_logic.run(plan, m, paths, ui)
    finish(ui, memory_logic.to_json(report, m), output, json_out, lambda: memory_logic.render(report, m, ui))
