"""From the PATH arguments of a command to the ordered list of images to work on.

A PATH is an image file (taken whatever its name: decoding goes by content), a folder (its image files,
recursively unless `recursive=False`), a glob pattern (`photos/*.jpg`, `**/*.png`; quote it so mvit, not the
shell, expands it), or `-` for one image read from stdin. In folders and glob matches only files with an image
extension count (jpg jpeg png webp bmp gif tif tiff, any letter case) and hidden files and folders (".name")
are skipped. Order: arguments in the order given, each folder sorted by path; the same file reached twice
(even spelled differently) is kept once, at its first position.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from mvit_cli.errors import NoImagesError, UsageError
from mvit_cli.pipeline.images import Unreadable

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
STDIN = "-"
_GLOB_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class ImageInput:
    name: str  # how results name it: the path as reached from the argument, or "-" for stdin
    source: Path | bytes | Unreadable  # the file, the bytes read from stdin, or why it cannot be read


def display_name(path: str) -> str:
    """A path as valid UTF-8 text for records and tables: bytes a file name may hold that are not UTF-8
    (legal on Linux) are shown as \\xNN escapes instead of breaking the JSON, CSV or terminal output."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _hidden(name: str) -> bool:
    return name.startswith(".") and name not in (".", "..")


def _walk(folder: Path, recursive: bool) -> list[Path | tuple[Path, Unreadable]]:
    """Image files under `folder`, sorted by their path relative to it. Symlinked folders are not followed
    (no cycles); symlinked files are taken. A folder that cannot be listed is returned as (folder, Unreadable):
    its images would otherwise be left out without a word."""
    found: list[Path] = []
    unreadable: list[tuple[Path, Unreadable]] = []

    def on_error(exc: OSError) -> None:
        reason = exc.strerror.lower() if exc.strerror else str(exc)
        unreadable.append((Path(exc.filename), Unreadable(f"cannot list folder: {reason}")))

    for root, dirs, files in os.walk(folder, followlinks=False, onerror=on_error):
        dirs[:] = [d for d in dirs if not _hidden(d)] if recursive else []
        found.extend(Path(root, f) for f in files if not _hidden(f) and is_image_name(Path(f)))
    entries = [(p, p) for p in found] + [(p, (p, why)) for p, why in unreadable]
    return [entry for _, entry in sorted(entries, key=lambda e: e[0].relative_to(folder).parts)]


def _glob(pattern: str, recursive: bool) -> list[Path | tuple[Path, Unreadable]]:
    """Image files matched by a glob pattern (`**` crosses folders); folders it matches are walked."""
    found: list[Path | tuple[Path, Unreadable]] = []
    for match in sorted(glob.glob(pattern, recursive=True)):  # glob skips hidden names unless asked for
        path = Path(match)
        if path.is_dir():
            found.extend(_walk(path, recursive))
        elif is_image_name(path):
            found.append(path)
    return found


def expand_paths(
    paths: Sequence[str | Path],
    recursive: bool = True,
    stdin: BinaryIO | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[ImageInput]:
    """The images the PATH arguments name, in order, without duplicates.

    Raises UsageError for a path that does not exist (and is no glob pattern) or a stdin that is a terminal,
    NoImagesError when the arguments name no image at all. `warn` hears of glob patterns that match nothing.
    """
    inputs: list[ImageInput] = []
    seen: set[str] = set()

    def add(name: str, source: Path | bytes, key: str) -> None:
        if key not in seen:
            seen.add(key)
            inputs.append(ImageInput(name, source))

    for arg in map(str, paths):
        if arg == STDIN:
            if STDIN not in seen:
                add(STDIN, _read_stdin(stdin), STDIN)
            continue
        path = Path(arg)
        try:
            is_dir, exists = path.is_dir(), path.exists()
        except OSError:  # e.g. a parent folder mvit may not enter: reported per image, the run goes on
            is_dir, exists = False, not (_GLOB_MAGIC & set(arg))
        if is_dir:
            found = _walk(path, recursive)
        elif exists:
            found = [path]  # named explicitly: taken whatever its extension
        elif _GLOB_MAGIC & set(arg):
            found = _glob(arg, recursive)
            if not found and warn is not None:
                warn(f"pattern {display_name(arg)!r} matched no images")
        else:
            raise UsageError(f"no such file or folder: {display_name(arg)}")
        for entry in found:
            file, source = entry if isinstance(entry, tuple) else (entry, entry)
            add(display_name(str(file)), source, os.path.realpath(file))

    if not inputs:
        names = ", ".join(display_name(str(p)) for p in paths) or "(none)"
        raise NoImagesError(
            f"no images found in {names}; give image files, folders or glob patterns "
            f"(extensions: {' '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))})"
        )
    return inputs


def _read_stdin(stdin: BinaryIO | None) -> bytes:
    if stdin is None and sys.stdin is None:
        raise UsageError("'-' reads one image from stdin, but stdin is closed; pipe an image in (< photo.jpg)")
    stream = stdin if stdin is not None else sys.stdin.buffer
    if stdin is None and sys.stdin.isatty():
        raise UsageError("'-' reads one image from stdin, but stdin is a terminal; pipe an image in (< photo.jpg)")
    return stream.read()
