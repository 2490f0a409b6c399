"""`mvit eval`: top-1 / top-5 of a test set (ImageNet val, ReaL, V2, Sketch, R, A, R-clean, A-clean) beside the
published numbers, one set or a whole suite of them.

The module is named `evaluate` because `eval` is a Python builtin; the command is registered as "eval".
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

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
    OfflineOpt,
    SourceOpt,
    TableOrJson,
    TableOrJsonOpt,
    VariantOpt,
    WeightsOpt,
    WorkersOpt,
)
from mvit_cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, MvitError, UsageError


class Dataset(str, Enum):
    auto = "auto"
    imagenet = "imagenet"
    real = "real"
    v2 = "v2"
    sketch = "sketch"
    r = "r"
    r_clean = "r-clean"
    a = "a"
    a_clean = "a-clean"


class Interpolation(str, Enum):
    bicubic = "bicubic"
    bilinear = "bilinear"


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def eval_command(
    directory: Annotated[
        Optional[Path],
        typer.Argument(help="The set's folder: class folders (WordNet ids; V2: 0..999), or flat validation images "
                       "with a label file beside or above it.", metavar="DIR", exists=True, file_okay=False,
                       resolve_path=True, show_default=False),
    ] = None,
    dataset: Annotated[
        Dataset,
        typer.Option("--dataset", "-d", help="Which set DIR is, and so how it is scored: imagenet, real "
                     "(ImageNet-ReaL labels), v2 (ImageNetV2), sketch, r / a (ImageNet-R / -A, 200 classes), "
                     "r-clean / a-clean (val on their 200 classes); auto recognises v2, r and a by their folders."),
    ] = Dataset.auto,
    suite: Annotated[
        Optional[Path],
        typer.Option("--suite", help="Evaluate every set found under this folder (imagenet/val or val, "
                     "imagenetv2-matched-frequency-format-val, sketch, imagenet-r, imagenet-a; ReaL, R-clean and "
                     "A-clean from val) and print one table.", exists=True, file_okay=False, resolve_path=True),
    ] = None,
    variant: VariantOpt = None,
    source: SourceOpt = None,
    weights: WeightsOpt = None,
    labels: Annotated[
        Optional[Path],
        typer.Option("--labels", help="Label file for a flat folder: the devkit's "
                     "ILSVRC2012_validation_ground_truth.txt or Kaggle's LOC_val_solution.csv (default: looked "
                     "for beside DIR and up to 4 folders above it).", exists=True, dir_okay=False, resolve_path=True),
    ] = None,
    real_labels: Annotated[
        Optional[Path],
        typer.Option("--real-labels", help="ReaL's real.json for --dataset real (default: the copy shipped with "
                     "mvit).", exists=True, dir_okay=False, resolve_path=True),
    ] = None,
    input_size: Annotated[
        Optional[int],
        typer.Option("--input-size", help="Crop size in pixels (default: the weight source's, 256).",
                     show_default=False),
    ] = None,
    crop_pct: Annotated[
        Optional[float],
        typer.Option("--crop-pct", help="Crop's share of the resized shorter side: the shorter side is resized "
                     "to floor(input size / crop pct) (default: the weight source's; timm 0.9).", show_default=False),
    ] = None,
    interpolation: Annotated[
        Optional[Interpolation],
        typer.Option("--interpolation", metavar="FILTER",
                     help="Resampling filter of the resize (default: the weight source's; timm "
                     "bicubic).", show_default=False),
    ] = None,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = Device.auto,
    backend: BackendOpt = Backend.torch,
    dtype: DtypeOpt = Dtype.float32,
    limit: Annotated[
        Optional[int],
        typer.Option("--limit", min=1, help="Evaluate a fixed, class-balanced subset of this many images."),
    ] = None,
    output_format: TableOrJsonOpt = TableOrJson.table,
    predictions: Annotated[
        Optional[Path],
        typer.Option("--predictions", dir_okay=False,
                     help="Write a CSV row per image: path, target (every correct class), top-5 indices and "
                     "probabilities (R / A: among their 200 classes, numbered as in the 1000)."),
    ] = None,
    per_class: Annotated[
        Optional[Path],
        typer.Option("--per-class", dir_okay=False, help="Write per-class top-1 / top-5 accuracy as CSV."),
    ] = None,
    report: Annotated[
        Optional[Path],
        typer.Option("--report", dir_okay=False, help="Also write an HTML report: accuracy beside the published "
                     "figures, a reliability diagram with the calibration error, the most confused classes with "
                     "example images, per-class accuracy (sortable). One self-contained file that opens offline."),
    ] = None,
    cache_dir: CacheDirOpt = None,
    offline: OfflineOpt = False,
) -> int:
    """Measure top-1 / top-5 accuracy on an ImageNet test set, next to the published numbers.

    The layout of DIR is detected and named in the output: one folder per class named by WordNet id; a flat
    folder with the devkit's ILSVRC2012_validation_ground_truth.txt; or a flat folder with Kaggle's
    LOC_val_solution.csv. --dataset says which set it is (auto: V2, R and A are recognised by their folders,
    anything else is ImageNet val): ReaL rescores val with its multi-label lists, R and A restrict the outputs
    to their 200 classes. Images are preprocessed with the weight source's own evaluation protocol unless
    --input-size, --crop-pct or --interpolation change it; published figures are shown only for that protocol.
    Images that cannot be decoded are listed on stderr and left out of the accuracy (exit code 3); when every
    image fails there is no accuracy (JSON top1/top5 null, exit code 3).
    Ctrl-C stops early and prints the result over the images done so far, marked partial (exit code 130).

    Examples:

      mvit eval /data/imagenet/val --variant xxs

      mvit eval /data/imagenet/val --dataset real --format json

      mvit eval /data/imagenet-r --variant s

      mvit eval --suite /data --variant xxs

      mvit eval /data/imagenet/val --input-size 320 --crop-pct 1.0

      mvit eval val_flat --labels ILSVRC2012_validation_ground_truth.txt --predictions preds.csv

      mvit eval /data/imagenet/val --variant xxs --report val.html

      torchrun --nproc-per-node 4 -m mvit_cli eval /data/imagenet/val
    """
    from mvit_cli.evaluation.resolution import Resolution

    wanted = Resolution(input_size, crop_pct, interpolation.value if interpolation else None)
    wanted.check()
    model_options = dict(variant=variant.value if variant else None, source=source.value if source else None,
                         weights=weights, device=device.value, backend=backend.value, cache_dir=cache_dir,
                         offline=offline, dtype=dtype.value)
    run_options = dict(batch_size=batch_size, workers=workers, limit=limit, wanted=wanted,
                       json_output=output_format is TableOrJson.json)
    if suite is not None:
        if directory is not None:
            raise UsageError("give either DIR or --suite ROOT, not both")
        if dataset is not Dataset.auto:
            raise UsageError("--suite evaluates every set it finds; --dataset is for one DIR")
        for option, value in (("--predictions", predictions), ("--per-class", per_class), ("--report", report)):
            if value is not None:
                raise UsageError(f"{option} writes one set's rows; with --suite, evaluate that set on its own")
        return _suite(suite, labels, real_labels, model_options, **run_options)
    if directory is None:
        raise UsageError("give the folder of the set to evaluate (DIR), or --suite ROOT")
    return _one_set(directory, dataset.value, labels, real_labels, predictions, per_class, report, model_options,
                    **run_options)


def _one_set(directory: Path, dataset: str, labels: Path | None, real_labels: Path | None,
             predictions: Path | None, per_class: Path | None, report: Path | None, model_options: dict[str, Any],
             *, batch_size: int | None, workers: int | None, limit: int | None, wanted, json_output: bool) -> int:
    from mvit_cli import distributed
    from mvit_cli.cli import eval_report, output
    from mvit_cli.evaluation import protocols
    from mvit_cli.safe_output import check_distinct, check_output, identity

    job, device_name = distributed.start_distributed(model_options["device"])
    is_main = job is None or job.is_main
    try:
        protocol = protocols.protocol_named(dataset, directory)
        if real_labels is not None and not protocol.real_labels:
            raise UsageError(f"--real-labels is for --dataset real; {directory} is evaluated as {protocol.name}")
        # The folder is read before the model is loaded: a layout mistake is reported in a second, not a minute.
        prepared = protocols.prepare(protocol, directory, labels, real_labels, limit)
        # Before anything is loaded or opened: an output aimed at an image (of the whole folder, not only of a
        # --limit subset), a label file or the weights, also through a hard link or a symlink, would destroy it,
        # and two outputs in one file would corrupt both.
        weights = model_options["weights"]
        check_distinct({"--predictions": predictions, "--per-class": per_class, "--report": report})
        protected = {identity(path) for path in (*prepared.inputs, *([weights] if weights else []))}
        for role, path in (("--predictions", predictions), ("--per-class", per_class), ("--report", report)):
            if path is not None:
                check_output(path, role, protected, "one of the set's images, its label file or the weights")
        model, choice, batch_size, workers = _load(model_options, device_name, job, wanted, batch_size, workers,
                                                   len(prepared.eval_set.items))
        with ExitStack() as files:
            # Opened before the evaluation, not after: a bad path must not cost a finished run.
            predictions_file = files.enter_context(eval_report.open_csv(predictions)) if predictions and is_main \
                else None
            per_class_file = files.enter_context(eval_report.open_csv(per_class)) if per_class and is_main else None
            # Under torchrun every rank must ask for predictions (to send its own to rank 0); only rank 0 writes
            # them and gathers the report's calibration and confusions from them.
            collector = _report_collector() if report and is_main else None
            on_predictions = _predictions_callback(predictions_file, collector) if predictions or report else None
            result = _evaluate(prepared, model, batch_size, workers, job, on_predictions)
            if not is_main:  # rank 0 reports; the others exit with the same code
                return _exit_code([result])
            if per_class_file:
                eval_report.write_per_class(per_class_file, result.tally)
    finally:
        distributed.stop_distributed(job)

    summary = eval_report.summary(prepared, model, choice, result, limit)
    eval_report.report_failures(result)
    if report is not None:
        eval_report.write_html_report(report, summary, result, prepared, model, choice, collector)
        output.warn(f"report written to {report}")
    if json_output:
        output.write_json(summary)
    else:
        eval_report.print_table(summary, result, prepared, model, choice, detected=dataset == "auto")
    if result.partial:
        output.warn(f"interrupted: the result covers only the {result.tally.images} images done so far (partial)")
    return _exit_code([result])


def _suite(root: Path, labels: Path | None, real_labels: Path | None, model_options: dict[str, Any], *,
           batch_size: int | None, workers: int | None, limit: int | None, wanted, json_output: bool) -> int:
    """Every set found under `root`, one after the other with one model; one table (or one JSON list)."""
    from mvit_cli import distributed
    from mvit_cli.cli import eval_report, output
    from mvit_cli.errors import NoImagesError
    from mvit_cli.evaluation import loop as evaluation
    from mvit_cli.evaluation import protocols

    found, missing = protocols.find_suite(root)
    if not found:
        places = ", ".join(sorted({f for p in protocols.PROTOCOLS.values() for f in p.suite_folders}))
        raise NoImagesError(f"no test set under {root}; --suite looks for the folders {places}")
    job, device_name = distributed.start_distributed(model_options["device"])
    is_main = job is None or job.is_main
    entries: list[tuple[Any, Any, Any]] = []  # (protocol, prepared or None, error message or None)
    try:
        for protocol, folder in found:
            try:  # one unreadable set is reported and skipped; the others are still evaluated
                prepared = protocols.prepare(protocol, folder, labels if protocol.flat else None,
                                             real_labels if protocol.real_labels else None, limit)
                entries.append((protocol, prepared, None))
            except MvitError as exc:
                entries.append((protocol, None, str(exc)))
        if is_main:
            for protocol in missing:
                output.warn(f"{protocol.name}: not found (looked for "
                            f"{' or '.join(str(root / f) for f in protocol.suite_folders)})")
            for protocol, _, error in entries:
                if error:
                    output.warn(f"{protocol.name}: not evaluated: {error}")
        readable = [(protocol, prepared) for protocol, prepared, error in entries if prepared is not None]
        if not readable:
            raise NoImagesError(f"none of the sets found under {root} could be read (see above)")
        total = sum(len(prepared.eval_set.items) for _, prepared in readable)
        model, choice, batch_size, workers = _load(model_options, device_name, job, wanted, batch_size, workers,
                                                   total)
        results: dict[str, Any] = {}
        # Sets read from one folder (val: imagenet, real, r-clean, a-clean) share one pass over its images.
        passes: dict[Path, list[tuple[Any, Any]]] = {}
        for protocol, prepared in readable:
            passes.setdefault(prepared.eval_set.root, []).append((protocol, prepared))
        for sets in passes.values():
            scorings = [evaluation.Scoring(prepared.eval_set.items, prepared.among) for _, prepared in sets]
            label = ", ".join(protocol.name for protocol, _ in sets)
            with _progress(is_main and output.progress_enabled(), job, label) as on_progress:
                together = evaluation.evaluate_together(scorings, model, batch_size, workers, job, on_progress)
            results.update((protocol.name, result) for (protocol, _), result in zip(sets, together))
            if together[0].partial:
                break  # Ctrl-C ends the suite, not only the sets being evaluated
    finally:
        distributed.stop_distributed(job)

    code = _exit_code(list(results.values()), unreadable=any(error for _, _, error in entries))
    if not is_main:
        return code
    summaries = []
    eval_report.report_suite_failures(results)
    for protocol, prepared, error in entries:
        if error:
            summaries.append(eval_report.error_summary(protocol, error))
        elif protocol.name in results:
            summaries.append(eval_report.summary(prepared, model, choice, results[protocol.name], limit))
    if json_output:
        output.write_json(summaries)
    else:
        eval_report.print_suite_table(summaries, model)
        output.stdout_console().print(f"preprocessing: {choice.describe()}")
    if any(result.partial for result in results.values()):
        output.warn("interrupted: the suite stopped; the last set's result is partial and later sets were not run")
    return code


def _load(model_options: dict[str, Any], device_name: str, job, wanted, batch_size: int | None,
          workers: int | None, images: int):
    """The model with the chosen preprocessing, the protocol chosen, batch size and decoding threads."""
    from mvit_cli import loading, runners
    from mvit_cli.cli import output
    from mvit_cli.evaluation.resolution import protocol_for

    is_main = job is None or job.is_main
    model = loading.load_model(
        model_options["variant"], model_options["source"], model_options["weights"], device_name,
        backend=model_options["backend"], cache_dir=model_options["cache_dir"], offline=model_options["offline"],
        progress=is_main, warn=output.warn, expected_images=images // (job.world_size if job else 1),
        dtype=model_options["dtype"],
    )
    if model_options["dtype"] == "auto" and is_main:
        output.warn(f"--dtype auto: running in {model.dtype}")
    choice = protocol_for(model.source, wanted)
    model = replace(model, preprocessing=choice.preprocessing)  # a copy: the memoised model keeps its own
    batch_size = batch_size or runners.default_batch_size(model.device)
    workers = runners.default_workers() if workers is None else workers
    if job is not None and is_main:
        processes = f"{job.world_size} process" + ("es" if job.world_size > 1 else "")
        output.warn(f"evaluating {images:,} images on {processes} "
                    f"(torch.distributed, {job.backend}), {batch_size} images per batch each")
    return model, choice, batch_size, workers


def _evaluate(prepared, model, batch_size: int, workers: int, job, on_predictions):
    from mvit_cli.cli import output
    from mvit_cli.evaluation import loop as evaluation

    is_main = job is None or job.is_main
    with _progress(is_main and output.progress_enabled(), job) as on_progress:
        return evaluation.evaluate(prepared.eval_set, model, batch_size, workers, job, on_progress, on_predictions,
                                   among=prepared.among)


def _exit_code(results, unreadable: bool = False) -> int:
    """130 interrupted (partial result); 3 some images failed to decode (also every one of them: then there is
    no accuracy) or, in a suite, a set could not be read; 0 otherwise. Under torchrun, torchrun itself then
    exits 1 and prints its own failure summary naming this code."""
    if any(result.partial for result in results):
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if unreadable or any(result.tally.failed for result in results) else EXIT_OK


def _ignore(rows) -> None:
    pass


def _report_collector():
    from mvit_cli.reports.eval_report import EvalCollector

    return EvalCollector()


def _predictions_callback(predictions_file, collector):
    """What receives the per-image predictions: the --predictions writer and the report's collector, where this
    process has them; nothing (but still asked for, so its predictions are sent) on the other ranks."""
    from mvit_cli.cli import eval_report

    receivers = [eval_report.predictions_writer(predictions_file)] if predictions_file else []
    if collector is not None:
        receivers.append(collector.add)
    if not receivers:
        return _ignore

    def receive(rows) -> None:
        for receiver in receivers:
            receiver(rows)

    return receive


@contextmanager
def _progress(enabled: bool, job, name: str | None = None):
    """The eval progress bar (running top-1 / top-5 and images/s beside the count); yields its update function,
    or None when nobody watches."""
    from mvit_cli.cli import output

    label = (f"evaluating {name}" if name else "evaluating") + (f" (rank 0 of {job.world_size})" if job else "")
    columns = ("top-1 {task.fields[top1]:6.2f} %  top-5 {task.fields[top5]:6.2f} %", "{task.fields[rate]} img/s")
    with output.ProgressBar(label, None, enabled, columns, top1=0.0, top5=0.0, rate="-") as bar:

        def update(done: int, total: int, tally) -> None:
            rate = f"{done / bar.elapsed:.1f}" if bar.elapsed > 0 else "-"
            bar.update(done, total, top1=tally.top1_percent, top5=tally.top5_percent, rate=rate)

        yield update if enabled else None
