"""How mvit's help pages and command-line mistakes read, for every command at once.

Left alone, typer (0.29) shows its own artefacts: `<bool>` beside every flag, `<list[str]>` and
`<int range> [x>=1]` as types, `{DIR}` in usage lines, the docstrings' hard line breaks (so a paragraph breaks
mid-sentence at 80 columns), and pydantic's wording for a bad value ("Input should be greater than or equal to
1"). The command classes here are given to every registered command by `adopt` (main.py), so a command module
only writes its docstring and its options:

- each help paragraph becomes one logical line that rich wraps to the terminal; indented lines stay as written;
  the "Examples:" section comes after the options, one example per line, never wrapped by rich (a terminal that
  is too narrow folds it, but a copied line is still the whole command);
- a command without its own "Exit codes:" paragraph gets the standard one;
- each parameter shows a plain metavar (N, FILE, DIR, xxs|xs|s; nothing for a flag) and its range in words;
- a bad value, a missing or unknown option, an unknown command: one `mvit: error:` line in mvit's words, raised
  as mvit's UsageError (exit code 1).
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import textwrap
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from typer._click.exceptions import BadOptionUsage, MissingParameter, NoArgsIsHelpError, NoSuchOption
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from mvit_cli.cli._options import DEFAULTS_AT_HELP_TIME
from mvit_cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_TERMINATED, EXIT_USAGE, UsageError

# What exit code 3 means for the commands that can end partly done. Every command can end with 0, 1, 130 and 143:
# MvitGroup.main maps failures, Ctrl-C and SIGTERM to them.
PARTLY_DONE = {
    "classify": "some inputs failed",
    "embed": "some inputs failed (left out of the file)",
    "eval": "some images could not be decoded (left out of the accuracy)",
    "download": "some of the files could not be fetched",
}

_EXAMPLES_HEADING = re.compile(r"examples?:", re.IGNORECASE)


# --- Help text -----------------------------------------------------------------------------------------------


def reflow(text: str) -> str:
    """`text` with each paragraph on one line. Indented lines (examples) and list items ("- ...") start a line of
    their own, and blank lines between paragraphs stay, so rich can wrap the prose to any terminal width."""
    lines: list[str] = []
    paragraph: list[str] = []

    def end_paragraph() -> None:
        if paragraph:
            lines.append(" ".join(paragraph))
            paragraph.clear()

    for line in inspect.cleandoc(text).splitlines():
        if not line.strip():
            end_paragraph()
            lines.append("")
        elif line[0].isspace():
            end_paragraph()
            lines.append(line.rstrip())
        else:
            if line.startswith(("- ", "* ")):
                end_paragraph()
            paragraph.append(line.strip())
    end_paragraph()
    return "\n".join(lines).strip("\n")


def split_examples(text: str) -> tuple[str, list[str]]:
    """(the help before an "Examples:" line, the example lines after it without blank lines, dedented)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line[:1].isspace() and _EXAMPLES_HEADING.fullmatch(line.strip()):
            examples = textwrap.dedent("\n".join(x for x in lines[i + 1:] if x.strip())).splitlines()
            return "\n".join(lines[:i]).strip("\n"), examples
    return text, []


def exit_codes_paragraph(command: str) -> str:
    """The standard "Exit codes:" paragraph, from the codes in errors.py."""
    codes = [f"{EXIT_OK} done", f"{EXIT_USAGE} usage or setup error"]
    if command in PARTLY_DONE:
        codes.append(f"{EXIT_PARTIAL} {PARTLY_DONE[command]}")
    codes += [f"{EXIT_INTERRUPTED} interrupted (Ctrl-C)", f"{EXIT_TERMINATED} terminated (SIGTERM)"]
    return "Exit codes: " + ", ".join(codes) + "."


def _print_examples(examples: list[str]) -> None:
    from rich.text import Text
    from typer import rich_utils

    # typer's own console (its width, colour and TERMINAL_WIDTH settings), as for the rest of the page.
    console = rich_utils._get_rich_console()  # private in typer 0.29: pyproject pins typer <0.30
    console.print()
    console.print(Text(" Examples:", style="bold"))
    for line in examples:
        if len(line) + 3 > console.width:  # a long example first drops the alignment of its "# comment"
            line = re.sub(r" {3,}#", "  #", line)
        # soft_wrap: printed whole, never wrapped or cut by rich.
        console.print(Text(f"   {line}"), soft_wrap=True, highlight=False)
    console.print()


# --- Parameters -------------------------------------------------------------------------------------------------


def _descriptor(param: Any) -> Any:
    return getattr(param, "type_descriptor", None)


def _choices(param: Any) -> list[str]:
    choices = getattr(_descriptor(param), "choices", None) or ()
    return [str(c.value) if isinstance(c, Enum) else str(c) for c in choices]


