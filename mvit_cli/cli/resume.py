"""`classify --output FILE --resume`: what FILE already holds, so that a killed job picks up where it stopped.

FILE must be what `mvit classify` writes in that format (jsonl or csv) with the same top-k; anything else is
refused with nothing in it changed. Complete records are kept; what a kill left half-written is dropped: a last
line without its newline (the process died inside a write), and in CSV the rows of a last image that has fewer
than k ranks (the process died between the rows of one image). The caller truncates FILE to `keep_bytes` and
appends from there, so the finished file holds every input exactly once.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mvit_cli.cli.render import CSV_COLUMNS
from mvit_cli.errors import UsageError

_HEADER = ",".join(CSV_COLUMNS) + "\n"


@dataclass
class Done:
    """What an output file already holds."""

    paths: Counter[str] = field(default_factory=Counter)  # inputs with a complete record, and how many times
    records: int = 0
    keep_bytes: int = 0  # the file's length without any torn tail
    size: int = 0  # the file's length as found
    header: bool = False  # CSV: the header line is there


class NotAnOutputFile(UsageError):
    """--resume was pointed at a file that is not a classify output of the requested format and top-k."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"--resume: {path} is not a `mvit classify` output to resume: {reason}; "
                         "nothing in it was changed")


def scan(path: Path, fmt: str, top_k: int) -> Done:
    """What `path` holds (module docstring). A missing or empty file holds nothing. Raises NotAnOutputFile."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return Done()
    with open(path, "rb") as file:
        done = (_scan_jsonl if fmt == "jsonl" else _scan_csv)(file, path, top_k)
    done.size = path.stat().st_size
    return done


def _scan_jsonl(file, path: Path, top_k: int) -> Done:
    done = Done()
    for number, line in enumerate(file, start=1):
        if not line.endswith(b"\n"):
            break  # torn: the write of this last line never finished
        try:
            record = json.loads(line)
        except ValueError:
            raise NotAnOutputFile(path, f"line {number} is not JSON") from None
        _check_record(record, path, number, top_k)
        done.paths[record["path"]] += 1
        done.records += 1
        done.keep_bytes += len(line)
    return done


def _check_record(record: object, path: Path, number: int, top_k: int) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise NotAnOutputFile(path, f"line {number} is not a classify record")
    if "error" in record:
        if set(record) != {"path", "error"}:
            raise NotAnOutputFile(path, f"line {number} is not a classify record")
        return
    predictions = record.get("predictions")
    if set(record) != {"path", "predictions"} or not isinstance(predictions, list):
        raise NotAnOutputFile(path, f"line {number} is not a classify record")
    if len(predictions) != top_k:
        raise NotAnOutputFile(path, f"it was written with --top-k {len(predictions)}, not {top_k}")


class _Lines:
    """The file's lines as text for the csv reader, remembering how far they reach and whether the last one was
    complete (a line without its newline was torn by a kill)."""

    def __init__(self, file, start: int):
        self.file, self.end, self.complete = file, start, True

    def __iter__(self) -> Iterator[str]:
        for line in self.file:
            self.end += len(line)
            self.complete = line.endswith(b"\n")
            yield line.decode("utf-8", "surrogateescape")


def _scan_csv(file, path: Path, top_k: int) -> Done:
    done = Done()
    header = file.readline()
    if header != _HEADER.encode():
        if not header.endswith(b"\n") and _HEADER.encode().startswith(header):
            return done  # killed while writing the header: start over
        raise NotAnOutputFile(path, "its first line is not the classify CSV header")
    done.header, done.keep_bytes = True, len(header)
    lines = _Lines(file, len(header))
    rows = csv.reader(lines)
    group: str | None = None  # path of the image whose rank rows are being read
    ranks = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error:
            if not lines.complete:
                break  # a quoted field torn by the kill
            raise NotAnOutputFile(path, f"row {rows.line_num} is not valid CSV") from None
        if not lines.complete:
            break  # torn last row
        if len(row) != len(CSV_COLUMNS):
            raise NotAnOutputFile(path, f"row {rows.line_num} does not have the {len(CSV_COLUMNS)} classify columns")
        image, rank, *_, error = row
        starts_record = bool(error) or rank == "1"
        if starts_record and group is not None:
            raise NotAnOutputFile(path, f"{group} has {ranks} ranks, not {top_k} "
                                        f"(was it written with --top-k {ranks}?)")
        if error:
            done.paths[image] += 1
            done.records += 1
            done.keep_bytes = lines.end
            continue
        if not rank.isdigit() or (not starts_record and (image != group or int(rank) != ranks + 1)):
            raise NotAnOutputFile(path, f"row {rows.line_num} breaks the rank order of the rows before it")
        group, ranks = image, int(rank)
        if ranks == top_k:
            done.paths[image] += 1
            done.records += 1
            done.keep_bytes = lines.end
            group, ranks = None, 0
    # A last image with fewer than k rank rows was cut off between its rows: dropped (keep_bytes ends before it).
    return done


def not_done(stream, done: Counter[str]):
    """The inputs of `stream` without those `done` holds: by path, as many times as it holds each (a list may
    name an image twice; its second record is not the first's)."""
    left = Counter(done)
    for item in stream:
        if left[item.name]:
            left[item.name] -= 1
            continue
        yield item
