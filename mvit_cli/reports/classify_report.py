"""The report of a classify run: every image as a thumbnail with its top-k as labelled bars, the inputs that
failed with their errors, and a summary; filter by label and sort by confidence in the page.

Built while the run goes: each batch's cards are written to a spool file (in memory up to `SPOOL_BYTES`, then on
disk) as the batch arrives, so a job of any size holds only counts in memory, and `write` puts the summary in
front of them at the end. Thumbnails are the pipeline's own (`Result.thumbnail`, made from the decode the
classification used); nothing is read again.

Size: each image costs its thumbnail (longest side `THUMBNAIL_MAX_SIDE` px, JPEG quality 70: ~2.9 KB for a photo,
3.9 KB as base64) plus ~1.5 KB of markup for five bars: 54 MB for 10,000 photos (benchmarks/report_size.py;
README, "Reports and heatmaps"). The page stays usable at that size: the cards are laid out and their images
decoded only near the screen (content-visibility, lazy images), and the scripts only hide and reorder existing
cards.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

from mvit_cli import __version__
from mvit_cli.labels import CLASSES
from mvit_cli.pipeline.records import Result
from mvit_cli.pipeline.thumbnails import THUMBNAIL_MAX_SIDE, THUMBNAIL_QUALITY
from mvit_cli.reports import charts
from mvit_cli.reports.page import facts_table, head, image_tag, tail, text

SPOOL_BYTES = 32 * 1024 * 1024
BARS_SHOWN = 10  # classes drawn per card at most (a run may ask for up to 1000)
LABELS_CHARTED = 15  # most frequent top-1 classes in the summary chart
SCRIPTS = ("grid.js",)
_NAMES = Counter(c.name for c in CLASSES)


@dataclass(frozen=True)
class RunFacts:
    """What the summary says about the run besides its counts."""

    variant: str
    source: str
    weights: str
    checkpoint_format: str
    device: str
    backend: str
    top_k: int
    decode: str
    heatmaps: bool
    dtype: str = "float32"  # the precision the model ran in


class ClassifyReport:
    """Collects a classify run's results batch by batch; `write` makes the HTML file."""

    def __init__(self, facts: RunFacts, thumbnail_side: int = THUMBNAIL_MAX_SIDE):
        self.facts = facts
        self.thumbnail_side = thumbnail_side
        self.started = time.perf_counter()
        self.seconds: float | None = None
        self.classified = 0
        self.failed = 0
        self.top1: Counter[int] = Counter()
        self.confidences = [0] * 10  # top-1 probabilities in tenths
        self._cards = tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8")
        self._failures = tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8")

    def add(self, results: Iterable[Result]) -> None:
        for result in results:
            if result.ok:
                self._cards.write(self._card(result, self.classified + self.failed))
                self.classified += 1
                best = result.predictions[0]
                self.top1[best.index] += 1
                self.confidences[min(int(best.probability * 10), 9)] += 1
            else:
                self._failures.write(f"<tr><td class=\"path\">{text(result.path)}</td>"
                                     f"<td class=\"error\">{text(result.error)}</td></tr>\n")
                self.failed += 1

    def finish(self) -> None:
        """Stop the clock: the time the summary states is that of the classification, not of writing the file."""
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.started

    def write(self, path: Path, partial: bool = False) -> None:
        """The whole report to `path` (replaced). `partial`: the run was interrupted; the report says so."""
        self.finish()
        with open(path, "w", encoding="utf-8", newline="\n") as out:
            out.write(head(f"mvit classify: {self.classified + self.failed:,} images", SCRIPTS))
            out.write(self._header(partial))
            out.write("<main>\n")
            out.write(self._summary())
            out.write(self._controls())
            out.write('<section id="grid" aria-label="classified images">\n')
            self._copy(self._cards, out)
            out.write("</section>\n")
            self._write_failures(out)
            out.write("</main>\n")
            out.write(tail(SCRIPTS, f"made by mvit {text(__version__)} on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"))

    def close(self) -> None:
        self._cards.close()
        self._failures.close()

    # ------------------------------------------------------------------------------------------ parts

    def _card(self, result: Result, position: int) -> str:
        best = result.predictions[0]
        pictures = []  # described by the caption beside them: no alt text repeating it (a report holds thousands)
        if result.thumbnail is not None:
            pictures.append(image_tag(result.thumbnail, "", "thumb"))
        if result.heatmap is not None:
            pictures.append(image_tag(result.heatmap, "Grad-CAM heatmap of the top-1 class", "heat"))
        bars = "".join(self._bar(p) for p in result.predictions[:BARS_SHOWN])
        explained = " explained" if result.heatmap is not None else ""
        return (f'<figure class="card{explained}" data-position="{position}" data-top1="{best.wnid}" '
                f'data-confidence="{best.probability!r}">'
                f'<div class="pics">{"".join(pictures)}</div>'
                f'<figcaption><div class="path">{text(result.path)}</div><ol class="topk">{bars}</ol></figcaption>'
                "</figure>\n")

    @staticmethod
    def _bar(p) -> str:
        """One class: its name (WordNet id on hover), its probability, a bar. Short: a report holds thousands."""
        percent = 100.0 * p.probability
        top = ' class="top1"' if p.rank == 1 else ""
        return (f'<li{top} data-index="{p.index}" data-probability="{p.probability!r}">'
                f'<span class="label" title="{p.wnid}">{text(p.label)}</span><span class="p">{percent:.1f}%</span>'
                f'<svg class="bar" viewBox="0 0 100 1" preserveAspectRatio="none"><rect width="{percent:.2f}" '
                'height="1"/></svg></li>')

    def _header(self, partial: bool) -> str:
        f = self.facts
        note = ' <span class="partial">(interrupted: the run stopped early; this covers the images done)</span>' \
            if partial else ""
        return (f"<header><h1>MobileViT-{text(f.variant.upper())}: {self.classified + self.failed:,} images"
                f"{note}</h1></header>\n")

    def _summary(self) -> str:
        f = self.facts
        seconds = self.seconds or 0.0
        total = self.classified + self.failed
        rate = f" ({total / seconds:.1f} images/s)" if seconds > 0 else ""
        shown = min(f.top_k, BARS_SHOWN)
        rows = [
            ("images", f'<span id="count-images">{total:,}</span>'),
            ("classified", f'<span id="count-classified">{self.classified:,}</span>'),
            ("failed", f'<span id="count-failed">{self.failed:,}</span>'
                       + (' <a href="#failed">(listed below)</a>' if self.failed else "")),
            ("model", f"MobileViT-{text(f.variant.upper())}, {text(f.source)} weights"),
            ("weights", f"{text(f.weights)} ({text(f.checkpoint_format)} checkpoint)"),
            ("run on", f"{text(f.device)}, {text(f.backend)} backend, {text(f.dtype)}, {text(f.decode)} decoding"),
            ("time", f'<span id="seconds">{seconds:.2f}</span> s{rate}'),
            ("classes per image", f"top {f.top_k}" + (f" (the first {shown} drawn)" if shown < f.top_k else "")),
            ("thumbnails", f"at most {self.thumbnail_side} px on the longer side, JPEG quality {THUMBNAIL_QUALITY}"),
        ]
        if f.heatmaps:
            rows.append(("heatmaps", "Grad-CAM of each image's top-1 class at final_conv (the last spatial map), "
                                     "over the crop the model saw; bright = evidence for the class"))
        return (f'<section class="summary" aria-label="summary">{facts_table(rows, "summary")}'
                f"{self._label_chart()}{self._confidence_chart()}</section>\n")

    def _label_chart(self) -> str:
        if not self.top1:
            return ""
        common = self.top1.most_common(LABELS_CHARTED)
        rows = [(_label(index), count, f"{count:,}", "ours") for index, count in common]
        chart = charts.horizontal_bars(rows, common[0][1], "Most frequent top-1 classes", ident="label-chart")
        return f'<figure class="chart">{chart}<figcaption>Most frequent top-1 classes.</figcaption></figure>'

    def _confidence_chart(self) -> str:
        if not self.classified:
            return ""
        chart = charts.histogram(self.confidences, [i / 10 for i in range(11)], "Top-1 confidence",
                                 "top-1 probability", "images", ident="confidence-chart")
        return f'<figure class="chart">{chart}<figcaption>How sure the model is of each top-1.</figcaption></figure>'

    def _controls(self) -> str:
        options = "".join(f'<option value="{CLASSES[index].wnid}">{text(_label(index))} ({count:,})</option>'
                          for index, count in sorted(self.top1.items(), key=lambda kv: (-kv[1], _label(kv[0]))))
        return ('<div class="controls">'
                '<label>top-1 class <select id="label"><option value="">all</option>'
                f"{options}</select></label>"
                '<label>search <input id="search" type="search" placeholder="file name or class"></label>'
                '<label>order <select id="order"><option value="input">input order</option>'
                '<option value="confidence-desc">most confident first</option>'
                '<option value="confidence-asc">least confident first</option></select></label>'
                f'<span id="shown" class="muted">{self.classified:,} shown</span></div>\n')

    def _write_failures(self, out: TextIO) -> None:
        if not self.failed:
            return
        out.write(f'<section id="failed"><h2>Failed inputs ({self.failed:,})</h2>'
                  '<table><thead><tr><th>input</th><th>error</th></tr></thead><tbody>\n')
        self._copy(self._failures, out)
        out.write("</tbody></table></section>\n")

    @staticmethod
    def _copy(spool, out: TextIO) -> None:
        spool.flush()
        spool.seek(0)
        shutil.copyfileobj(spool, out)


def _label(index: int) -> str:
    """A class's name; the WordNet id added where two classes share the name ("crane", "maillot")."""
    c = CLASSES[index]
    return f"{c.name} ({c.wnid})" if _NAMES[c.name] > 1 else c.name
