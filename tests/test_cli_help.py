"""Every help page reads right at 80 and 120 columns, and every command-line mistake is one `mvit: error:` line.

The pages are rendered through the click group (every command and subcommand it has, none listed by hand), so a
new command and a new typer release are checked alike: typer's own artefacts (`<bool>`, `<list[str]>`,
`<int range> [x>=1]`, `{DIR}`), hard line breaks from the docstrings, text cut with "…", wrapped examples.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest
import typer.main

from cli_helpers import invoke
from mvit_cli.cli.main import app

WIDTHS = (80, 120)
ARTEFACTS = ("<bool>", "<list[", "range>", "<int", "<float", "<path>", "<file>", "<dir>", "<text>", "x>=", "x<=",
             "Value error", "Input should be", "…")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _walk(command, path):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, [*path, name])


PAGES = list(_walk(typer.main.get_command(app), []))
COMMANDS = [(path, command) for path, command in PAGES if not hasattr(command, "commands")]


def _page_id(page) -> str:
    return " ".join(["mvit", *page[0]])


def render(path: list[str], width: int) -> str:
    result = invoke(*path, "--help", env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.stdout)


def description(page: str) -> list[str]:
    """The lines between the usage line and the first panel: the command's own help text."""
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
    return lines[start:end]


def panels(page: str) -> dict[str, list[str]]:
    """Title -> the body lines of each boxed panel (Arguments, Options, Commands)."""
    found: dict[str, list[str]] = {}
    body = None
    for line in page.splitlines():
        if line.startswith("╭"):
            body = found.setdefault(line.strip("╭─╮ ").strip(), [])
        elif line.startswith("╰"):
            body = None
        elif body is not None:
            body.append(line)
    return found


def examples_in_docstring(command) -> list[str]:
    """The example command lines as the command's docstring writes them (independent of the help machinery)."""
    doc = inspect.getdoc(command.callback.__wrapped__ if hasattr(command.callback, "__wrapped__")
                         else command.callback) or ""
    _, _, after = doc.partition("Examples:")
    return [" ".join(line.split()) for line in after.splitlines() if line.strip()]


def test_the_pages_cover_every_command_and_subcommand():
    names = {" ".join(path) for path, _ in PAGES}
    assert {"", "classify", "eval", "cache", "cache list", "cache clear"} <= names


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_no_typer_artefacts_and_nothing_cut(page, width):
    text = render(page[0], width)
    for artefact in ARTEFACTS:
        assert artefact not in text, f"{artefact!r} in:\n{text}"
    usage = [line for line in text.splitlines() if line.strip().startswith("Usage:")]
    assert len(usage) == 1 and not re.search(r"[{}]", usage[0]), usage
    assert max(len(line) for line in text.splitlines()) <= width or "Examples:" in text


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_paragraphs_are_wrapped_by_the_terminal_width_not_broken_mid_sentence(page, width):
    # rich wraps greedily inside a one-column padding on each side: a line that ends while the next line's first
    # word would still have fit on it was broken by a newline in the source text.
    room = width - 2
    lines = [line.rstrip() for line in description(render(page[0], width))]
    for line, following in zip(lines, lines[1:]):
        if not line.strip() or not following.strip() or following.startswith("   "):
            continue
        assert len(line) - 1 + 1 + len(following.split()[0]) > room, f"broken early:\n{line}\n{following}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_each_option_and_command_is_one_row_when_there_is_room(page):
    # At 400 columns nothing needs wrapping: a second line in a row can only come from a hard break in its text.
    path, command = page
    text = render(path, 400)
    found = panels(text)
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    assert len(found.get("Arguments", [])) == len(arguments)
    assert len(found["Options"]) == len(options) + 1  # and -h/--help
    subcommands = [c for c in getattr(command, "commands", {}).values() if not c.hidden]
    assert len(found.get("Commands", [])) == len(subcommands)


@pytest.mark.parametrize("page", COMMANDS, ids=_page_id)
def test_examples_are_whole_lines_at_80_columns(page):
    path, command = page
    expected = examples_in_docstring(command)
    assert expected, "every command shows examples"
    shown = [" ".join(line.split()) for line in render(path, 80).splitlines()]
    for example in expected:
        assert example in shown, f"{example!r} is not one line of the help"


@pytest.mark.parametrize("page", COMMANDS, ids=_page_id)
def test_every_command_lists_its_exit_codes(page):
    text = " ".join(" ".join(description(render(page[0], 120))).split())
    codes = re.search(r"Exit codes: ([^.]*)", text)
    assert codes, text
    for code, meaning in (("0", ""), ("1", "usage or setup error"), ("130", "interrupted (Ctrl-C)"),
                          ("143", "terminated (SIGTERM)")):
        assert re.search(rf"(^|, ){code} {re.escape(meaning)}", codes.group(1)), codes.group(1)


def test_eval_help_keeps_the_label_file_name_whole_at_80_columns():
    options = panels(render(["eval"], 80))["Options"]
    labels = " ".join(" ".join(options).replace("│", " ").split())
    assert "the devkit's ILSVRC2012_validation_ground_truth.txt or Kaggle's LOC_val_solution.csv" in labels


