"""From the PATH arguments of a command (and lists of inputs) to the ordered images to work on.

A PATH is an http(s) URL (fetched when its turn comes, see fetch.py), an image file (taken whatever its name:
decoding goes by content), a folder (its image files, recursively unless `recursive=False`), a glob pattern
(`photos/*.jpg`, `**/*.png`; quote it so mvit, not the shell, expands it), or `-` for one image read from stdin. In
folders and glob matches only files with an image extension count (jpg jpeg png webp bmp gif tif tiff, any letter
case) and hidden files and folders (".name") are skipped. Order: arguments in the order given, each folder sorted by
path; the same file reached twice (even spelled differently) is kept once, at its first position.

A list (`--files-from`) holds one path or URL per line (blank lines and "#" comments skipped); it is read as the
run goes, never whole, so a list of millions costs no more memory than a short one. Its lines are taken as they
are: not globbed, not searched, not deduplicated (that would need memory for every line).
"""

from __future__ import annotations

import errno
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

from mvit_cli.errors import ImageDecodeError, NoImagesError, UsageError
from mvit_cli.pipeline.fetch import is_url
from mvit_cli.pipeline.sources import ImageSource, ReadPolicy, Unreadable, Url, read_stream

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
STDIN = "-"
_GLOB_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class ImageInput:
    name: str  # how results name it: the path as reached from the argument, the URL, or "-" for stdin
    source: ImageSource  # the file, the URL, the bytes read from stdin, or why it cannot be read


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
    allow_empty: bool = False,
    policy: ReadPolicy = ReadPolicy(),
) -> list[ImageInput]:
    """The images the PATH arguments name, in order, without duplicates.

    Raises UsageError for a path that does not exist (and is no glob pattern), a symbolic link loop or a stdin
    that is a terminal, NoImagesError when the arguments name no image at all (unless `allow_empty`: more inputs
    come from a list). `warn` hears of glob patterns that match nothing. stdin is read within `policy`'s size
    limit.
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
                add(STDIN, _read_stdin(stdin, policy), STDIN)
            continue
        if is_url(arg):
            add(arg, Url(arg), arg)
            continue
        path = Path(arg)
        try:
            is_dir, exists = path.is_dir(), path.exists()
            if not exists and path.is_symlink():
                os.stat(path)  # a dangling link says "no such file"; a loop says so itself (ELOOP)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(f"{display_name(arg)}: too many levels of symbolic links (a link loop)") from None
            # e.g. a parent folder mvit may not enter: reported per image, the run goes on
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

    if not inputs and not allow_empty:
        names = ", ".join(display_name(str(p)) for p in paths) or "(none)"
        raise NoImagesError(
            f"no images found in {names}; give image files, folders or glob patterns "
            f"(extensions: {' '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))})"
        )
    return inputs


def _read_stdin(stdin: BinaryIO | None, policy: ReadPolicy) -> bytes | Unreadable:
    if stdin is None and sys.stdin is None:
        raise UsageError("'-' reads one image from stdin, but stdin is closed; pipe an image in (< photo.jpg)")
    stream = stdin if stdin is not None else sys.stdin.buffer
    if stdin is None and sys.stdin.isatty():
        raise UsageError("'-' reads one image from stdin, but stdin is a terminal; pipe an image in (< photo.jpg)")
    try:
        return read_stream(stream, policy)
    except ImageDecodeError as exc:  # e.g. /dev/zero on stdin: the image's error record, not the run's
        return Unreadable(str(exc))


def iter_list(stream: BinaryIO) -> Iterator[ImageInput]:
    """The inputs of a list (`--files-from`), one per line, read as they are asked for (module docstring).

    Lines are bytes turned into paths the way the OS does (a name that is not UTF-8 stays that name); a URL line
    is fetched, any other line is a file path, relative to the current folder.
    """
    for raw in stream:
        line = raw.rstrip(b"\r\n")
        text = os.fsdecode(line)
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        if is_url(text):
            yield ImageInput(text, Url(text))
        else:
            yield ImageInput(display_name(text), Path(text))
