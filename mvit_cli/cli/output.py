"""Where output goes: results on stdout, progress and diagnostics on stderr.

Machine formats (json, jsonl, csv) are written as plain text to stdout (or --output), never through rich,
so they stay clean enough to pipe: no colour, no wrapping, no progress bars mixed in.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Callable, TextIO

from rich.console import Console


# A console that is not a terminal (a file, a pipe) has no width: rich would assume 80 columns and cut paths,
# labels, hashes and error lines to fit them. Output meant for a file keeps every character instead.
UNBOUNDED_WIDTH = 100_000


def stdout_console(file: TextIO | None = None) -> Console:
    """Rich console for human output on stdout (or `file`): the terminal's width, or unbounded when redirected."""
    stream = file or sys.stdout
    console = Console(file=stream, soft_wrap=False)
    if not console.is_terminal:
        console = Console(file=stream, soft_wrap=False, width=UNBOUNDED_WIDTH)
    return console


def stderr_console() -> Console:
    return Console(file=sys.stderr, stderr=True)


# C0 controls (ESC, BEL, newline, carriage return, backspace ...), DEL and the C1 controls (0x80-0x9f, which some
# terminals also obey, e.g. 0x9b is CSI). A file name may hold any of them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters shown as escapes (\\n, \\x1b), never sent as such.

    A file name like "a\\x1b]52;c;...\\x07.jpg" would otherwise write the clipboard when printed, "\\x1b[31m"
    recolour the screen, and a newline split a table row. JSON and CSV escape them by their own rules."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def warn(message: str) -> None:
    """One diagnostic line on stderr (not an error: the run goes on); control characters escaped."""
    print(f"mvit: {printable(message)}", file=sys.stderr, flush=True)


def write_json(obj: Any, file: TextIO | None = None) -> None:
    out = file or sys.stdout
    json.dump(obj, out, indent=2, ensure_ascii=False)
    out.write("\n")
    out.flush()


def progress_enabled() -> bool:
    """Progress bars only when a person is watching stderr."""
    return sys.stderr.isatty()


class Output:
    """What one command prints on stdout: for people (lines and rich tables) or for programs (one JSON document).

    Every command builds its result as JSON-ready data, then hands it to `emit` with a function that renders it
    for people: the choice between the two is made here, once, for every command.
    """

    def __init__(self, fmt: str = "table"):
        self.json = fmt == "json"
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = stdout_console()
        return self._console

    def emit(self, data: Any, render: Callable[[Any], None]) -> None:
        """`data` as JSON, or `render(data)` for people."""
        if self.json:
            write_json(data)
        else:
            render(data)

    def line(self, text: str) -> None:
        """One line for people: printed as it is (no markup, no highlighting), control characters escaped."""
        self.console.print(printable(text), markup=False, highlight=False, soft_wrap=True)

    def print(self, renderable: Any) -> None:
        """A rich table (or any renderable) for people."""
        self.console.print(renderable)


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


class ProgressBar:
    """One progress bar on stderr, for every command: transient, drawn only when `enabled` (someone watches),
    a no-op otherwise. `columns` are extra rich text columns (e.g. "top-1 {task.fields[top1]:6.2f} %") whose
    `fields` start at the given values and change with `update`."""

    def __init__(self, label: str, total: int | None = None, enabled: bool = True, columns: tuple[str, ...] = (),
                 **fields: Any):
        self.label, self.total, self.enabled, self.columns, self.fields = label, total, enabled, columns, fields
        self._bar = None

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                *(TextColumn(column) for column in self.columns), TimeElapsedColumn(),
                console=stderr_console(), transient=True, redirect_stdout=False, redirect_stderr=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, **self.fields)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    @property
    def console(self) -> Console | None:
        """The bar's console: on a shared terminal, rich prints above a live bar only through it."""
        return None if self._bar is None else self._bar.console

    @property
    def elapsed(self) -> float:
        return 0.0 if self._bar is None else (self._bar.tasks[0].elapsed or 0.0)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def update(self, completed: int | None = None, total: int | None = None, **fields: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=total, **fields)