def test_shared_options_read_the_same_everywhere():
    # --input-size: one range for info, bench and export; --cache-dir names MVIT_CACHE once (as the env var).
    for command in ("info", "bench", "export"):
        text = " ".join(render([command], 400).split())
        assert "--input-size PIXELS Square input side in pixels [default: 256, the weights' crop size]. " \
               "[32 to 2048]" in text
    text = render(["classify"], 400)
    assert text.count("MVIT_CACHE") == 1 and "[env var: MVIT_CACHE]" in text


def test_batch_size_and_workers_show_their_defaults():
    from mvit_cli.runners.devices import DEFAULT_BATCH_SIZE
    from mvit_cli.runners.tuning import default_workers

    text = " ".join(render(["classify"], 400).split())
    batch = re.search(r"--batch-size -b N .*?\[default: ([^\]]*)\]", text).group(1)
    for device, size in DEFAULT_BATCH_SIZE.items():
        assert re.search(rf"\b{size} on [A-Za-z ]*\b{device.upper()}\b", batch), batch
    workers = re.search(r"--workers -j N .*?\[default: ([^\]]*)\]", text).group(1)
    assert workers.startswith(f"{default_workers()} here")


def test_int_and_choice_ranges_are_in_words():
    text = " ".join(render(["classify"], 400).split())
    assert "--top-k -k N How many classes to report per image. [1 to 1000] [default: 5]" in text
    assert "--variant -m VARIANT Model variant: xxs, xs or s" in text
    assert "--resume Keep the records" in text  # a flag shows no value


# --- Mistakes on the command line -------------------------------------------------------------------------------

MISTAKES = [
    (["classify", "--top-k", "0", "x.jpg"], "--top-k must be a whole number from 1 to 1000, not '0'"),
    (["classify", "-k1001", "x.jpg"], "--top-k must be a whole number from 1 to 1000, not '1001'"),
    (["classify", "--variant", "bogus", "x.jpg"], "--variant must be xxs, xs or s, not 'bogus'"),
    (["info", "--format", "nope"], "--format must be table or json, not 'nope'"),
    (["export", "--format", "nope"], "--format must be onnx or torchscript, not 'nope'"),
    (["info", "--input-size", "abc"], "--input-size must be a whole number from 32 to 2048, not 'abc'"),
    (["info", "--input-size", "4096"], "--input-size must be a whole number from 32 to 2048, not '4096'"),
    (["bench", "--min-seconds", "-1"], "--min-seconds must be a number of at least 0, not '-1'"),
    (["embed", "x.jpg"], "--output FILE is required (see 'mvit embed --help')"),
    (["import"], "FILE is required (see 'mvit import --help')"),
    (["classify", "x.jpg", "--no-such-option"], "no such option: --no-such-option (see 'mvit classify --help')"),
    (["--no-such-option"], "no such option: --no-such-option (see 'mvit --help')"),
    (["classify", "--top-k"], "--top-k needs a value"),
    (["classify", "--resume=yes", "x.jpg"], "--resume takes no value"),
    (["info", "extra"], "unexpected argument: extra (see 'mvit info --help')"),
    (["clasify", "x.jpg"], "no such command: clasify (did you mean classify? commands: "),
    (["cache", "lst"], "no such command: lst (did you mean list? commands: list, clear)"),
]


@pytest.mark.parametrize(("args", "message"), MISTAKES, ids=[" ".join(args) for args, _ in MISTAKES])
def test_a_mistake_is_one_line_in_mvits_words(args, message):
    result = invoke(*args)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"mvit: error: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for leak in ("Traceback", "Usage:", "Try '", "Error:", "Value error", "Input should be"):
        assert leak not in result.stderr


def test_a_path_that_is_not_there_or_of_the_wrong_kind(tmp_path):
    cases = [
        (["eval", str(tmp_path / "missing")], f"DIR: no such folder: {tmp_path / 'missing'}"),
        (["eval", str(tmp_path / "a.txt")], f"DIR: {tmp_path / 'a.txt'} is not a folder"),
        (["classify", "--weights", str(tmp_path), "x.jpg"], f"--weights: {tmp_path} is a folder, not a file"),
        (["import", str(tmp_path / "none.pt")], f"FILE: no such file: {tmp_path / 'none.pt'}"),
    ]
    (tmp_path / "a.txt").write_text("not a folder")
    for args, message in cases:
        result = invoke(*args)
        assert (result.exit_code, result.stderr) == (1, f"mvit: error: {message}\n")


def test_a_hostile_value_is_printed_harmless():
    result = invoke("classify", "--variant", "x\x1b[2Jy\nz", "a.jpg")
    assert result.exit_code == 1
    assert "\x1b" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_the_installed_entry_point_says_it_the_same_way():
    done = subprocess.run([sys.executable, "-m", "mvit_cli", "classify", "--top-k", "0", "x.jpg"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "mvit: error: --top-k must be a whole number from 1 to 1000, not '0'\n"


def test_debug_shows_the_traceback_of_a_usage_error_too():
    # A subprocess: --debug stays on for the rest of the process that saw it.
    done = subprocess.run([sys.executable, "-m", "mvit_cli", "--debug", "classify", "--top-k", "0", "x.jpg"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert done.stderr.splitlines()[-1] == "mvit: error: --top-k must be a whole number from 1 to 1000, not '0'"
