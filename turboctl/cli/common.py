"""Options shared by commands, and the error → message → exit-code mapping."""

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from ..errors import EXIT_INTERRUPTED, TurboctlError
from ..ui import UI, get_ui, set_ui

DEBUG_ENV = "TURBOCTL_DEBUG"

JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document on stdout (human text goes to stderr)."),
]

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no")


def start(json_mode: bool) -> UI:
    """Set up output for one command invocation."""
    return set_ui(UI(json_mode=json_mode))


def exit_with(exc: TurboctlError) -> NoReturn:
    """Print the error and exit with its code, without a JSON error document (for commands
    that already emitted their one JSON document and still must fail)."""
    if debug_enabled():
        raise exc
    get_ui().error(exc.message, hint=exc.hint, log_path=exc.log_path, details=exc.details)
    raise typer.Exit(exc.exit_code)


def handle_errors(fn: F) -> F:
    """Turn TurboctlError into a short message and its exit code (traceback only in debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TurboctlError as exc:
            if debug_enabled():
                raise
            ui = get_ui()
            ui.error(exc.message, hint=exc.hint, log_path=exc.log_path, details=exc.details)
            # a command that already printed its document (serve --json, once ready) reports a
            # later failure on stderr and by its exit code only: stdout holds one document
            if ui.json_mode and not ui.json_emitted:
                ui.emit_json({"schema": "turboctl.error/1", **exc.to_dict()})
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            get_ui().error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]
