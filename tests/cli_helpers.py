"""The two ways the tests run mvit: in-process through typer's CliRunner (`invoke`: what the installed `mvit`
does, minus a process start), and as a real subprocess of the installed console script (`mvit`: signals,
special files, environment, exit codes as a shell sees them). One of each, shared by every test module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from mvit_cli.cli.main import app

MVIT = Path(sys.executable).with_name("mvit")


def invoke(*args: Any, code: int | None = None, **kwargs: Any):
    """`mvit ARGS...` in this process (arguments may be paths); with `code`, its exit code is asserted."""
    result = CliRunner().invoke(app, [os.fsdecode(a) if isinstance(a, (Path, bytes)) else str(a) for a in args],
                                **kwargs)
    if code is not None:
        assert result.exit_code == code, result.output
    return result


def mvit(*args: Any, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """`mvit ARGS...` as a real process (bytes out, unless text=True is given)."""
    return subprocess.run([str(MVIT), *map(os.fsdecode, args)], capture_output=True, timeout=timeout, **kwargs)