def _number_type(param: Any) -> Optional[type]:
    annotation = getattr(_descriptor(param), "annotation", None)
    return annotation if annotation in (int, float) else None


def _path_kind(param: Any) -> Optional[str]:
    """"file", "folder" or "path" for a path parameter, else None."""
    descriptor = _descriptor(param)
    if descriptor is None or not descriptor.is_path:
        return None
    return {"file": "file", "dir": "folder"}.get(descriptor.path_type, "path")


def _number(value: float) -> str:
    return f"{value:g}"


def range_words(param: Any) -> Optional[str]:
    """"1 to 1000", "at least 1", "at most 9" for a number parameter with limits, else None."""
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is None and high is None:
        return None
    if high is None:
        return f"at least {_number(low)}"
    if low is None:
        return f"at most {_number(high)}"
    return f"{_number(low)} to {_number(high)}"


def expected(param: Any) -> Optional[str]:
    """What a value of `param` must be, in words: "xxs, xs or s", "a whole number from 1 to 1000" ..."""
    choices = _choices(param)
    if choices:
        return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
    kind = _number_type(param)
    if kind is None:
        return None
    words = "a whole number" if kind is int else "a number"
    limits = range_words(param)
    if limits is None:
        return words
    return f"{words} from {limits}" if " to " in limits else f"{words} of {limits}"


def metavar(param: Any) -> str:
    """What the help shows for a parameter's value: nothing for a flag, else a word in capitals (N, FILE, DIR,
    or an option's name, e.g. FORMAT, when it takes one of a few choices)."""
    if isinstance(param, TyperArgument):
        return (param.name or "value").upper()
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if _choices(param):
        # The name, not the choices: every option's help lists them (polish adds them where it does not), and a
        # wide value column leaves the help column too narrow at 80 columns for a word like a label file's name.
        return max(param.opts, key=len).lstrip("-").upper()
    kind = _path_kind(param)
    if kind is not None:
        return {"file": "FILE", "folder": "DIR"}.get(kind, "PATH")
    return {int: "N", float: "NUMBER"}.get(_number_type(param), "TEXT")


def hint(param: Any) -> str:
    """How an error names a parameter: its long option (--top-k), or an argument's metavar (DIR)."""
    if isinstance(param, TyperOption):
        return max(param.opts, key=len) if param.opts else str(param.name)
    return param.metavar or (param.name or "value").upper()


def _usage_pieces(param: TyperArgument) -> list[str]:
    name = param.metavar or (param.name or "value").upper()
    name = name if param.required else f"[{name}]"
    return [name + ("..." if param.nargs != 1 else "")]


