"""Where mvit may write: the checks every output file passes before a byte is written.

mvit writes results, predictions, reports, embeddings and exports. A mistyped or hostile output path must never
destroy anything, so a target is refused, before any work is done, when:

- its folder does not exist or is not writable (mvit creates no folders: a typo would scatter files);
- it exists and is not a regular file: a device (/dev/null, /dev/full, /dev/sda), a FIFO, a socket or a folder.
  Writing there would either fail late or, with an atomic rename, replace the device node itself;
- it is one of the run's inputs or weights, as a file (device and inode), not as a name: a hard link or a symlink
  to an input is that input;
- it already holds an image (results are text; an existing image is far likelier to be a mistaken argument than
  a file meant to be replaced);
- two outputs of one run are the same file.

The checks name the option the path came from (`role`, given by the caller), so the message says what to fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from mvit_cli.errors import UsageError

_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


class UnsafeOutputError(UsageError):
    """An output path mvit refuses to write to, and why."""

    def __init__(self, role: str, path: Path, reason: str):
        super().__init__(f"{role} {path}: {reason}")
        self.role, self.path, self.reason = role, path, reason


def identity(path: Path | str) -> tuple[int, int] | None:
    """(device, inode) of the file `path` leads to (links followed); None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_output(path: Path, role: str, protected: Iterable[tuple[int, int] | None] = (),
                 protected_what: str = "one of the input images", refuse_images: bool = True) -> None:
    """Raise UnsafeOutputError if writing `path` could harm anything (module docstring).

    `protected`: identities of files that must not be written (the inputs, the weights); `protected_what` names
    them in the message.
    """
    path = Path(path)
    folder = Path(os.path.abspath(path)).parent
    if not folder.is_dir():
        raise UnsafeOutputError(role, path, f"the folder {folder} does not exist (mvit creates no folders)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UnsafeOutputError(role, path, f"cannot use it: {(exc.strerror or str(exc)).lower()}") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise UnsafeOutputError(role, path, f"it is {kind}; mvit writes only to regular files")
        if (st.st_dev, st.st_ino) in set(protected):
            raise UnsafeOutputError(role, path, f"it is {protected_what} (the same file); it would be overwritten")
        if refuse_images and st.st_size and _holds_image(path):
            raise UnsafeOutputError(role, path, "it holds an image, which mvit will not overwrite with results; "
                                                "choose another file name")
        if not os.access(path, os.W_OK):
            raise UnsafeOutputError(role, path, "it is not writable")
    elif not os.access(folder, os.W_OK):
        raise UnsafeOutputError(role, path, f"the folder {folder} is not writable")


def check_distinct(outputs: dict[str, Path | None]) -> None:
    """Refuse two outputs of one run that are the same file (by identity, or by name for files not yet made)."""
    seen: dict[object, str] = {}
    for role, path in outputs.items():
        if path is None:
            continue
        key = identity(path) or os.path.realpath(path)
        if key in seen:
            raise UsageError(f"{seen[key]} and {role} name the same file ({path}); give each its own file")
        seen[key] = role


def _holds_image(path: Path) -> bool:
    """Whether the file starts like an image Pillow recognises (reads only its header)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except Image.DecompressionBombError:  # an image, and a huge one
        return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False
