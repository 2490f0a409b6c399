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
    Dtype,
    DtypeOpt,
    DownloadTimeoutOpt,
    FilesFromOpt,
    MaxDownloadOpt,
    OfflineOpt,
    SourceOpt,
    VariantOpt,
    WeightsOpt,
    WorkersOpt,
)
from mvit_cli.cli.resume import not_done
from mvit_cli.distributed import broadcast_from_main
from mvit_cli.pipeline.batching import num_batches
from mvit_cli.safe_output import check_distinct, check_output, identity
from mvit_cli.errors import EXIT_OK, EXIT_PARTIAL, UsageError


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


# Formats whose files can be resumed: one record per line (jsonl) or per rank row (csv), appended batch by batch.
RESUMABLE = (ClassifyFormat.jsonl, ClassifyFormat.csv)


def classify_command(
    paths: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Image files, folders (searched recursively), glob patterns (quoted: 'photos/*.jpg'), http(s) "
            "URLs, or - for one image on stdin.",
            metavar="PATH",
            show_default=False,
        ),
    ] = None,
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
    dtype: DtypeOpt = Dtype.float32,
    output_format: Annotated[
        ClassifyFormat,
        typer.Option("--format", "-f", help="table (for people), or json, jsonl, csv (for programs)."),
    ] = ClassifyFormat.table,
    output_file: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", dir_okay=False, help="Write the results to this file instead of stdout."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Keep the records already in --output (jsonl or csv), skip their inputs and "
                     "append the rest: a killed job continues where it stopped."),
    ] = False,
    files_from: FilesFromOpt = None,
    max_download_mb: MaxDownloadOpt = 50.0,
    download_timeout: DownloadTimeoutOpt = 30.0,
    no_recursive: Annotated[
        bool, typer.Option("--no-recursive", help="Take only the images directly inside each folder.")
    ] = False,
    report_file: Annotated[
        Optional[Path],
        typer.Option("--report", dir_okay=False, help="Also write an HTML report: a thumbnail of every image with "
                     "its top-k as bars, failed inputs with their errors, a summary; filter and sort in the page. "
                     "One self-contained file that opens offline."),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="With --report: a Grad-CAM heatmap of each image's top-1 class beside its "
                     "thumbnail (one backward pass per image: a few times slower)."),
    ] = False,
    cache_dir: CacheDirOpt = None,
    offline: OfflineOpt = False,
) -> int:
    """Classify images: the top-k of the 1000 ImageNet classes for each, with probabilities.

    Any image Pillow reads (decided by content, not by name), in any number: folders are searched for jpg,
    jpeg, png, webp, bmp, gif, tif and tiff files (any letter case; hidden files skipped); http(s) URLs are
    fetched (size and time limited); --files-from reads one path or URL per line, streamed. Results come out
    in input order as each batch finishes. An input that cannot be read or decoded gets an error record and
    the others are still classified (exit code 3).

    Output formats: table (one table per image for up to 4 images, one row per image beyond); json (one
    array); jsonl (one record per line, streamed); csv (one row per image and rank; a failed image is one
    row with its error column set). Records: {"path", "predictions": [{"rank", "index", "wnid", "label",
    "probability"}]} or {"path", "error"}.

    Long jobs: --output FILE writes batch by batch; after a kill, the same command with --resume skips what
    FILE holds and appends the rest. Under torchrun each process classifies its share and rank 0 writes FILE,
    in input order.

    --report FILE.html writes a page to look at the results: thumbnails (at most 128 px, made from the decode
    the classification used) with their top-k as bars, filter by class, sort by confidence; --explain adds a
    Grad-CAM heatmap per image. About 5.4 KB per image (10,000 photos: 54 MB).

    Exit codes: 0 all classified, 1 usage or setup error, 3 some inputs failed, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM); output written so far stays valid.

    Examples:

      mvit classify cat.jpg

      mvit classify photos/ --variant xxs --top-k 3

      mvit classify 'shots/**/*.png' --format jsonl > results.jsonl

      curl -s https://example.com/cat.jpg | mvit classify - --format json

      mvit classify --files-from list.txt --format jsonl -o out.jsonl --resume

      mvit classify photos/ --report photos.html --explain

      torchrun --nproc-per-node 4 -m mvit_cli classify photos/ --format jsonl -o out.jsonl
    """
    from mvit_cli import api
    from mvit_cli.cli import output
    from mvit_cli.cli._jobs import Job, gather_inputs
    from mvit_cli.pipeline.sources import ReadPolicy

    if resume and (output_file is None or output_format not in RESUMABLE):
        raise UsageError("--resume continues an --output FILE written as jsonl or csv; give both")
    if explain and report_file is None:
        raise UsageError("--explain puts heatmaps into the --report; give --report FILE.html too "
                         "(or see one image's heatmap with mvit explain IMAGE)")
    if resume and report_file is not None:
        raise UsageError("--report describes the images of one run, and --resume skips those done before; "
                         "make the report in a run without --resume")
    job = Job(device.value)
    report = None
    try:
        # Inputs are found before the model is loaded: a typo is reported in a second, not after a download.
        inputs = gather_inputs(paths or [], files_from, not no_recursive, output.warn, ReadPolicy())
        check_distinct({"--output": output_file, "--report": report_file})
        for role, path in (("--output", output_file), ("--report", report_file)):
            if path is not None:
                _check_output(path, role, inputs, weights)
        outputs = (identity(path) for path in (output_file, report_file) if path is not None)
        forbidden = frozenset(key for key in outputs if key is not None)
        done = _already_done(output_file, output_format, top_k) if resume and job.is_main else None
        skip = broadcast_from_main(done.paths if done else None, job.distributed)
        classifier = api.load(
            variant.value if variant else None, source.value if source else None, weights, job.device,
            backend.value, cache_dir, offline, dtype.value, warn=output.warn,
            progress=job.is_main and output.progress_enabled(),
            expected_images=inputs.count,
        )
        if dtype is Dtype.auto and job.is_main:
            output.warn(f"--dtype auto: running in {classifier.dtype}")
        report = _new_report(classifier, top_k, decode, explain) if report_file and job.is_main else None
        with job.signals(), inputs.stream() as stream:
            todo = not_done(stream, skip) if skip else stream
            batches = classifier.iter_classify_batches(
                todo, top_k, batch_size, workers, fast_decode=decode is Decoding.fast,
                max_download_bytes=int(max_download_mb * 1e6),
                download_timeout=download_timeout, forbidden_files=forbidden, job=job.distributed,
                total=inputs.count,  # the whole job's size decides how the model runs: the same records resumed
                thumbnail_side=_thumbnail_side() if report_file else None, heatmaps=explain,
            )
            try:
                written, failed = _write(batches, output_format, output_file, done, inputs, job, classifier,
                                         batch_size, report)
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the report shows what was done, like the other outputs
                if report is not None:
                    report.write(report_file, partial=True)
                raise
        if report is not None:
            report.write(report_file, partial=job.stopped_code is not None)
            output.warn(f"report written to {report_file}")
    finally:
        job.close()
        if report is not None:
            report.close()

    if job.stopped_code is not None:
        return job.stopped_code
    if failed:
        output.warn(f"{failed} of {written} inputs could not be classified; see their error records")
        return EXIT_PARTIAL
    return EXIT_OK


