"""The report of an eval run: top-1 / top-5 beside the published figures, the run's protocol, checkpoint and
layout, a reliability diagram with the expected calibration error, the most confused class pairs with example
images of the mistakes, and every class's accuracy (sortable, worst first).

"Correct" is what `eval` counts: the top-1 prediction is one of the image's correct classes (one, or ReaL's
list; among the 200 scored classes for ImageNet-R / -A). The numbers come from the run itself: the summary is
the very dict `eval --format json` prints, the per-class rows are the run's tally (the `--per-class` rows), and
calibration and confusions are gathered from its per-image predictions (`EvalCollector.add`, the callback that
also writes `--predictions`).

A confusion is a top-1 mistake counted as (correct class -> predicted class); an image with several correct
classes (ReaL) counts once under each of them, as its per-class rows do. Only the example images of the pairs
shown are read again for their thumbnails (`example_thumbnails`, at most PAIRS_SHOWN x EXAMPLES_PER_PAIR files):
eval reads local files, and keeping a thumbnail of every mistake during the run would hold thousands of them
(and ship them between torchrun processes) to show a few dozen.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mvit_cli import __version__
from mvit_cli.labels import CLASSES
from mvit_cli.metrics import ClassAccuracy, percent
from mvit_cli.pipeline.images import decode_image
from mvit_cli.pipeline.thumbnails import jpeg_thumbnail
from mvit_cli.reports import charts
from mvit_cli.reports.calibration import BINS, Calibration
from mvit_cli.reports.page import facts_table, head, image_tag, tail, text

PAIRS_SHOWN = 12
EXAMPLES_PER_PAIR = 4
EXAMPLE_SIDE = 96  # example thumbnails fit this square
FAILURES_LISTED = 1000
SCRIPTS = ("sortable.js",)


@dataclass(frozen=True)
class Confusion:
    true: int  # a correct class of the images
    predicted: int  # their (wrong) top-1 prediction
    count: int
    examples: tuple[Path, ...]  # the first EXAMPLES_PER_PAIR such images, in set order


class EvalCollector:
    """Calibration bins and top-1 confusions, from eval's per-image predictions (`evaluation.loop.Prediction`:
    `targets`, `classes`, `probabilities`, `path`), batch by batch or all at once, in set order."""

    def __init__(self, bins: int = BINS, examples_per_pair: int = EXAMPLES_PER_PAIR):
        self.calibration = Calibration(bins)
        self.examples_per_pair = examples_per_pair
        self.images = 0
        self.mistakes = 0
        self._pairs: Counter[tuple[int, int]] = Counter()
        self._examples: dict[tuple[int, int], list[Path]] = {}

    def add(self, predictions: Iterable[Any]) -> None:
        for p in predictions:
            top1 = p.classes[0]
            correct = top1 in p.targets
            self.images += 1
            # Clamped: a float64 sum may pass 1.0 by an ulp.
            self.calibration.add(min(max(float(p.probabilities[0]), 0.0), 1.0), correct)
            if correct:
                continue
            self.mistakes += 1
            for target in p.targets:
                pair = (target, top1)
                self._pairs[pair] += 1
                examples = self._examples.setdefault(pair, [])
                if len(examples) < self.examples_per_pair:
                    examples.append(Path(p.path))

    def confusions(self, count: int = PAIRS_SHOWN) -> list[Confusion]:
        """The `count` most frequent pairs; ties by class indices, so the choice does not depend on the order of
        equal counts."""
        ranked = sorted(self._pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:count]
        return [Confusion(true, predicted, n, tuple(self._examples[(true, predicted)]))
                for (true, predicted), n in ranked]


def example_thumbnails(confusions: Sequence[Confusion], side: int = EXAMPLE_SIDE) -> dict[Path, bytes | str]:
    """A thumbnail of every example image of `confusions` (decoded as eval decodes: stored orientation), or the
    reason there is none (a file gone or changed since the run)."""
    thumbnails: dict[Path, bytes | str] = {}
    for path in (path for confusion in confusions for path in confusion.examples):
        if path not in thumbnails:
            try:
                thumbnails[path] = jpeg_thumbnail(decode_image(path, exif_transpose=False), side)
            except Exception as exc:  # noqa: BLE001 - a missing picture must not cost the report
                thumbnails[path] = str(exc) or type(exc).__name__
    return thumbnails


@dataclass(frozen=True)
class EvalContext:
    """What the report says in words that the JSON summary holds only as names."""

    dataset_title: str  # e.g. "ImageNet-1k validation"
    layout_title: str  # e.g. "class folders named by WordNet id"
    preprocessing: str  # the run's protocol in words
    published_protocol: str  # the weight source's own protocol in words (the one published figures used)
    classes: str  # e.g. "1000", "200 of ImageNet-R's classes (top-1 / top-5 among them only)"
    world_size: int = 1
    multi_label: bool = False  # ReaL: images may have several correct classes


def render(summary: Mapping[str, Any], context: EvalContext, per_class: Sequence[ClassAccuracy],
           collector: EvalCollector, failures: Sequence[tuple[str, str]],
           thumbnails: Mapping[Path, bytes | str]) -> str:
    """The whole report. `summary`: the dict `eval --format json` prints for the run; `per_class`: its tally's
    classes; `failures`: (path, reason) of the images that could not be decoded."""
    title = f"MobileViT-{str(summary['variant']).upper()} on {context.dataset_title}"
    partial = (' <span class="partial">(PARTIAL: interrupted; the numbers cover the images done)</span>'
               if summary.get("partial") else "")
    images_of = {c.index: c.images for c in per_class}
    parts = [
        head(f"mvit eval: {title}", SCRIPTS),
        f"<header><h1>{text(title)}{partial}</h1></header>\n<main>\n",
        _accuracy_section(summary, context),
        _run_section(summary, context),
        _calibration_section(collector),
        _confusions_section(collector, images_of, thumbnails, context),
        _per_class_section(per_class),
        _failures_section(failures),
        "</main>\n",
        tail(SCRIPTS, f"made by mvit {text(__version__)} on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"),
    ]
    return "".join(parts)


def write(path: Path, html: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.write(html)


# ---------------------------------------------------------------------------------------------- sections


def _value(number: float | None, digits: int = 2, key: str = "") -> str:
    """A percentage cell: shown rounded, exact in data-value (what the tests and the sorting read)."""
    if number is None:
        return '<td class="num">-</td>'
    data_key = f' data-key="{key}"' if key else ""
    return f'<td class="num"{data_key} data-value="{number!r}">{number:.{digits}f}%</td>'


def _accuracy_section(summary: Mapping[str, Any], context: EvalContext) -> str:
    top1, top5 = summary["top1"], summary["top5"]
    if top1 is None:
        why = "every image failed to decode" if summary["failed"] else "no image was evaluated"
        return f'<section id="accuracy"><h2>Accuracy</h2><p class="error">No accuracy: {why}.</p></section>\n'
    rows = [f'<tr data-source="this run"><th>this run</th>{_value(top1, key="top1")}{_value(top5, key="top5")}'
            "<td></td></tr>"]
    bars = [("top-1, this run", top1, f"{top1:.2f}%", "ours"), ("top-5, this run", top5, f"{top5:.2f}%", "ours")]
    published = summary.get("published") or {}
    for name, figures in published.items():
        if not isinstance(figures, dict):
            continue
        p1, p5 = figures.get("top1"), figures.get("top5")
        differences = " / ".join(f"{ours - theirs:+.2f}" for ours, theirs in ((top1, p1), (top5, p5))
                                 if theirs is not None)
        rows.append(f'<tr data-source="{text(name)}"><th title="{text(figures.get("reference", ""))}">'
                    f"published ({text(name)})</th>{_value(p1)}{_value(p5)}<td class=\"num\">{differences}</td></tr>")
        bars += [(f"top-{k}, {name}", v, f"{v:.2f}%", "published") for k, v in (("1", p1), ("5", p5))
                 if v is not None]
    if summary.get("protocol_is_published"):
        note = (f"Published figures were measured with {text(context.published_protocol)}, as this run was."
                if published else "No published figure exists for this set and variant.")
        if summary.get("dtype", "float32") != "float32":
            note += f" This run computed in {text(summary['dtype'])}; the published figures in float32."
    else:
        note = (f"This run's preprocessing ({text(context.preprocessing)}) differs from the published protocol "
                f"({text(context.published_protocol)}): no published figure is set beside it.")
    chart = charts.horizontal_bars(sorted(bars, key=lambda b: b[0].split(",")[0]), 100.0,
                                   "Top-1 and top-5 accuracy (%), this run and published", ident="accuracy-chart")
    return ('<section id="accuracy"><h2>Accuracy</h2><div class="summary"><div>'
            '<table id="accuracy-table"><thead><tr><th></th><th class="num">top-1</th><th class="num">top-5</th>'
            f'<th class="num">difference</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="note">{note}</p></div><figure class="chart">{chart}</figure></div></section>\n')


def _run_section(summary: Mapping[str, Any], context: EvalContext) -> str:
    s = summary
    protocol_note = "the published protocol" if s["protocol_is_published"] else \
        f"differs from the published {text(context.published_protocol)}"
    checkpoint = s.get("checkpoint") or {}
    rows = [
        ("dataset", f'<span id="dataset">{text(s["dataset"])}</span> ({text(context.dataset_title)})'),
        ("layout", f'<span id="layout">{text(s["layout"])}</span> ({text(context.layout_title)})'),
        ("labels", text(s["labels"] or "the folder names")),
        ("classes", text(context.classes)),
        ("preprocessing", f"{text(context.preprocessing)} <span class=\"muted\">({protocol_note})</span>"),
        ("model", f"MobileViT-{text(str(s['variant']).upper())}, {text(s['source'])} weights, "
                  f"{text(s.get('dtype', 'float32'))}"),
        ("checkpoint", f"{text(checkpoint.get('path', ''))} ({text(checkpoint.get('format', ''))})"),
        ("images evaluated", f'<span id="images">{s["images"]:,}</span>'),
        ("failed", f'<span id="failed">{s["failed"]:,}</span>'
                   + (' <a href="#failures">(listed below; left out of the accuracy)</a>' if s["failed"] else "")),
    ]
    if s.get("images_without_labels") is not None:
        rows.append(("without labels", f"{s['images_without_labels']:,} (ReaL has no label for them: left out)"))
    if s.get("images_other_classes") is not None:
        rows.append(("other classes", f"{s['images_other_classes']:,} (images of the other 800 classes: left out)"))
    if s.get("limit") is not None:
        rows.append(("limit", f"a class-balanced subset of {s['limit']:,} images"))
    processes = f", {context.world_size} processes" if context.world_size > 1 else ""
    rows.append(("time", f"{s['seconds']:.1f} s ({s['images_per_second']:.1f} images/s{processes})"))
    if context.multi_label:
        rows.append(("scoring", "ReaL: an image is correct at k when any of its top k is one of its labels"))
    return f'<section id="run"><h2>Run</h2>{facts_table(rows, "run-table")}</section>\n'


def _calibration_section(collector: EvalCollector) -> str:
    calibration = collector.calibration
    ece = calibration.ece
    diagram = charts.reliability_diagram(calibration.bins(), ece, ident="reliability")
    ece_text = "-" if ece is None else f"{ece * 100:.2f}%"
    ece_value = "" if ece is None else f' data-value="{ece!r}"'
    rows = "".join(
        f'<tr data-bin="{i}" data-images="{b.images}" data-correct="{b.correct}" '
        f'data-confidence="{b.confidence_sum!r}"><td>{b.lower * 100:.1f}-{b.upper * 100:.1f}%</td>'
        f'<td class="num">{b.images:,}</td><td class="num">{_percent_text(b.accuracy)}</td>'
        f'<td class="num">{_percent_text(b.confidence)}</td></tr>'
        for i, b in enumerate(calibration.bins()))
    return (
        '<section id="calibration"><h2>Calibration</h2><div class="summary">'
        f'<figure class="chart">{diagram}<figcaption>Accuracy of the images in each confidence bin; the dashed '
        "diagonal is perfect calibration, the red outline the gap to the mean confidence (bars below the diagonal: "
        "over-confident).</figcaption></figure><div>"
        f'<p>Expected calibration error: <strong id="ece"{ece_value}>{ece_text}</strong></p>'
        f'<p class="note">ECE = sum over {calibration.size} equal-width confidence bins of (share of the images in '
        "the bin) x |accuracy - mean confidence| (Guo et al., ICML 2017); confidence is the top-1 probability, "
        "correct means top-1 correct as counted above.</p>"
        '<details><summary>bins</summary><table id="bins-table"><thead><tr><th>confidence</th>'
        '<th class="num">images</th><th class="num">accuracy</th><th class="num">mean confidence</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></details></div></div></section>\n"
    )


def _confusions_section(collector: EvalCollector, images_of: Mapping[int, int],
                        thumbnails: Mapping[Path, bytes | str], context: EvalContext) -> str:
    confusions = collector.confusions()
    if not confusions:
        return ('<section id="confusions"><h2>Most confused classes</h2>'
                "<p>No top-1 mistake.</p></section>\n")
    rows = []
    for rank, c in enumerate(confusions, start=1):
        examples = "".join(_example(path, thumbnails.get(path)) for path in c.examples)
        rows.append(
            f'<tr data-true="{c.true}" data-predicted="{c.predicted}" data-count="{c.count}">'
            f'<td class="num">{rank}</td><td>{_class_cell(c.true)}</td><td>{_class_cell(c.predicted)}</td>'
            f'<td class="num">{c.count:,}</td><td class="num">{images_of.get(c.true, 0):,}</td>'
            f'<td><div class="examples">{examples}</div></td></tr>')
    multi = (" An image with several correct classes counts under each of them."
             if context.multi_label else "")
    return ('<section id="confusions"><h2>Most confused classes</h2>'
            f'<p class="note">Top-1 mistakes by (correct class, predicted class), the {len(confusions)} most '
            f"frequent of {collector.mistakes:,} mistakes, with the first images of each.{multi}</p>"
            '<table id="confusions-table"><thead><tr><th class="num">#</th><th>correct class</th>'
            '<th>predicted instead</th><th class="num">images</th><th class="num">of the class</th>'
            f'<th>examples</th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>\n')


def _example(path: Path, thumbnail: bytes | str | None) -> str:
    if isinstance(thumbnail, bytes):
        picture = image_tag(thumbnail, path.name)
    else:
        picture = f'<span class="error">no picture: {text(thumbnail or "not read")}</span>'
    name = path.name if len(path.name) <= 14 else "\u2026" + path.name[-13:]  # the end tells val images apart
    return f'<figure title="{text(path)}">{picture}<figcaption>{text(name)}</figcaption></figure>'


def _per_class_section(per_class: Sequence[ClassAccuracy]) -> str:
    if not per_class:
        return ""
    worst_first = sorted(per_class, key=lambda c: (percent(c.top1, c.images), percent(c.top5, c.images), c.index))
    rows = []
    for order, c in enumerate(worst_first):
        info = CLASSES[c.index]
        top1, top5 = percent(c.top1, c.images), percent(c.top5, c.images)
        rows.append(
            f'<tr data-order="{order}" data-index="{c.index}" data-images="{c.images}" data-top1="{c.top1}" '
            f'data-top5="{c.top5}"><td class="num" data-value="{c.index}">{c.index}</td><td>{info.wnid}</td>'
            f'<td>{text(info.name)}</td><td class="num" data-value="{c.images}">{c.images:,}</td>'
            f'<td class="num" data-value="{top1!r}">{top1:.1f}%</td>'
            f'<td class="num" data-value="{top5!r}">{top5:.1f}%</td></tr>')
    counts = [0] * 10
    for c in per_class:
        counts[min(int(percent(c.top1, c.images) / 10), 9)] += 1
    chart = charts.histogram(counts, [i / 10 for i in range(11)], "Classes by top-1 accuracy",
                             "top-1 accuracy of the class", "classes", ident="per-class-chart")
    return ('<section id="per-class"><h2>Accuracy per class</h2><div class="summary"><div>'
            f'<p class="note">{len(per_class):,} classes, worst top-1 first; click a column to sort by it.</p>'
            '<div class="scroll"><table id="per-class-table"><thead><tr>'
            '<th class="num sortable">index</th><th class="sortable">wnid</th><th class="sortable">class</th>'
            '<th class="num sortable">images</th><th class="num sortable" aria-sort="ascending">top-1</th>'
            f'<th class="num sortable">top-5</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div></div>'
            f'<figure class="chart">{chart}</figure></div></section>\n')


def _failures_section(failures: Sequence[tuple[str, str]]) -> str:
    if not failures:
        return ""
    rows = "".join(f'<tr><td class="path">{text(path)}</td><td class="error">{text(reason)}</td></tr>'
                   for path, reason in failures[:FAILURES_LISTED])
    more = (f'<p class="note">... and {len(failures) - FAILURES_LISTED:,} more (all are listed on stderr).</p>'
            if len(failures) > FAILURES_LISTED else "")
    return (f'<section id="failures"><h2>Images that could not be decoded ({len(failures):,})</h2>'
            f"<table><thead><tr><th>image</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>{more}"
            "</section>\n")


def _class_cell(index: int) -> str:
    info = CLASSES[index]
    return f'{text(info.name)} <span class="muted">{info.wnid}</span>'


def _percent_text(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f}%"
