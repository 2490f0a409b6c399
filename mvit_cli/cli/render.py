"""Renderers for `mvit classify` results: table (people), json, jsonl, csv (programs).

Every renderer gets the records of one batch at a time (`write`), then `close()` once. Records are the dicts of
`mvit_cli.classify`. Machine formats are plain text written straight to the stream (no rich, no colour):

- json:  one array of records (written as it grows; valid JSON once the run ends);
- jsonl: one record per line, flushed after every batch;
- csv:   header `path,rank,index,wnid,label,probability,error`; one row per image and rank; an image that failed
         is one row with its path and `error`, the prediction columns empty. Probabilities are written exactly as
         in JSON (shortest repr of the float), so the formats agree to the last digit.
"""

from __future__ import annotations

import csv
import json
from typing import Any, Protocol, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mvit_cli.cli.output import printable

Record = dict[str, Any]

CSV_COLUMNS = ("path", "rank", "index", "wnid", "label", "probability", "error")
# Up to this many images, `table` shows one table per image; beyond, one compact row per image.
DETAILED_TABLE_MAX_IMAGES = 4
BAR_WIDTH = 20
LABEL_WIDTH = 30  # the longest class name, "American Staffordshire terrier"
PROB_WIDTH = 6  # "100.0%"
MAX_PATH_WIDTH = 50  # the image column's widest; also its width when the inputs are streamed (uncounted)


class Renderer(Protocol):
    def write(self, records: list[Record]) -> None: ...

    def close(self) -> None: ...


class JsonRenderer:
    """One JSON array, indented; each record is written as its batch arrives."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.count = 0

    def write(self, records: list[Record]) -> None:
        for record in records:
            text = json.dumps(record, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            self.stream.write(("[\n  " if self.count == 0 else ",\n  ") + text)
            self.count += 1
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n]\n" if self.count else "[]\n")
        self.stream.flush()


class JsonlRenderer:
    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, records: list[Record]) -> None:
        for record in records:
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class CsvRenderer:
    def __init__(self, stream: TextIO, header: bool = True):
        self.stream = stream
        self.writer = csv.writer(stream, lineterminator="\n")
        if header:  # not when appending to a resumed file that has it
            self.writer.writerow(CSV_COLUMNS)

    def write(self, records: list[Record]) -> None:
        for record in records:
            if "error" in record:
                self.writer.writerow((record["path"], "", "", "", "", "", record["error"]))
                continue
            for p in record["predictions"]:
                self.writer.writerow(
                    (record["path"], p["rank"], p["index"], p["wnid"], p["label"], repr(p["probability"]), "")
                )
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def probability_text(probability: float) -> str:
    """A probability as people read it: "87.3%"."""
    return f"{100 * probability:.1f}%"


def bar(probability: float, width: int = BAR_WIDTH) -> str:
    """A bar of `width` cells, with eighth-cell resolution."""
    eighths = round(probability * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[rest]


class TableRenderer:
    """Rich tables: one per image for a few images, else one compact row per image (streamed per batch)."""

    def __init__(self, console: Console, num_images: int | None, path_width: int | None):
        """`path_width`: the longest input name, None when the inputs are streamed (not known up front).

        On a terminal, rows fit its width: a long path is cut at the front, other predictions end in "...".
        Redirected to a file or a pipe, nothing is ever cut."""
        self.console = console
        self.detailed = num_images is not None and num_images <= DETAILED_TABLE_MAX_IMAGES
        self.fit = console.is_terminal
        width = max(path_width or MAX_PATH_WIDTH, len("image"))
        self.path_width = min(width, MAX_PATH_WIDTH) if self.fit else (width if path_width is not None else None)
        self.first = True

    def write(self, records: list[Record]) -> None:
        if self.detailed:
            for record in records:
                self._detailed(record)
        elif records:
            self._compact(records)
        self.first = False

    def _detailed(self, record: Record) -> None:
        if "error" in record:
            self.console.print(Text.assemble((printable(record["path"]), "bold"), ": ",
                                             ("error: " + printable(record["error"]), "red")))
            return
        # Paths go in as Text, never as str: rich would read "[...]" in a file name as markup.
        table = Table(title=Text(printable(record["path"])), title_justify="left", title_style="bold",
                      box=box.SIMPLE_HEAD)
        table.add_column("#", justify="right")
        table.add_column("label")
        table.add_column("wnid", style="dim")
        table.add_column("probability", justify="right")
        table.add_column("", style="cyan", min_width=BAR_WIDTH)
        for p in record["predictions"]:
            table.add_row(str(p["rank"]), p["label"], p["wnid"], probability_text(p["probability"]),
                          bar(p["probability"]))
        self.console.print(table)

    def _compact(self, records: list[Record]) -> None:
        # Fixed column widths and the header only on the first batch: the per-batch tables read as one.
        table = Table(box=None, show_header=self.first, header_style="bold", pad_edge=False, collapse_padding=True)
        # Every width is fixed (on a terminal the last column takes what is left), so batches line up.
        fixed = self.path_width or 0
        next_width = max(12, self.console.width - fixed - LABEL_WIDTH - PROB_WIDTH - 3) if self.fit else None
        table.add_column("image", width=self.path_width, no_wrap=True)
        table.add_column("top-1", width=LABEL_WIDTH, overflow="ellipsis", no_wrap=True)  # the longest label fits
        table.add_column("prob", justify="right", width=PROB_WIDTH, no_wrap=True)
        table.add_column("next", width=next_width, style="dim", overflow="ellipsis" if self.fit else "ignore",
                         no_wrap=True)
        for record in records:
            if "error" in record:
                # The reason may wrap (it says what is wrong); predictions stay one line per image.
                reason = Text(printable(record["error"]), style="red", no_wrap=not self.fit, overflow="fold")
                table.add_row(Text(self._fit(record["path"])), Text("error", style="red"), "", reason)
                continue
            top, *others = record["predictions"]
            rest = ", ".join(f"{p['label']} {probability_text(p['probability'])}" for p in others)
            table.add_row(Text(self._fit(record["path"])), top["label"], probability_text(top["probability"]),
                          Text(rest))
        self.console.print(table)

    def _fit(self, path: str) -> str:
        """A path cut at the front, so that one image stays one line and its file name stays visible."""
        path = printable(path)
        if not self.fit or len(path) <= self.path_width:
            return path
        return "…" + path[len(path) - self.path_width + 1:]

    def close(self) -> None:
        pass


MACHINE_RENDERERS = {"json": JsonRenderer, "jsonl": JsonlRenderer, "csv": CsvRenderer}