def _check_output(path: Path, role: str, inputs, weights: Path | None) -> None:
    """Refuse an output that could harm a file, before any work is done (`safe_output`)."""
    protected = inputs.identities() | {identity(weights)} if weights else inputs.identities()
    check_output(path, role, protected, refuse_images=True)


def _thumbnail_side() -> int:
    from mvit_cli.pipeline.thumbnails import THUMBNAIL_MAX_SIDE

    return THUMBNAIL_MAX_SIDE


def _new_report(classifier, top_k: int, decode: Decoding, explain: bool):
    """The report of this run (`reports.classify_report`); its clock starts now."""
    from mvit_cli.reports.classify_report import ClassifyReport, RunFacts

    model = classifier.model
    facts = RunFacts(model.variant, model.source, str(model.weights_path), model.checkpoint_format,
                     str(model.device), model.backend, top_k, decode.value, explain, model.dtype)
    return ClassifyReport(facts, _thumbnail_side())


def _already_done(output_file: Path, output_format: ClassifyFormat, top_k: int):
    from mvit_cli.cli import output
    from mvit_cli.cli.resume import scan

    done = scan(output_file, output_format.value, top_k)
    if done.records:
        output.warn(f"resuming: {done.records:,} input(s) already in {output_file} are skipped")
    if done.keep_bytes < done.size:
        output.warn(f"resuming: dropped {done.size - done.keep_bytes} byte(s) of a record cut short in {output_file}")
    return done


