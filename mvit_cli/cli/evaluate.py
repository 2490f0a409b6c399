"""`mvit eval`: ImageNet top-1 / top-5 of a validation folder, beside the published numbers.

The module is named `evaluate` because `eval` is a Python builtin; the command is registered as "eval".
"""

from __future__ import annotations

import csv
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, Optional, TextIO

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
    TableOrJson,
    TableOrJsonOpt,
    VariantOpt,
    WeightsOpt,
    WorkersOpt,
)
from mvit_cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def eval_command(
    directory: Annotated[
        Path,
        typer.Argument(help="Validation folder: class folders named by WordNet id, or flat images with a label "
                       "file beside or above it.", metavar="DIR", exists=True, file_okay=False,
                       resolve_path=True),
    ],
    variant: VariantOpt = None,
    source: SourceOpt = None,
    weights: WeightsOpt = None,
    labels: Annotated[
        Optional[Path],
        typer.Option("--labels", help="Label file for a flat folder: the devkit's "
                     "ILSVRC2012_validation_ground_truth.txt or Kaggle's LOC_val_solution.csv (default: looked "
                     "for beside DIR and up to 4 folders above it).", exists=True, dir_okay=False, resolve_path=True),
    ] = None,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = Backend.torch,
    limit: Annotated[
        Optional[int],
        typer.Option("--limit", min=1, help="Evaluate a fixed, class-balanced subset of this many images."),
    ] = None,
    output_format: TableOrJsonOpt = TableOrJson.table,
    predictions: Annotated[
        Optional[Path],
        typer.Option("--predictions", dir_okay=False,
                     help="Write a CSV row per image: path, target index, top-5 indices and probabilities."),
    ] = None,
    per_class: Annotated[
        Optional[Path],
        typer.Option("--per-class", dir_okay=False, help="Write per-class top-1 / top-5 accuracy as CSV."),
    ] = None,
    cache_dir: CacheDirOpt = None,
    offline: OfflineOpt = False,
) -> int:
    """Measure ImageNet top-1 / top-5 accuracy on a validation folder, next to the published numbers.

    The layout of DIR is detected and named in the output: one folder per class named by WordNet id; a flat
    folder with the devkit's ILSVRC2012_validation_ground_truth.txt; or a flat folder with Kaggle's
    LOC_val_solution.csv. Images are preprocessed with the weight source's own evaluation protocol.
    Images that cannot be decoded are listed on stderr and left out of the accuracy (exit code 3); when every
    image fails there is no accuracy (JSON top1/top5 null, exit code 3).
    Ctrl-C stops early and prints the result over the images done so far, marked partial (exit code 130).

    Examples:

      mvit eval /data/imagenet/val --variant xxs

      mvit eval ILSVRC/Data/CLS-LOC/val --limit 5000 --format json

      mvit eval val_flat --labels ILSVRC2012_validation_ground_truth.txt --predictions preds.csv

      torchrun --nproc-per-node 4 -m mvit_cli eval /data/imagenet/val
    """
    from mvit_cli import distributed, loading, runners
    from mvit_cli.cli import output, output_guard
    from mvit_cli.evaluation import loop as evaluation
    from mvit_cli.evaluation import sets as evalsets

    job, device_name = distributed.start_distributed(device.value)
    is_main = job is None or job.is_main
    try:
        # The folder is read before the model is loaded: a layout mistake is reported in a second, not a minute.
        whole_set = evalsets.load_eval_set(directory, labels)
        # Before anything is loaded or opened: an output aimed at an image (of the whole folder, not only of a
        # --limit subset), a label file or the weights, also through a hard link or a symlink, would destroy it,
        # and two outputs in one file would corrupt both.
        inputs = [item.path for item in whole_set.items] + [p for p in (whole_set.labels_file, weights) if p]
        output_guard.refuse_unsafe_outputs({"--predictions": predictions, "--per-class": per_class}, inputs)
        eval_set = evalsets.with_limit(whole_set, limit)
        model = loading.load_model(
            variant.value if variant else None, source.value if source else None, weights, device_name,
            backend=backend.value, cache_dir=cache_dir, offline=offline, progress=is_main, warn=output.warn,
            expected_images=len(eval_set.items) // (job.world_size if job else 1),
        )
        batch_size = batch_size or runners.default_batch_size(model.device)
        workers = runners.default_workers() if workers is None else workers
        if job is not None and is_main:
            processes = f"{job.world_size} process" + ("es" if job.world_size > 1 else "")
            output.warn(f"evaluating {len(eval_set.items):,} images on {processes} "
                        f"(torch.distributed, {job.backend}), {batch_size} images per batch each")

        with ExitStack() as files:
            predictions_file = files.enter_context(_open_csv(predictions)) if predictions and is_main else None
            # Opened before the evaluation, not after: a bad path must not cost a finished run.
            per_class_file = files.enter_context(_open_csv(per_class)) if per_class and is_main else None
            # Under torchrun every rank must ask for predictions (to send its own to rank 0); only rank 0 writes.
            write_predictions = _predictions_writer(predictions_file) if predictions_file else _ignore
            with _progress(is_main and output.progress_enabled(), job) as on_progress:
                result = evaluation.evaluate(eval_set, model, batch_size, workers, job, on_progress,
                                             write_predictions if predictions else None)
            if not is_main:  # rank 0 reports; the others exit with the same code
                return _exit_code(result)
            if per_class_file:
                _write_per_class(per_class_file, result.tally)
    finally:
        distributed.stop_distributed(job)

    summary = _summary(eval_set, model, result, limit)
    _report_failures(result)
    if output_format is TableOrJson.json:
        output.write_json(summary)
    else:
        _print_table(summary, result, eval_set, model)
    if result.partial:
        output.warn(f"interrupted: the result covers only the {result.tally.images} images done so far (partial)")
    return _exit_code(result)


