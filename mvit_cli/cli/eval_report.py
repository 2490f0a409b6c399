"""What `mvit eval` prints and writes: the JSON summary of a set, its table, the suite table, the CSV files."""

from __future__ import annotations

import csv
from typing import Any, TextIO

from mvit_cli.cli import output


def summary(prepared, model, choice, result, limit: int | None) -> dict[str, Any]:
    """The JSON result of one set (schema documented in the README)."""
    from mvit_cli import manifest

    tally, protocol = result.tally, prepared.protocol
    published = manifest.published_on(protocol.name, model.variant)
    return {
        "dataset": protocol.name,
        "layout": prepared.eval_set.layout,
        "variant": model.variant,
        "source": model.source,
        "classes": prepared.classes,
        "input_size": choice.input_size,
        "crop_pct": choice.crop_pct,
        "interpolation": choice.interpolation,
        "images": tally.images,
        "failed": tally.failed,
        "images_without_labels": prepared.images_without_labels if prepared.real is not None else None,
        "images_other_classes": prepared.other_classes if protocol.outside_classes == "leave out" else None,
        # No image evaluated (every one failed, or Ctrl-C before the first batch): no accuracy exists, and 0.0
        # would read as a model that is always wrong.
        "top1": tally.top1_percent if tally.images else None,
        "top5": tally.top5_percent if tally.images else None,
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 2),
        # Figures measured with another protocol are not comparable: left out rather than set side by side.
        "published": published if choice.published else None,
        "protocol_is_published": choice.published,
        "partial": result.partial,
        "limit": limit,
        "labels": str(prepared.labels_file) if prepared.labels_file else None,
        "checkpoint": {"path": str(model.weights_path), "format": model.checkpoint_format},
        "dtype": model.dtype,
    }


def error_summary(protocol, message: str) -> dict[str, Any]:
    """The JSON entry of a suite set that could not be read."""
    return {"dataset": protocol.name, "error": message}


def report_failures(result) -> None:
    for failure in result.failures:
        output.warn(f"failed: {failure.path}: {failure.reason}")
    if result.tally.failed and not result.tally.images:
        output.warn(f"every image failed ({result.tally.failed}): there is no accuracy to report")
    elif result.tally.failed:
        output.warn(f"{result.tally.failed} image(s) could not be decoded and are left out of the accuracy")


def report_suite_failures(results: dict[str, Any]) -> None:
    """Each failed image once (sets read from one folder share it), then how many each set left out."""
    seen: set = set()
    for result in results.values():
        for failure in result.failures:
            if failure.path not in seen:
                seen.add(failure.path)
                output.warn(f"failed: {failure.path}: {failure.reason}")
    for name, result in results.items():
        if result.tally.failed:
            output.warn(f"{name}: {result.tally.failed} image(s) could not be decoded and are left out"
                        + ("; no accuracy" if not result.tally.images else ""))


def _published_text(published: dict[str, Any] | None, key: str) -> str:
    """e.g. "(published: 68.94 timm · 69.02 mmpretrain)": every published figure for `key` ("top1" or "top5")."""
    figures = [f"{entry[key]:.2f} {name}" for name, entry in (published or {}).items()
               if isinstance(entry, dict) and entry.get(key) is not None]
    return f"(published: {' · '.join(figures)})" if figures else ""


def _accuracy_rows(summary_: dict[str, Any], result) -> list[tuple[str, str, str]]:
    if summary_["top1"] is None:
        why = "every image failed" if result.tally.failed else "no image was evaluated"
        return [("top-1 / top-5", f"[bold red]no accuracy: {why}[/]", "")]
    if summary_["protocol_is_published"]:
        notes = [_published_text(summary_["published"], "top1"), _published_text(summary_["published"], "top5")]
        if summary_.get("dtype", "float32") != "float32":  # published figures are float32 evaluations
            notes = [f"{note} [yellow]measured in {summary_['dtype']}; published in float32[/]" for note in notes]
    else:
        notes = ["(protocol differs from the published one: no published figure to compare)", ""]
    return [("top-1", f"{summary_['top1']:.2f} %", notes[0]), ("top-5", f"{summary_['top5']:.2f} %", notes[1])]


