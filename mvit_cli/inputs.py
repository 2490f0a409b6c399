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
from typing import BinaryIO, Sequence

from mvit_cli.errors import NoImagesError, UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
STDIN = "-"
_GLOB_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class ImageInput:
    name: str  # how results name it: the path as reached from the argument, or "-" for stdin
    source: Path | bytes  # the file, or the bytes read from stdin


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _hidden(name: str) -> bool:
    return name.startswith(".") and name not in (".", "..")


def _walk(folder: Path, recursive: bool) -> list[Path]:
    """Image files under `folder`, sorted by their path relative to it. Symlinked folders are not followed
    (no cycles); symlinked files are taken."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not _hidden(d)] if recursive else []
        found.extend(Path(root, f) for f in files if not _hidden(f) and is_image_name(Path(f)))
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _glob(pattern: str, recursive: bool) -> list[Path]:
    """Image files matched by a glob pattern (`**` crosses folders); folders it matches are walked."""
    found: list[Path] = []
    for match in sorted(glob.glob(pattern, recursive=True)):  # glob skips hidden names unless asked for
        path = Path(match)
        if path.is_dir():
            found.extend(_walk(path, recursive))
        elif is_image_name(path):
            found.append(path)
    return found


def expand_paths(
    paths: Sequence[str | Path], recursive: bool = True, stdin: BinaryIO | None = None
) -> list[ImageInput]:
    """The images the PATH arguments name, in order, without duplicates.

    Raises UsageError for a path that does not exist (and is no glob pattern) or a stdin that is a terminal,
    NoImagesError when the arguments name no image at all.
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
        if path.is_dir():
            found = _walk(path, recursive)
        elif path.exists():
            found = [path]  # named explicitly: taken whatever its extension
        elif _GLOB_MAGIC & set(arg):
            found = _glob(arg, recursive)
        else:
            raise UsageError(f"no such file or folder: {arg}")
        for file in found:
            add(str(file), file, os.path.realpath(file))

    if not inputs:
        names = ", ".join(map(str, paths)) or "(none)"
        raise NoImagesError(
            f"no images found in {names}; give image files, folders or glob patterns "
            f"(extensions: {' '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))})"
        )
    return inputs


def _read_stdin(stdin: BinaryIO | None) -> bytes:
    stream = stdin if stdin is not None else sys.stdin.buffer
    if stdin is None and sys.stdin.isatty():
        raise UsageError("'-' reads one image from stdin, but stdin is a terminal; pipe an image in (< photo.jpg)")
    return stream.read()
