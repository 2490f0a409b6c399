"""`mvit classify`: the top-k ImageNet classes of any number of images, for people or programs."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack, contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, Optional, TextIO

import typer

from mvit_cli.cli._options import (
    Backend,
    BackendOpt,
    BatchSizeOpt,
    CacheDirOpt,
    Device,
    DeviceOpt,
    OfflineOpt,
    SourceOpt,
    VariantOpt,
    WeightsOpt,
    WorkersOpt,
)
from mvit_cli.errors import EXIT_OK, EXIT_PARTIAL


class ClassifyFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class Decoding(str, Enum):
    exact = "exact"
    fast = "fast"


def register(app: typer.Typer) -> None:
    app.command("classify")(classify_command)


def classify_command(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (searched recursively), glob patterns (quoted: 'photos/*.jpg'), or - for "
            "one image on stdin.",
            metavar="PATH",
            show_default=False,
        ),
    ],
    variant: VariantOpt = None,
    source: SourceOpt = None,
    weights: WeightsOpt = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, max=1000, help="How many classes to report per image.")
    ] = 5,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = None,
    decode: Annotated[
        Decoding,
        typer.Option(
            "--decode",
            help="exact: the weights' reference preprocessing, pixel for pixel. fast: big JPEGs decoded at a "
            "reduced scale and only the crop resampled; ~4x faster for phone-camera photos, pixels within a few "
            "grey levels of exact.",
        ),
    ] = Decoding.exact,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = Backend.torch,
    output_format: Annotated[
        ClassifyFormat,
        typer.Option("--format", "-f", help="table (for people), or json, jsonl, csv (for programs)."),
    ] = ClassifyFormat.table,
    output_file: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", dir_okay=False, help="Write the results to this file instead of stdout."),
    ] = None,
    no_recursive: Annotated[
        bool, typer.Option("--no-recursive", help="Take only the images directly inside each folder.")
    ] = False,
    cache_dir: CacheDirOpt = None,
    offline: OfflineOpt = False,
) -> int:
    """Classify images: the top-k of the 1000 ImageNet classes for each, with probabilities.

    Any image Pillow reads (decided by content, not by name), in any number: folders are searched for jpg,
    jpeg, png, webp, bmp, gif, tif and tiff files (any letter case; hidden files skipped). Results come out
    in input order as each batch finishes. An image that cannot be decoded gets an error record and the
    others are still classified (exit code 3).

    Output formats: table (one table per image for up to 4 images, one row per image beyond); json (one
    array); jsonl (one record per line, streamed); csv (one row per image and rank; a failed image is one
    row with its error column set). Records: {"path", "predictions": [{"rank", "index", "wnid", "label",
    "probability"}]} or {"path", "error"}.

    Exit codes: 0 all classified, 1 usage or setup error, 3 some inputs failed.

    Examples:

      mvit classify cat.jpg

      mvit classify photos/ --variant xxs --top-k 3

      mvit classify 'shots/**/*.png' --format jsonl > results.jsonl

      curl -s https://example.com/cat.jpg | mvit classify - --format json

      mvit classify photos/ --weights mobilevit_s.safetensors --format csv --output results.csv
    """
    from mvit_cli import loading, runners
    from mvit_cli.cli import output
    from mvit_cli.pipeline import inputs
    from mvit_cli.pipeline.batching import num_batches
    from mvit_cli.pipeline.records import classify_batches

    # Inputs are found before the model is loaded: a typo is reported in a second, not after a download.
    images = inputs.expand_paths(paths, recursive=not no_recursive, warn=output.warn)
    if output_file is not None:
        _check_output_file(output_file, images)
    model = loading.load_model(
        variant.value if variant else None,
        source.value if source else None,
        weights,
        device.value,
        backend=backend.value, cache_dir=cache_dir,
        offline=offline,
        progress=output.progress_enabled(), warn=output.warn,
        expected_images=len(images),
    )
    batch_size = batch_size or runners.default_batch_size(model.device)
    workers = runners.default_workers() if workers is None else workers
    workers = min(workers, num_batches(len(images), batch_size))  # no idle decoding threads to start

    failed = 0
    with ExitStack() as stack:
        stream = stack.enter_context(_open_output(output_file))
        show_progress = num_batches(len(images), batch_size) > 1 and output.progress_enabled()
        advance, table_console = stack.enter_context(_progress(show_progress, len(images), stream))
        renderer = _renderer(output_format, stream, table_console, images)
        try:
            for records in classify_batches(images, model.run, model.preprocessing, top_k, batch_size, workers,
                                            fast_decode=decode is Decoding.fast):
                renderer.write(records)
                failed += sum("error" in record for record in records)
                advance(len(records))
        finally:
            renderer.close()  # also on Ctrl-C: what was written stays valid JSON / CSV

    if failed:
        output.warn(f"{failed} of {len(images)} inputs could not be classified; see their error records")
        return EXIT_PARTIAL
    return EXIT_OK


def _check_output_file(path: Path, images) -> None:
    """Refuse an --output that cannot be written, or that would overwrite an input, before any work is done."""
    from mvit_cli.errors import UsageError

    target = os.path.realpath(path)
    if any(isinstance(item.source, Path) and os.path.realpath(item.source) == target for item in images):
        raise UsageError(f"--output {path} is one of the input images; it would be overwritten")
    folder = Path(target).parent
    if not folder.is_dir():
        raise UsageError(f"--output {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--output {path}: the folder {folder} is not writable")


@contextmanager
def _open_output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8", newline="") as file:
        yield file


def _same_terminal() -> bool:
    """stdout and stderr are the same terminal: table output must then go above the progress bar."""
    try:
        return os.isatty(1) and os.isatty(2) and os.ttyname(1) == os.ttyname(2)
    except OSError:
        return False


@contextmanager
def _progress(enabled: bool, total: int, stream: TextIO):
    """Yields (advance(n), console for table output). The bar is on stderr and only when someone watches."""
    from mvit_cli.cli import output

    table_console = output.stdout_console(stream) if stream is not sys.stdout else output.stdout_console()
    if not enabled:
        yield (lambda n: None), table_console
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=output.stderr_console(), transient=True, redirect_stdout=False, redirect_stderr=False,
    )
    with bar:
        task = bar.add_task("classifying", total=total)
        # On a shared terminal, rich prints above its live bar only through the bar's own console.
        console = bar.console if stream is sys.stdout and _same_terminal() else table_console
        yield (lambda n: bar.advance(task, n)), console


def _renderer(output_format: ClassifyFormat, stream: TextIO, console, images):
    from mvit_cli.cli import render

    if output_format is ClassifyFormat.table:
        return render.TableRenderer(console, len(images), max(len(item.name) for item in images))
    return render.MACHINE_RENDERERS[output_format.value](stream)