def print_table(summary_: dict[str, Any], result, prepared, model, choice, detected: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mvit_cli.evaluation import class_subsets

    tally, protocol = result.tally, prepared.protocol
    title = f"MobileViT-{model.variant.upper()} on {protocol.title}"
    if result.partial:
        title += " [bold yellow](PARTIAL: interrupted)[/]"
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    full_size = prepared.full_size
    full = f" (the full set has {full_size:,})" if full_size and tally.images + tally.failed < full_size else ""
    if prepared.among is not None:
        classes = (f"{prepared.classes} of {class_subsets.SUBSET_TITLES[protocol.classes]}",
                   "(top-1 / top-5 among them only)")
    else:
        classes = (f"{prepared.classes}", "")
    published_protocol = manifest_protocol(model.source)
    rows = [
        ("dataset", protocol.name, "(detected; --dataset to choose)" if detected else ""),
        ("layout", prepared.eval_set.title, ""),
        ("labels", escape(str(prepared.labels_file or "the folder names")), ""),
        ("classes", *classes),
        ("preprocessing", choice.describe(),
         "(the published protocol)" if choice.published else f"(differs from the published {published_protocol})"),
        ("variant", model.variant, ""),
        *([("precision", f"[yellow]{model.dtype}[/]", "(not float32: not the published numbers' precision)")]
          if model.dtype != "float32" else []),
        ("source", f"{model.source} ({model.checkpoint_format} checkpoint {escape(model.weights_path.name)})", ""),
        ("images evaluated", f"{tally.images:,}", full),
    ]
    if summary_["images_without_labels"] is not None:
        rows.append(("without labels", f"{prepared.images_without_labels:,}", "(ReaL has no label for them: left out)"))
    if summary_["images_other_classes"] is not None:
        rows.append(("other classes", f"{prepared.other_classes:,}", "(images of the other 800 classes: left out)"))
    rows += [
        ("failed", f"{tally.failed:,}", "(left out of the accuracy)" if tally.failed else ""),
        *_accuracy_rows(summary_, result),
        ("time", f"{result.seconds:.1f} s", f"({result.world_size} processes)" if result.world_size > 1 else ""),
        ("images/s", f"{result.images_per_second:.1f}", ""),
    ]
    for name, value, note in rows:
        table.add_row(name, f"{value}  [dim]{note}[/]" if note else value)
    output.stdout_console().print(table)


def manifest_protocol(source: str) -> str:
    """The weight source's own protocol in words, e.g. "256 px, crop 0.9 (shorter side 284), bicubic"."""
    from mvit_cli.evaluation.resolution import Resolution, protocol_for

    return protocol_for(source, Resolution()).describe()


def print_suite_table(entries: list[dict[str, Any]], model) -> None:
    """One row per set: images, top-1, top-5, timm's published figures and our difference to them."""
    from rich.table import Table

    table = Table(title=f"MobileViT-{model.variant.upper()} ({model.source} weights)", title_justify="left",
                  box=None, padding=(0, 2, 0, 0))
    for column in ("set", "images", "top-1", "top-5", "published (timm)", "difference"):
        table.add_column(column, justify="left" if column in ("set", "published (timm)") else "right",
                         no_wrap=True)
    for entry in entries:
        name = entry["dataset"] + (" [yellow](partial)[/]" if entry.get("partial") else "")
        if "error" in entry:
            table.add_row(name, "-", "-", "-", "[red]not evaluated[/]", "")
            continue
        if entry["top1"] is None:
            table.add_row(name, f"{entry['images']:,}", "-", "-", "[red]no accuracy[/]", "")
            continue
        timm = (entry["published"] or {}).get("timm")
        if not entry["protocol_is_published"]:
            published, difference = "protocol differs", ""
        elif timm is None:
            published, difference = "-", ""
        else:
            published = f"{timm['top1']:.2f} / {timm['top5']:.2f}"
            difference = f"{entry['top1'] - timm['top1']:+.2f} / {entry['top5'] - timm['top5']:+.2f}"
        table.add_row(name, f"{entry['images']:,}", f"{entry['top1']:.2f}", f"{entry['top5']:.2f}", published,
                      difference)
    output.stdout_console().print(table)


def open_csv(path) -> TextIO:
    return open(path, "w", newline="", encoding="utf-8")


def predictions_writer(file: TextIO):
    """Rows of `path,target,top1..top5,prob1..prob5`; `target` lists every correct class, space-separated."""
    import torch

    from mvit_cli.metrics import TOP_K
    from mvit_cli.pipeline.records import round_down

    writer = csv.writer(file)
    writer.writerow(["path", "target", *(f"top{k}" for k in range(1, TOP_K + 1)),
                     *(f"prob{k}" for k in range(1, TOP_K + 1))])

    def write(rows) -> None:
        for p in rows:
            # The probabilities as classify writes them: rounded down to 8 decimals, shortest repr.
            writer.writerow([str(p.path), " ".join(map(str, p.targets)), *p.classes,
                             *map(repr, round_down(torch.tensor(p.probabilities, dtype=torch.float64)).tolist())])
        file.flush()  # rows of an interrupted run are on disk

    return write


def write_per_class(file: TextIO, tally) -> None:
    from mvit_cli.labels import CLASSES
    from mvit_cli.metrics import percent

    writer = csv.writer(file)
    writer.writerow(["index", "wnid", "name", "images", "top1_correct", "top5_correct", "top1", "top5"])
    for c in tally.classes():
        info = CLASSES[c.index]
        writer.writerow([c.index, info.wnid, info.name, c.images, c.top1, c.top5,
                         f"{percent(c.top1, c.images):.2f}", f"{percent(c.top5, c.images):.2f}"])


def write_html_report(path, summary_: dict[str, Any], result, prepared, model, choice, collector) -> None:
    """The HTML report of one set (`reports.eval_report`), from the run's own summary, tally and predictions."""
    from mvit_cli.evaluation import class_subsets
    from mvit_cli.reports import eval_report as html

    protocol = prepared.protocol
    if prepared.among is not None:
        classes = (f"{prepared.classes} of {class_subsets.SUBSET_TITLES[protocol.classes]} "
                   "(top-1 / top-5 among them only)")
    else:
        classes = f"{prepared.classes}"
    context = html.EvalContext(protocol.title, prepared.eval_set.title, choice.describe(),
                               manifest_protocol(model.source), classes, result.world_size,
                               multi_label=prepared.real is not None)
    thumbnails = html.example_thumbnails(collector.confusions())
    failures = [(str(failure.path), failure.reason) for failure in result.failures]
    html.write(path, html.render(summary_, context, result.tally.classes(), collector, failures, thumbnails))