def _write(batches, output_format: ClassifyFormat, output_file: Path | None, done, inputs, job, classifier,
           batch_size: int | None, report=None) -> tuple[int, int]:
    """Render every batch on the main process (and add it to the `report`); (inputs written, inputs that
    failed)."""
    from mvit_cli import runners
    from mvit_cli.cli import output

    if not job.is_main:
        for _ in batches:  # the other processes only compute (and take part in each step's gather)
            pass
        return 0, 0
    written = failed = 0
    total = inputs.count
    with ExitStack() as stack:
        stream = stack.enter_context(_open_output(output_file, done))
        batch_size = batch_size or runners.default_batch_size(classifier.device)
        many = total is None or num_batches(total, batch_size) > 1
        show_progress = many and output.progress_enabled()
        advance, table_console = stack.enter_context(_progress(show_progress, total, stream))
        renderer = _renderer(output_format, stream, table_console, inputs, header=not (done and done.header))
        try:
            for results in batches:
                renderer.write([result.to_dict() for result in results])
                if report is not None:
                    report.add(results)
                written += len(results)
                failed += sum(not result.ok for result in results)
                advance(len(results))
        finally:
            renderer.close()  # also on Ctrl-C: what was written stays valid JSON / CSV
            if report is not None:
                report.finish()
    return written, failed


@contextmanager
def _open_output(path: Path | None, done) -> Iterator[TextIO]:
    """stdout, the --output file (truncated), or with --resume the file cut to its complete records and
    opened for appending."""
    if path is None:
        yield sys.stdout
        return
    if done is None:
        with open(path, "w", encoding="utf-8", newline="") as file:
            yield file
        return
    with open(path, "a", encoding="utf-8", newline="") as file:
        if done.keep_bytes < done.size:
            file.truncate(done.keep_bytes)  # a record the kill cut short
        yield file


def _same_terminal() -> bool:
    """stdout and stderr are the same terminal: table output must then go above the progress bar."""
    try:
        return os.isatty(1) and os.isatty(2) and os.ttyname(1) == os.ttyname(2)
    except OSError:
        return False


@contextmanager
def _progress(enabled: bool, total: int | None, stream: TextIO):
    """Yields (advance(n), console for table output). The bar is on stderr and only when someone watches."""
    from mvit_cli.cli import output

    table_console = output.stdout_console(stream) if stream is not sys.stdout else output.stdout_console()
    with output.ProgressBar("classifying", total, enabled) as bar:
        # On a shared terminal, rich prints above its live bar only through the bar's own console.
        shared = bar.console is not None and stream is sys.stdout and _same_terminal()
        yield bar.advance, bar.console if shared else table_console


def _renderer(output_format: ClassifyFormat, stream: TextIO, console, inputs, header: bool = True):
    from mvit_cli.cli import render
    from mvit_cli.cli.output import printable

    if output_format is ClassifyFormat.table:
        widest = max((len(printable(item.name)) for item in inputs.named), default=None)
        return render.TableRenderer(console, inputs.count, widest if inputs.count is not None else None)
    if output_format is ClassifyFormat.csv:
        return render.CsvRenderer(stream, header=header)
    return render.MACHINE_RENDERERS[output_format.value](stream)
