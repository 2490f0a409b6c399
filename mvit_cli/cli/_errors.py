"""How the CLI words an error: one table from error type to message, the library's own words plus what to type.

The library raises errors with fields and says what is wrong without naming any command-line flag (its callers
may be Python code); here, and only here, the CLI adds the flag that fixes it. An error type not in the table
is shown with its own message.
"""

from __future__ import annotations

import errno
from typing import Callable

from mvit_cli.errors import (
    EXIT_USAGE,
    BackendDeviceError,
    DeviceUnavailableError,
    ExportParityError,
    InvalidValueError,
    MvitError,
    VariantMismatchError,
)
from mvit_cli.manifest import title


def _device(exc: DeviceUnavailableError) -> str:
    return f"--device {exc.device} was asked for, but {exc.reason}; use --device cpu"


def _backend(exc: BackendDeviceError) -> str:
    return f"the {exc.backend} backend runs on the CPU only; use --device cpu or --backend torch"


def _variant(exc: VariantMismatchError) -> str:
    return (f"{exc.path}: the checkpoint is for {title(exc.found)}, but --variant {exc.asked} ({title(exc.asked)}) "
            f"was given; pass --variant {exc.found} or leave --variant out")


def _value(exc: InvalidValueError) -> str:
    return f"--{exc.option.replace('_', '-')} {exc.value}: {exc.expected}"


def _export_parity(exc) -> str:
    return f"{exc}; --no-check writes it unchecked"


MESSAGES: dict[type, Callable] = {
    DeviceUnavailableError: _device,
    BackendDeviceError: _backend,
    VariantMismatchError: _variant,
    InvalidValueError: _value,
    ExportParityError: _export_parity,
}


def describe(exc: BaseException) -> tuple[str, int] | None:
    """Message and exit code for an error a user can cause or fix; None for a bug in mvit."""
    if isinstance(exc, MvitError):
        for kind, words in MESSAGES.items():
            if isinstance(exc, kind):
                return words(exc), exc.exit_code
        return str(exc), exc.exit_code
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}", EXIT_USAGE
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename or exc}", EXIT_USAGE
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device", EXIT_USAGE
    return None
