"""What an input image can be, and how its bytes are read without harm.

An input is a file path, an http(s) URL, raw bytes (stdin, an upload), a Pillow image or a uint8 array, or an
`Unreadable` (known bad before reading, e.g. a folder mvit may not list). Reading is where hostile inputs do
damage, so every read is bounded:

- Only regular files are read. A FIFO would block `open()` until some writer appears (forever), a device such as
  /dev/zero or /dev/urandom would fill memory at gigabytes a second, a socket or a terminal would wait for
  input: each is refused by `stat` before it is opened, and opened non-blocking so that one swapped in after the
  `stat` cannot block either (checked again with `fstat`).
- A file larger than `max_file_bytes` (default 1 GiB, far above any real image: Pillow refuses images above
  ~179 MP anyway) is refused, and the limit holds while reading too (a file may grow while it is read).
- A file that is one of the run's outputs (compared by device and inode, so a hard link or a symlink to it is
  caught too) is never read: it is being written.
- URLs are fetched by `fetch.py`: http(s) only, bounded in size and time, cancellable.
- Reads stop when the run is cancelled (Ctrl-C): nothing waits on a blocked read at shutdown.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from mvit_cli.errors import ImageDecodeError
from mvit_cli.pipeline.fetch import FetchError, FetchLimits, fetch

MAX_FILE_BYTES = 1 << 30  # 1 GiB
_READ_CHUNK = 1 << 20

# What `stat` says a path is, for the error record of anything that is not a regular file.
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


@dataclass(frozen=True)
class Url:
    """An http(s) URL to fetch the image from."""

    url: str


@dataclass(frozen=True)
class Unreadable:
    """An input found unreadable before decoding (e.g. a folder mvit may not list): it becomes an error record
    like any undecodable image, at its place in the input order."""

    reason: str


# A file, a URL, the raw bytes of one image, a decoded image, pixels, or a known failure.
ImageSource = Union[Path, Url, bytes, Image.Image, np.ndarray, Unreadable]


@dataclass(frozen=True)
class ReadPolicy:
    """Bounds on reading one input; shared by every input of a run."""

    max_file_bytes: int = MAX_FILE_BYTES
    fetch_limits: FetchLimits = field(default_factory=FetchLimits)
    # (st_dev, st_ino) of files that must never be read: the run's own outputs.
    forbidden: frozenset[tuple[int, int]] = frozenset()
    cancelled: threading.Event | None = None


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_file(path: Path, policy: ReadPolicy = ReadPolicy()) -> bytes:
    """The bytes of a regular file, refusing anything else (module docstring). Raises ImageDecodeError."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ImageDecodeError(f"not an image file: it is {_kind(st.st_mode)}")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {(exc.strerror or str(exc)).lower()}") from None
    with os.fdopen(fd, "rb", buffering=0) as file:
        st = os.fstat(fd)  # what was opened, in case the path changed after the first stat
        if not stat.S_ISREG(st.st_mode):
            raise ImageDecodeError(f"not an image file: it is {_kind(st.st_mode)}")
        if (st.st_dev, st.st_ino) in policy.forbidden:
            raise ImageDecodeError("not read: this file is one of the run's outputs")
        if st.st_size > policy.max_file_bytes:
            raise ImageDecodeError(_too_large(st.st_size, policy.max_file_bytes))
        return _read_bounded(file, policy, what="file")


def read_stream(stream, policy: ReadPolicy = ReadPolicy()) -> bytes:
    """All bytes of a stream such as stdin, at most `max_file_bytes` of them. Raises ImageDecodeError."""
    return _read_bounded(stream, policy, what="input")


def _read_bounded(stream, policy: ReadPolicy, what: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        if policy.cancelled is not None and policy.cancelled.is_set():
            raise ImageDecodeError("cancelled")
        try:
            chunk = stream.read(min(_READ_CHUNK, policy.max_file_bytes + 1 - total))
        except OSError as exc:
            raise ImageDecodeError(f"cannot read {what}: {(exc.strerror or str(exc)).lower()}") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > policy.max_file_bytes:
            raise ImageDecodeError(_too_large(None, policy.max_file_bytes, what))


def _too_large(size: int | None, limit: int, what: str = "file") -> str:
    shown = f"{size:,} bytes, " if size is not None else ""
    return f"{what} too large: {shown}over the {limit >> 20:,} MiB limit for one image"


def read_source(source: ImageSource, policy: ReadPolicy = ReadPolicy()) -> bytes | Image.Image | np.ndarray:
    """The encoded bytes of a file, URL or bytes input; a Pillow image or an array as given. Raises
    ImageDecodeError for anything unreadable, with the reason for the error record."""
    if isinstance(source, Unreadable):
        raise ImageDecodeError(source.reason)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, Url):
        try:
            return fetch(source.url, policy.fetch_limits, policy.cancelled)
        except FetchError as exc:
            raise ImageDecodeError(f"cannot fetch: {exc}") from None
    if isinstance(source, (Image.Image, np.ndarray)):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_file(Path(source), policy)
    raise ImageDecodeError(f"not an image input: {type(source).__name__}")
