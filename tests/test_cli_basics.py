"""The frame every command shares: --version, --help with examples, one-line errors, --debug tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from cli_helpers import invoke
from mvit_cli.cli.main import app

COMMANDS = [["classify"], ["embed"], ["eval"], ["info"], ["bench"], ["export"], ["download"], ["import"],
            ["cache", "list"], ["cache", "clear"], ["explain"], ["serve"]]
MVIT = Path(sys.executable).with_name("mvit")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "MVIT_CACHE": str(tmp_path / "cache"),
            "HF_HUB_OFFLINE": "1", "MVIT_DEBUG": ""}


def test_version_is_the_installed_distributions():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"mvit {version('mvit-cli')}"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_examples(command):
    result = invoke(*command, "--help", terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "Examples" in result.stdout
    assert f"mvit {' '.join(command)}" in result.stdout  # the examples show the command itself


def test_every_registered_command_is_covered_here():
    import typer.main

    group = typer.main.get_command(app)
    names = set()
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None)
        names |= {f"{name} {sub}" for sub in subcommands} if subcommands else {name}
    assert names == {" ".join(c) for c in COMMANDS}


def test_unknown_option_is_a_usage_error_with_exit_1():
    result = invoke("classify", "x.jpg", "--no-such-option")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["mvit: error: no such option: --no-such-option (see 'mvit classify --help')"]


def test_user_error_is_one_line_on_stderr_without_traceback(tmp_path):
    missing = tmp_path / "nowhere.jpg"
    done = subprocess.run([str(MVIT), "classify", str(missing)], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=120)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mvit: error:") and str(missing) in lines[0]


def test_debug_flag_shows_the_traceback(tmp_path):
    missing = tmp_path / "nowhere.jpg"
    done = subprocess.run([str(MVIT), "--debug", "classify", str(missing)], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=120)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("mvit: error:")


def test_python_dash_m_runs_the_same_cli():
    done = subprocess.run([sys.executable, "-m", "mvit_cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"mvit {version('mvit-cli')}"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_defaults_named_in_option_help_are_shown(command):
    # rich reads "[default: ...]" in a help string as markup and silently drops it unless escaped.
    import re

    import typer.main

    group = typer.main.get_command(app)
    cli = group.commands[command[0]]
    if len(command) > 1:
        cli = cli.commands[command[1]]
    stated = [m.group(1) for p in cli.params for m in re.finditer(r"\[default: ([^\]]+)\]", p.help or "")]
    result = invoke(*command, "--help", terminal_width=400)
    shown = " ".join(result.stdout.replace("│", " ").split())
    for text in stated:
        assert f"default: {' '.join(text.split())}" in shown


def test_the_cli_choices_are_the_model_and_manifest_ones():
    """One source of truth: the --variant / --source choices come from the manifest, whose variants are the
    model's."""
    from mvit_cli import manifest
    from mvit_cli.cli import _options
    from mvit_cli.model import VARIANTS

    assert tuple(VARIANTS) == manifest.VARIANTS == tuple(v.value for v in _options.Variant)
    assert manifest.SOURCES == tuple(s.value for s in _options.WeightSource)
    assert [v.value for v in _options.VariantOrAll] == [*manifest.VARIANTS, "all"]
