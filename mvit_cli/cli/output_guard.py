"""Output files that must never destroy an input or each other, decided by file identity before anything is opened.

Paths are not compared as strings, not even resolved ones: a hard link has its own name and path but is the same
file, so truncating it destroys the input. An existing path is identified by its device and inode (after
following symlinks, as `open(path, "w")` follows them); a path that does not exist yet by where it would be
created (symlinks in it resolved), since two such paths may still name one future file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from mvit_cli.errors import UsageError

FileKey = tuple  # ("inode", st_dev, st_ino) or ("path", resolved path)


def file_key(path: Path | str) -> FileKey:
    """What `path` names: the file it reaches if there is one, else the place it would be created."""
    try:
        status = os.stat(path)  # follows symlinks, like open() for writing does
    except (FileNotFoundError, NotADirectoryError):
        return ("path", os.path.realpath(path))
    return ("inode", status.st_dev, status.st_ino)


def refuse_unsafe_outputs(outputs: Mapping[str, Path | None], inputs: Iterable[Path]) -> None:
    """Raise UsageError when an output is one of the inputs, or two outputs are one file.

    `outputs` maps an option name (shown in the message) to its path or None. Inputs that cannot be stat'ed
    are skipped: they are no file an output could be.
    """
    given = {option: Path(path) for option, path in outputs.items() if path is not None}
    if not given:
        return
    keys = {option: file_key(path) for option, path in given.items()}
    options = list(given)
    for i, first in enumerate(options):
        for second in options[i + 1:]:
            if keys[first] == keys[second]:
                raise UsageError(f"{first} {given[first]} and {second} {given[second]} are the same file; "
                                 "each needs a file of its own")
    existing = {key: option for option, key in keys.items() if key[0] == "inode"}
    if not existing:
        return
    for path in inputs:
        try:
            status = os.stat(path)
        except OSError:
            continue
        option = existing.get(("inode", status.st_dev, status.st_ino))
        if option is not None:
            raise UsageError(f"{option} {given[option]} is the input {path}; it would be overwritten")