def polish(param: Any) -> None:
    """Give a parameter mvit's metavar and usage name, and its range in words in its help (once)."""
    if getattr(param, "_mvit_polished", False):
        return
    param._mvit_polished = True
    if param.metavar is None:
        param.metavar = metavar(param)
    # typer 0.29 shows an argument's type (<dir>, <list[str]>) beside its name, a range as "[x>=1]" beside the
    # metavar and a required argument as {DIR} in the usage line: the name and the words in the help say it.
    if isinstance(param, TyperArgument):
        param.display_type_rich = lambda ctx=None: None
        param.get_usage_pieces = lambda ctx=None: _usage_pieces(param)
    if hasattr(param, "_get_number_range_help_str"):
        param._get_number_range_help_str = lambda: None
    limits = range_words(param)
    if limits is not None:
        param.help = f"{param.help or ''} \\[{limits}]".strip()
    choices = _choices(param)
    if choices and not all(re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", param.help or "") for c in choices):
        param.help = f"{param.help or ''} \\[one of: {', '.join(choices)}]".strip()


def _add_help_time_default(param: Any) -> None:
    """Defaults that depend on the machine or live beside the runners (which import torch) are put into the help
    when a help page is shown, not when the CLI is imported."""
    if getattr(param, "_mvit_default_shown", False):
        return
    for option in getattr(param, "opts", ()):
        if option in DEFAULTS_AT_HELP_TIME:
            param._mvit_default_shown = True
            param.help = f"{param.help or ''} \\[default: {DEFAULTS_AT_HELP_TIME[option]()}]".strip()
            return


# --- Errors -----------------------------------------------------------------------------------------------------


def _plain(message: str) -> str:
    """A library's sentence in mvit's style: no "Value error, " prefix, lower-case start, no final period."""
    message = message.strip().removeprefix("Value error, ").removeprefix("Error: ")
    if len(message) > 1 and message[0].isupper() and message[1].islower():
        message = message[0].lower() + message[1:]
    return message.rstrip(".")


def _path_problem(param: Any, value: str) -> Optional[str]:
    info = getattr(_descriptor(param), "parameter_info", None)
    want_file = info is not None and not info.dir_okay
    want_folder = info is not None and not info.file_okay
    path = Path(value)
    if not path.exists():
        kind = "file" if want_file else "folder" if want_folder else "file or folder"
        return f"no such {kind}: {value}"
    if want_file and path.is_dir():
        return f"{value} is a folder, not a file"
    if want_folder and not path.is_dir():
        return f"{value} is not a folder"
    return None


def usage_message(exc: Exception, given: Optional[str] = None) -> str:
    """One line in mvit's words for a command-line mistake that typer reports; `given` is the value typed, when
    known."""
    ctx = getattr(exc, "ctx", None)
    see = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    param = getattr(exc, "param", None)
    if isinstance(exc, MissingParameter) and param is not None:
        shown = hint(param)
        if isinstance(param, TyperOption) and param.metavar:
            shown = f"{shown} {param.metavar}"
        return f"{shown} is required{see}"
    if isinstance(exc, typer.BadParameter) and param is not None:
        if _path_kind(param) is not None and given is not None:
            problem = _path_problem(param, given)
            if problem is not None:
                return f"{hint(param)}: {problem}"
        words = expected(param)
        # A value typer could not convert (its cause is the conversion error) is described by what it must be;
        # a callback's own BadParameter keeps its message.
        if words is not None and exc.__cause__ is not None:
            return f"{hint(param)} must be {words}" + ("" if given is None else f", not '{given}'")
        return f"{hint(param)}: {_plain(exc.message)}"
    if isinstance(exc, NoSuchOption):
        text = f"no such option: {exc.option_name}"
        if exc.possibilities:
            text += f"; did you mean {' or '.join(sorted(exc.possibilities))}?"
        return text + see
    if isinstance(exc, BadOptionUsage):
        if "requires" in exc.message:
            return f"{exc.option_name} needs a value"
        if "does not take a value" in exc.message:
            return f"{exc.option_name} takes no value"
    message = exc.format_message() if isinstance(exc, typer.TyperException) else str(exc)
    extra = re.fullmatch(r"Got unexpected extra argument(?:s|\(s\))? \((.*)\)", message.strip())
    if extra:
        return f"unexpected argument: {extra.group(1)}{see}"
    return _plain(message) + see


def _given_value(command: Any, ctx: Any, args: list[str], param: Any) -> Optional[str]:
    """The raw value typed for `param` (or taken from its environment variable), found by parsing `args` again."""
    if param is None:
        return None
    try:
        opts, _, _ = command.make_parser(ctx).parse_args(args=list(args))
    except Exception:  # best effort: the message is still right without the value
        return None
    value = opts.get(param.name)
    if value is None:
        envvar = getattr(param, "envvar", None)
        value = os.environ.get(envvar) if isinstance(envvar, str) else None
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return None if value is None else str(value)


# --- Command classes --------------------------------------------------------------------------------------------


class _HelpPages:
    """What mvit's commands and groups share (a mixin before TyperCommand / TyperGroup in the bases)."""

    examples: list[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        prose, examples = split_examples(reflow(kwargs.get("help") or ""))
        kwargs["help"] = prose or None
        super().__init__(*args, **kwargs)
        self.examples = examples
        if prose and not isinstance(self, TyperGroup) and not re.search(r"^Exit codes", prose, re.MULTILINE):
            self.help = f"{prose}\n\n{exit_codes_paragraph(self.name or '')}".strip()
        for param in self.params:
            polish(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            polish(option)
        return option

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.get_params(ctx):
            _add_help_time_default(param)
        super().format_help(ctx, formatter)
        if self.examples:
            _print_examples(self.examples)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        typed = list(args)  # the parser consumes the list it is given
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:
            raise
        except typer.TyperException as exc:
            param = getattr(exc, "param", None)
            raise UsageError(usage_message(exc, _given_value(self, ctx, typed, param))) from exc


class HelpCommand(_HelpPages, TyperCommand):
    """A command with mvit's help page and usage errors."""


class HelpGroup(_HelpPages, TyperGroup):
    """A group of commands with mvit's help page and usage errors, including for an unknown command."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None and not ctx.resilient_parsing:
            names = [n for n in self.list_commands(ctx) if not getattr(self.get_command(ctx, n), "hidden", False)]
            close = difflib.get_close_matches(name, names)
            guess = f"did you mean {' or '.join(close)}? " if close else ""
            raise UsageError(f"no such command: {name} ({guess}commands: {', '.join(names)})")
        return super().resolve_command(ctx, args)


def adopt(app: typer.Typer) -> None:
    """Give every command and group registered on `app` (recursively) mvit's help and error classes, unless a
    command module chose a class of its own. Called once, after the command modules registered."""
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = HelpCommand
    for group in app.registered_groups:
        chosen = group.cls if isinstance(group.cls, type) and issubclass(group.cls, TyperGroup) else None
        if chosen in (None, TyperGroup):
            group.cls = HelpGroup
        if group.typer_instance is not None:
            adopt(group.typer_instance)
