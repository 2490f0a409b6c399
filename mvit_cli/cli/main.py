"""The `mvit` command: wires the command modules together and turns errors into one clear line."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Any, Optional

import typer

from mvit_cli import __version__
from mvit_cli.cli import _help
from mvit_cli.cli._errors import describe
from mvit_cli.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, Terminated


class _State:
    debug: bool = os.environ.get("MVIT_DEBUG", "") not in ("", "0")


state = _State()


def _fail(message: str, code: int) -> int:
    from mvit_cli.cli.output import printable

    typer.echo(f"mvit: error: {printable(message)}", err=True)
    return code


class MvitGroup(_help.HelpGroup):
    """Runs a command and maps its failures to exit codes: 1 usage/setup, 3 partial, 130 interrupted.

    Lives in the click group (not in `run`) so that typer's CliRunner in the tests sees exactly what the
    installed `mvit` does.
    """

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        debug = state.debug or "--debug" in (sys.argv if args is None else list(args))
        _terminate_like_ctrl_c()
        if not debug:
            _warnings_as_notes()
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except typer.Exit as exc:
            code = exc.exit_code
        except _help.NoArgsIsHelpError as exc:  # `mvit`, `mvit cache`: the help page, exit code 1
            exc.show()
            code = EXIT_USAGE
        except typer.TyperException as exc:  # a usage error the command classes did not word already
            code = _fail(_help.usage_message(exc), EXIT_USAGE)
        except (typer.Abort, KeyboardInterrupt):
            code = EXIT_INTERRUPTED
        except Exception as exc:
            friendly = describe(exc)
            if debug:
                traceback.print_exc()
            if friendly is not None:
                code = _fail(*friendly)
            else:
                message = f"internal error: {type(exc).__name__}: {exc}"
                if not debug:
                    message += " (run with --debug for the traceback)"
                code = _fail(message, EXIT_USAGE)
        if code == EXIT_INTERRUPTED and _terminated.is_set():
            # typer turns any KeyboardInterrupt (Terminated is one) into exit code 130 on its way out.
            code = EXIT_TERMINATED
        if code == EXIT_INTERRUPTED:
            # Ctrl-C: typer turns it into exit code 130 inside a command; say why the run stopped short.
            typer.echo("mvit: interrupted", err=True)
        elif code == EXIT_TERMINATED:
            typer.echo("mvit: terminated (SIGTERM)", err=True)
        if standalone_mode:
            sys.exit(code)
        return code


_terminated = threading.Event()


def _raise_terminated(signum: int, frame: object) -> None:
    _terminated.set()
    raise Terminated()


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (timeout, docker stop, systemd) stops a run as Ctrl-C does: outputs are closed valid, exit 143.
    Python's default for SIGTERM is to die on the spot, leaving a JSON array unclosed."""
    _terminated.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _warnings_as_notes() -> None:
    """A library's warning (Pillow, torch, huggingface_hub) that reaches mvit's stderr comes out as one line of
    mvit's, once, instead of a file:line dump with source code; --debug shows the originals."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        from mvit_cli.cli.output import warn

        lines = str(message).strip().splitlines()
        text = f"{category.__name__}: {lines[0] if lines else ''}"
        if text not in seen:
            seen.add(text)
            warn(f"note: {text}")

    warnings.showwarning = show


app = typer.Typer(
    name="mvit",
    cls=MvitGroup,
    help="Classify images with MobileViT v1 (XXS, XS, S) trained on ImageNet-1k, and reproduce its published accuracy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mvit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Optional[bool] = typer.Option(
        None, "--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (also: MVIT_DEBUG=1)."),
) -> None:
    """MobileViT v1 image classification from the shell."""
    state.debug = state.debug or debug


def _register() -> None:
    # Command modules import torch and friends lazily, inside the commands, so `mvit --help` stays fast.
    from mvit_cli.cli import bench, classify, embed, evaluate, explain, export, info, serve, weights

    for module in (classify, embed, evaluate, explain, info, weights, bench, export, serve):
        module.register(app)
    _help.adopt(app)  # every command's help page and usage errors in mvit's words (cli/_help.py)


_register()


def run() -> None:
    """Console-script entry point."""
    app()
