"""The README's two newcomer commands stay true: CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fenced_after(marker: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(re.escape(marker) + r".*?```(?:sh|bash|console)?\n(.*?)```", readme, re.S)
    assert match, f"README has no code block after {marker!r}"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    test_command = _fenced_after("<!-- test-command -->")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_install_command_pins_the_cpu_torch_before_installing_mvit():
    # A bare torch requirement on a machine without torch pulls a multi-GB CUDA build.
    command = _fenced_after("<!-- install-command -->")
    assert command.index("pip install torch==2.13.0") < command.index("pip install .")
    assert "mvit classify" in command
