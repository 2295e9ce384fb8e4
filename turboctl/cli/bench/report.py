"""``turboctl bench report DIR DOC.json ...``: a report made again from saved documents."""

from pathlib import Path
from typing import Annotated

import typer

from ...bench import report as report_logic
from ...errors import UsageError
from ..common import JsonOpt, handle_errors, start
from .options import app

SCHEMA = "turboctl.bench.report/1"


@app.command("report")
@handle_errors
def report(
    out_dir: Annotated[Path, typer.Argument(metavar="DIR", show_default=False,
                                            help="The directory to write report.md, its plots and data/ into.")],
    documents: Annotated[list[Path] | None, typer.Argument(metavar="DOC.json...",
        help="JSON documents of turboctl bench commands (--output), a bench all document included.",
        show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Render a markdown report with PNG plots from saved bench documents.

    DIR gets report.md, the plots (*.png) and the documents (data/*.json); a report that fails
    to render leaves DIR as it was."""
    ui = start(json_out)
    if not documents:
        raise UsageError("no documents to report: give one or more JSON files after DIR",
                         hint="turboctl bench kld/speed/memory/all ... --output FILE.json writes them")
    docs = [report_logic.load_document(path) for path in documents]
    written = report_logic.write_report(out_dir, docs)
    if json_out:
        ui.emit_json({"schema": SCHEMA, "report": str(written.report), "plots": [str(p) for p in written.plots],
                      "documents": [str(d) for d in written.documents]})
    else:
        ui.ok(f"report: {written.report} ({len(written.plots)} plot(s), {len(written.documents)} document(s))")
