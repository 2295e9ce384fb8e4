"""The one output module.

* human mode: rich styling on a terminal, plain lines otherwise (no colours, no wrapping,
  no progress bars);
* JSON mode (``--json``): exactly one JSON document on stdout, human text on stderr.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text


class ProgressHandle:
    """Progress of one long step. On a terminal a rich bar; otherwise a plain line per 10 %."""

    def __init__(self, ui: UI, description: str, progress: Progress | None) -> None:
        self._ui = ui
        self._description = description
        self._progress = progress
        self._task = progress.add_task(description, total=None) if progress else None
        self._last_decile = -1

    def update(self, completed: float, total: float | None, text: str | None = None) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed, total=total)
            if text:
                self._progress.update(self._task, description=f"{self._description} {text}")
            return
        if not total:
            return
        decile = int(10 * completed / total)
        if decile > self._last_decile:
            self._last_decile = decile
            pct = 100 * completed / total
            self._ui.info(f"  {self._description}: {completed:.0f}/{total:.0f} ({pct:.0f} %)")


class UI:
    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        # file=None makes rich look up sys.stdout / sys.stderr at write time, so test
        # runners that swap the streams see the output.
        self.human = Console(stderr=json_mode, soft_wrap=True, highlight=False)
        self.err = Console(stderr=True, soft_wrap=True, highlight=False)
        self._json_emitted = False

    @property
    def is_tty(self) -> bool:
        return self.human.is_terminal

    # -- plain messages ------------------------------------------------------------------
    def info(self, message: str) -> None:
        if not self.quiet:
            self.human.print(escape(message))

    def step(self, message: str) -> None:
        if not self.quiet:
            self.human.print(f"[bold cyan]==>[/] [bold]{escape(message)}[/]")

    def ok(self, message: str) -> None:
        if not self.quiet:
            self.human.print(f"[green]ok[/] {escape(message)}")

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(message)}")

    def error(self, message: str, *, hint: str | None = None, log_path: Path | None = None,
              details: Sequence[str] = ()) -> None:
        self.err.print(f"[bold red]error:[/] {escape(message)}")
        if hint:
            self.err.print(f"[cyan]hint:[/] {escape(hint)}")
        if log_path:
            self.err.print(f"log: {escape(str(log_path))}")
        for line in details:
            self.err.print(f"  [dim]|[/] {escape(line)}")

    def command(self, args: Sequence[str], cwd: Path | None = None) -> None:
        if self.quiet:
            return
        text = shlex.join(args)
        where = f"  (in {cwd})" if cwd else ""
        self.human.print(f"[dim]$ {escape(text)}{escape(where)}[/]")

    # -- structured output ---------------------------------------------------------------
    def kv(self, title: str, rows: Sequence[tuple[str, str]]) -> None:
        if self.quiet:
            return
        self.step(title)
        width = max((len(k) for k, _ in rows), default=0)
        for key, value in rows:
            self.human.print(f"  [bold]{escape(key.ljust(width))}[/]  {escape(value)}")

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
              row_styles: Sequence[str] | None = None) -> None:
        if self.quiet:
            return
        if self.is_tty:
            table = Table(title=title, title_justify="left")
            for col in columns:
                table.add_column(col, overflow="fold")
            for i, row in enumerate(rows):
                table.add_row(*(Text(cell) for cell in row),
                              style=row_styles[i] if row_styles else None)
            self.human.print(table)
            return
        self.human.print(escape(title))
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        for row in [list(columns), *[list(r) for r in rows]]:
            cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
            self.human.print(escape("  ".join(cells).rstrip()))

    @property
    def json_emitted(self) -> bool:
        return self._json_emitted

    def emit_json(self, document: Any) -> None:
        """Write THE JSON document of this command to stdout (once)."""
        if self._json_emitted:
            raise RuntimeError("a command emits exactly one JSON document")
        self._json_emitted = True
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()

    @contextmanager
    def progress(self, description: str) -> Iterator[ProgressHandle]:
        if self.is_tty and not self.quiet:
            bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.human,
                transient=False,
            )
            with bar:
                yield ProgressHandle(self, description, bar)
        else:
            yield ProgressHandle(self, description, None)

    @contextmanager
    def spinner(self, description: str, every: float = 10.0) -> Iterator[SpinnerHandle]:
        if self.is_tty and not self.quiet:
            with self.human.status(escape(description)) as status:
                yield SpinnerHandle(self, description, status, every)
        else:
            yield SpinnerHandle(self, description, None, every if not self.quiet else float("inf"))


class SpinnerHandle:
    """A wait of unknown length: a rich spinner on a terminal, a plain line every ``every``
    seconds otherwise (so logs show it is still waiting, without a line per poll)."""

    def __init__(self, ui: UI, description: str, status: Any, every: float) -> None:
        self._ui = ui
        self._description = description
        self._status = status
        self._every = every
        self._next = every

    def update(self, elapsed: float, text: str = "") -> None:
        label = f"{self._description} ({elapsed:.0f} s){' ' + text if text else ''}"
        if self._status is not None:
            self._status.update(escape(label))
        elif elapsed >= self._next:
            self._next += self._every
            self._ui.info(f"  {label}")


_current: UI | None = None


def get_ui() -> UI:
    global _current
    if _current is None:
        _current = UI()
    return _current


def set_ui(ui: UI) -> UI:
    global _current
    _current = ui
    return ui
