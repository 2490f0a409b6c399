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
