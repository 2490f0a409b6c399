"""Errors a user can cause or fix, each with the exit code the CLI returns for it.

Anything raised as an `MvitError` is printed by the CLI as one line on stderr (no traceback unless
`--debug`). Anything else is a bug in mvit and keeps its traceback.
"""

from __future__ import annotations

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_USAGE = 1  # bad option, no weights, no images found, unreadable checkpoint ...
EXIT_PARTIAL = 3  # some inputs failed while the others succeeded
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (timeout, docker stop, systemd): handled like Ctrl-C


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as on Ctrl-C (outputs stay valid), with exit code 143."""


class MvitError(Exception):
    """A failure with a message meant for the user."""

    exit_code = EXIT_USAGE


class UsageError(MvitError):
    """A bad option or combination of options."""


class CheckpointError(MvitError):
    """A checkpoint file that cannot be read, is of an unknown format, or does not fit the model."""


class WeightsUnavailableError(MvitError):
    """Weights are neither cached nor downloadable (offline, or the hub unreachable)."""


class IntegrityError(MvitError):
    """A downloaded or imported file whose checksum does not match the manifest."""


class NoImagesError(MvitError):
    """The paths given contain no image to work on."""


class DatasetError(MvitError):
    """An evaluation directory whose layout or labels cannot be understood."""


class ImageDecodeError(MvitError):
    """One input image could not be decoded. Reported per image, never fatal for a run."""


# Errors with fields: the library says what is wrong in its own words (str), and the CLI, which knows its
# flags, says how to fix it (cli/_errors.py).


class DeviceUnavailableError(UsageError):
    """A device was asked for that this machine or torch build does not have."""

    def __init__(self, device: str, reason: str):
        super().__init__(f"{device} was asked for, but {reason}")
        self.device, self.reason = device, reason


class BackendDeviceError(UsageError):
    """A backend was asked to run on a device it does not support."""

    def __init__(self, backend: str, device: str):
        super().__init__(f"the {backend} backend runs on the CPU only, not on {device}")
        self.backend, self.device = backend, device


class VariantMismatchError(CheckpointError):
    """A checkpoint holds another variant than the one asked for."""

    def __init__(self, path: object, found: str, asked: str):
        super().__init__(f"{path}: the checkpoint is for MobileViT-{found.upper()}, but MobileViT-{asked.upper()} "
                         "was asked for")
        self.path, self.found, self.asked = path, found, asked


class ExportParityError(MvitError):
    """An export that loads back but does not compute what the model computes (and was removed)."""

    def __init__(self, fmt: str, path: object, difference: float, checker: str | None, tolerance: float):
        super().__init__(f"the {fmt} export disagrees with the PyTorch model (max |logit difference| {difference:.2e} "
                         f"with {checker}, allowed {tolerance:.0e}), so {path} was removed")
        self.fmt, self.path, self.difference, self.checker = fmt, path, difference, checker


class InvalidValueError(UsageError):
    """An option's value that no run can use; `option` names it as the library knows it (e.g. "input_size")."""

    def __init__(self, option: str, value: object, expected: str):
        super().__init__(f"{option} = {value}: {expected}")
        self.option, self.value, self.expected = option, value, expected