def _exit_code(result) -> int:
    """130 interrupted (partial result), 3 some images failed to decode, 0 otherwise. Under torchrun, torchrun
    itself then exits 1 and prints its own failure summary naming this code."""
    if result.partial:
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if result.tally.failed else EXIT_OK


def _summary(eval_set, model, result, limit: int | None) -> dict[str, Any]:
    """The JSON result (schema documented in the README)."""
    from mvit_cli import manifest

    tally = result.tally
    return {
        "layout": eval_set.layout,
        "variant": model.variant,
        "source": model.source,
        "images": tally.images,
        "failed": tally.failed,
        # No image evaluated (every one failed, or Ctrl-C before the first batch): no accuracy exists, and 0.0
        # would read as a model that is always wrong.
        "top1": tally.top1_percent if tally.images else None,
        "top5": tally.top5_percent if tally.images else None,
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 2),
        "published": manifest.published(model.variant),
        "partial": result.partial,
        "limit": limit,
        "labels": str(eval_set.labels_file) if eval_set.labels_file else None,
        "checkpoint": {"path": str(model.weights_path), "format": model.checkpoint_format},
    }


def _report_failures(result) -> None:
    from mvit_cli.cli import output

    for failure in result.failures:
        output.warn(f"failed: {failure.path}: {failure.reason}")
    if result.tally.failed and not result.tally.images:
        output.warn(f"every image failed ({result.tally.failed}): there is no accuracy to report")
    elif result.tally.failed:
        output.warn(f"{result.tally.failed} image(s) could not be decoded and are left out of the accuracy")


def _published_text(published: dict[str, Any], key: str) -> str:
    """e.g. "68.94 timm · 69.02 mmpretrain": every published figure for `key` ("top1" or "top5")."""
    figures = [f"{entry[key]:.2f} {name}" for name, entry in published.items()
               if isinstance(entry, dict) and entry.get(key) is not None]
    return f"(published: {' · '.join(figures)})" if figures else ""


