"""What `classify` and `embed` share around the model: gathering the inputs (PATH arguments and `--files-from`),
joining a torchrun job, stopping on signals, and the output file's safety checks."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import BinaryIO, Iterator

from mvit_cli import distributed
from mvit_cli.distributed import Distributed
from mvit_cli.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, UsageError
from mvit_cli.pipeline.inputs import STDIN, ImageInput, expand_paths, iter_list
from mvit_cli.runners import TRACE_MIN_IMAGES

# A list shorter than this is read whole before the run: its size then decides, as for named inputs, that the job is
# small (runners.TRACE_MIN_IMAGES).
SHORT_LIST = TRACE_MIN_IMAGES
from mvit_cli.safe_output import identity


@dataclass
class Inputs:
    """The inputs of a run: those named as arguments (listed, counted, deduplicated), then those of a list
    (streamed, uncounted)."""

    named: list[ImageInput]
    files_from: Path | None
    listed_head: list[ImageInput] | None = None  # a short list read whole, or a long one's first entries
    list_is_short: bool = False  # the list holds fewer than `SHORT_LIST` entries, all in `listed_head`

    @property
    def count(self) -> int | None:
        """How many inputs there are, when known (a list is counted only when it is short). It decides how the
        model runs (a small job skips tracing), so it is the same for the same images whether they are named,
        listed in a file or piped in: the records are too."""
        if self.files_from is None:
            return len(self.named)
        return len(self.named) + len(self.listed_head or []) if self.list_is_short else None

    def identities(self) -> set[tuple[int, int]]:
        """(device, inode) of every named input file: what an output must not be."""
        found = (identity(item.source) for item in self.named if isinstance(item.source, Path))
        return {key for key in found if key is not None}

    @contextlib.contextmanager
    def stream(self) -> Iterator[Iterator[ImageInput]]:
        """Every input in order, the list read line by line as the run goes."""
        if self.files_from is None or self.list_is_short:
            yield chain(self.named, self.listed_head or [])
            return
        with _open_list(self.files_from) as lines:
            rest = iter_list(lines)
            if str(self.files_from) == STDIN:  # its first entries were read already: they come first
                yield chain(self.named, self.listed_head or [], rest)
            else:
                yield chain(self.named, rest)


def gather_inputs(paths: list[str], files_from: Path | None, recursive: bool, warn, policy) -> Inputs:
    """The PATH arguments expanded (an error names a missing path at once, before the model loads), plus the
    list, which is only checked to be readable here."""
    if files_from is not None and str(files_from) == STDIN and STDIN in paths:
        raise UsageError("stdin cannot be both the list (--files-from -) and an image (-); give the image a file")
    if not paths and files_from is None:
        raise UsageError("give at least one PATH, or a list of them with --files-from FILE")
    named = expand_paths(paths, recursive=recursive, warn=warn, allow_empty=files_from is not None,
                         policy=policy)
    if files_from is None:
        return Inputs(named, None)
    try:
        with _open_list(files_from) as lines:
            # Whether the list is short decides how the model runs (see `count`); finding out costs reading
            # at most SHORT_LIST entries (kept, when they come from stdin and cannot be read again).
            head = list(islice(iter_list(lines), SHORT_LIST))
            short = len(head) < SHORT_LIST
    except OSError as exc:
        raise UsageError(f"--files-from {files_from}: {(exc.strerror or str(exc)).lower()}") from None
    return Inputs(named, files_from, head if short or str(files_from) == STDIN else None, short)


@contextlib.contextmanager
def _open_list(files_from: Path) -> Iterator[BinaryIO]:
    if str(files_from) == STDIN:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("--files-from - reads the list from stdin, but stdin is a terminal; pipe a list in")
        yield sys.stdin.buffer
        return
    with open(files_from, "rb") as file:
        yield file


class Job:
    """This process's part in the run: alone, or one of a torchrun job (then rank 0 writes the output)."""

    def __init__(self, device: str):
        self.distributed: Distributed | None
        self.distributed, self.device = distributed.start_distributed(device)
        distributed.stop.clear()

    @property
    def is_main(self) -> bool:
        return self.distributed is None or self.distributed.is_main

    @property
    def world_size(self) -> int:
        return 1 if self.distributed is None else self.distributed.world_size

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Under torchrun, Ctrl-C and SIGTERM ask every process to stop after the current step (see
        distributed.py) instead of raising in one of them; alone, they raise as usual."""
        if self.distributed is None or threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: object) -> None:
            distributed.stop.request(signum)

        saved = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    @property
    def stopped_code(self) -> int | None:
        """The exit code of a torchrun job stopped by a signal (130 Ctrl-C, 143 SIGTERM), else None."""
        if self.distributed is None or not distributed.stop.event.is_set():
            return None
        return EXIT_TERMINATED if distributed.stop.signal == signal.SIGTERM else EXIT_INTERRUPTED

    def close(self) -> None:
        distributed.stop_distributed(self.distributed)
