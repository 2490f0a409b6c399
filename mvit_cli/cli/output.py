"""Where output goes: results on stdout, progress and diagnostics on stderr.

Machine formats (json, jsonl, csv) are written as plain text to stdout (or --output), never through rich,
so they stay clean enough to pipe: no colour, no wrapping, no progress bars mixed in.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from rich.console import Console


def stdout_console(file: TextIO | None = None) -> Console:
    return Console(file=file or sys.stdout, soft_wrap=False)


def stderr_console() -> Console:
    return Console(file=sys.stderr, stderr=True)


def warn(message: str) -> None:
    """One diagnostic line on stderr (not an error: the run goes on)."""
    print(f"mvit: {message}", file=sys.stderr, flush=True)


def write_json(obj: Any, file: TextIO | None = None) -> None:
    out = file or sys.stdout
    json.dump(obj, out, indent=2, ensure_ascii=False)
    out.write("\n")
    out.flush()


def progress_enabled() -> bool:
    """Progress bars only when a person is watching stderr."""
    return sys.stderr.isatty()