def _print_table(summary: dict[str, Any], result, eval_set, model) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mvit_cli.cli import output

    tally = result.tally
    title = f"MobileViT-{model.variant.upper()} on ImageNet-1k validation"
    if result.partial:
        title += " [bold yellow](PARTIAL: interrupted)[/]"
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    full = " (the full set has 50,000)" if tally.images + tally.failed < 50_000 else ""
    rows = [
        ("layout", eval_set.title, ""),
        ("labels", escape(str(eval_set.labels_file or "the folder names")), ""),
        ("variant", model.variant, ""),
        ("source", f"{model.source} ({model.checkpoint_format} checkpoint {escape(model.weights_path.name)})", ""),
        ("images evaluated", f"{tally.images:,}", full),
        ("failed", f"{tally.failed:,}", "(left out of the accuracy)" if tally.failed else ""),
        *_accuracy_rows(summary, result),
        ("time", f"{result.seconds:.1f} s", f"({result.world_size} processes)" if result.world_size > 1 else ""),
        ("images/s", f"{result.images_per_second:.1f}", ""),
    ]
    for name, value, note in rows:
        table.add_row(name, f"{value}  [dim]{note}[/]" if note else value)
    output.stdout_console().print(table)


def _accuracy_rows(summary: dict[str, Any], result) -> list[tuple[str, str, str]]:
    if summary["top1"] is None:
        why = "every image failed" if result.tally.failed else "no image was evaluated"
        return [("top-1 / top-5", f"[bold red]no accuracy: {why}[/]", "")]
    return [("top-1", f"{summary['top1']:.2f} %", _published_text(summary["published"], "top1")),
            ("top-5", f"{summary['top5']:.2f} %", _published_text(summary["published"], "top5"))]


def _ignore(rows) -> None:
    pass


def _open_csv(path: Path) -> TextIO:
    return open(path, "w", newline="", encoding="utf-8")


def _predictions_writer(file: TextIO):
    from mvit_cli.metrics import TOP_K

    writer = csv.writer(file)
    writer.writerow(["path", "target", *(f"top{k}" for k in range(1, TOP_K + 1)),
                     *(f"prob{k}" for k in range(1, TOP_K + 1))])

    def write(rows) -> None:
        for p in rows:
            writer.writerow([str(p.path), p.target, *p.classes, *(f"{q:.6g}" for q in p.probabilities)])
        file.flush()  # rows of an interrupted run are on disk

    return write


def _write_per_class(file: TextIO, tally) -> None:
    from mvit_cli.labels import CLASSES
    from mvit_cli.metrics import percent

    writer = csv.writer(file)
    writer.writerow(["index", "wnid", "name", "images", "top1_correct", "top5_correct", "top1", "top5"])
    for c in tally.classes():
        info = CLASSES[c.index]
        writer.writerow([c.index, info.wnid, info.name, c.images, c.top1, c.top5,
                         f"{percent(c.top1, c.images):.2f}", f"{percent(c.top5, c.images):.2f}"])


class _progress:
    """A rich progress bar on stderr with running top-1 / top-5 and images/s; a no-op when nobody watches."""

    def __init__(self, enabled: bool, job) -> None:
        self.enabled = enabled
        self.label = f"evaluating (rank 0 of {job.world_size})" if job else "evaluating"

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("top-1 {task.fields[top1]:6.2f} %  top-5 {task.fields[top5]:6.2f} %"),
            TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(),
            console=_stderr_console(), transient=True,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task(self.label, total=None, top1=0.0, top5=0.0, rate="-")
        return self.update

    def update(self, done: int, total: int, tally) -> None:
        elapsed = self.bar.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
        self.bar.update(self.task, total=total, completed=done, top1=tally.top1_percent, top5=tally.top5_percent,
                        rate=rate)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def _stderr_console():
    from mvit_cli.cli import output

    return output.stderr_console()
