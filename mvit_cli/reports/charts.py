"""Charts as inline SVG: a few dozen lines of markup per chart, drawn by any browser, in the report file itself.

Why not a plotting library: matplotlib (or plotly, altair) would add tens of MB to every install for four simple
charts, and its SVG or PNG output would still have to be embedded; a JavaScript charting library would have to
be inlined into every report (hundreds of KB) or fetched from a CDN, which a report that must open offline and
fetch nothing cannot do. SVG written here is small, needs no dependency, scales without blurring, and its text
is real text (searchable, selectable, and checked by the tests).

Every label drawn goes through `page.text`. Colours come from the report's stylesheet (classes), not from
attributes, so the charts follow it.
"""

from __future__ import annotations

from typing import Sequence

from mvit_cli.reports.calibration import ReliabilityBin
from mvit_cli.reports.page import text

LABEL_WIDTH = 190  # room for class names left of horizontal bars


def _svg(width: int, height: int, title: str, body: str, ident: str = "") -> str:
    ident_attr = f' id="{text(ident)}"' if ident else ""
    return (f'<svg{ident_attr} xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{text(title)}"><title>{text(title)}</title>'
            f"{body}</svg>")


def _f(x: float) -> str:
    """A coordinate, short."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def horizontal_bars(rows: Sequence[tuple[str, float, str, str]], maximum: float, title: str,
                    width: int = 520, ident: str = "") -> str:
    """One bar per (label, value, value as text, css class) row, on a common scale from 0 to `maximum`."""
    row_height, top = 18, 4
    plot = width - LABEL_WIDTH - 70
    parts = []
    for i, (label, value, shown, css) in enumerate(rows):
        y = top + i * row_height
        length = plot * max(0.0, min(value / maximum, 1.0)) if maximum > 0 else 0.0
        parts.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 12}" text-anchor="end">{text(_clip(label, 30))}</text>'
            f'<rect class="{text(css)}" x="{LABEL_WIDTH}" y="{y + 2}" width="{_f(length)}" height="{row_height - 5}">'
            f"<title>{text(label)}: {text(shown)}</title></rect>"
            f'<text x="{_f(LABEL_WIDTH + length + 4)}" y="{y + 12}">{text(shown)}</text>'
        )
    height = top * 2 + row_height * len(rows)
    return _svg(width, height, title, "".join(parts), ident)


def histogram(counts: Sequence[int], edges: Sequence[float], title: str, x_label: str, y_label: str,
              width: int = 380, height: int = 170, percent_axis: bool = True, ident: str = "") -> str:
    """Vertical bars: counts[i] images between edges[i] and edges[i + 1] (len(edges) == len(counts) + 1)."""
    left, right, top, bottom = 44, 16, 10, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = edges[0], edges[-1]
    peak = max(counts, default=0) or 1
    scale_x = plot_w / (hi - lo)
    parts = [_axes(left, top, plot_w, plot_h)]
    for count, a, b in zip(counts, edges, edges[1:]):
        h = plot_h * count / peak
        parts.append(f'<rect class="count" x="{_f(left + (a - lo) * scale_x + 1)}" y="{_f(top + plot_h - h)}" '
                     f'width="{_f(max((b - a) * scale_x - 2, 0.5))}" height="{_f(h)}">'
                     f"<title>{_range_text(a, b, percent_axis)}: {count:,}</title></rect>")
    for tick in (0.0, 0.5, 1.0):
        x = left + (lo + (hi - lo) * tick - lo) * scale_x
        value = lo + (hi - lo) * tick
        shown = f"{value * 100:.0f}%" if percent_axis else _f(value)
        parts.append(f'<text x="{_f(x)}" y="{top + plot_h + 14}" text-anchor="middle">{shown}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{peak:,}</text>'
                 f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>')
    parts.append(_axis_labels(left, top, plot_w, plot_h, x_label, y_label))
    return _svg(width, height, title, "".join(parts), ident)


def reliability_diagram(bins: Sequence[ReliabilityBin], ece: float | None, width: int = 420,
                        height: int = 420, ident: str = "") -> str:
    """Accuracy per confidence bin (bars) against the diagonal of perfect calibration, the gap to it shaded;
    below, how many images each bin holds."""
    left, right, top, bottom = 44, 14, 24, 160
    plot_w, plot_h = width - left - right, height - top - bottom
    count_h, count_top = 70, top + plot_h + 40
    peak = max((b.images for b in bins), default=0) or 1
    title = "Reliability diagram" + (f" (ECE {ece * 100:.2f}%)" if ece is not None else " (no images)")
    parts = [_axes(left, top, plot_w, plot_h)]
    for tick in (0.2, 0.4, 0.6, 0.8):  # horizontal grid lines at accuracy 20 % ... 80 %
        y = top + plot_h * (1 - tick)
        parts.append(f'<line class="grid" x1="{left}" y1="{_f(y)}" x2="{left + plot_w}" y2="{_f(y)}"/>')
    parts.append(f'<line class="diagonal" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top}"/>')
    for b in bins:
        x, w = left + b.lower * plot_w + 1, (b.upper - b.lower) * plot_w - 2
        if b.images:
            acc, conf = b.accuracy, b.confidence
            y_acc, y_conf = top + plot_h * (1 - acc), top + plot_h * (1 - conf)
            tip = (f"confidence {_range_text(b.lower, b.upper, True)}: {b.images:,} images, accuracy "
                   f"{acc * 100:.1f}%, mean confidence {conf * 100:.1f}%")
            parts.append(f'<rect class="acc" x="{_f(x)}" y="{_f(y_acc)}" width="{_f(w)}" '
                         f'height="{_f(top + plot_h - y_acc)}"><title>{tip}</title></rect>')
            parts.append(f'<rect class="gap" x="{_f(x)}" y="{_f(min(y_acc, y_conf))}" width="{_f(w)}" '
                         f'height="{_f(abs(y_acc - y_conf))}"><title>{tip}</title></rect>')
        h = count_h * b.images / peak
        parts.append(f'<rect class="count" x="{_f(x)}" y="{_f(count_top + count_h - h)}" width="{_f(w)}" '
                     f'height="{_f(h)}"><title>{b.images:,} images</title></rect>')
    for tick in (0.0, 0.5, 1.0):
        x = left + plot_w * tick
        parts.append(f'<text x="{_f(x)}" y="{top + plot_h + 14}" text-anchor="middle">{tick * 100:.0f}%</text>')
        parts.append(f'<text x="{left - 4}" y="{_f(top + plot_h * (1 - tick) + 4)}" text-anchor="end">'
                     f"{tick * 100:.0f}%</text>")
    parts.append(_axis_labels(left, top, plot_w, plot_h, "confidence (top-1 probability)", "accuracy"))
    parts.append(f'<line class="axis" x1="{left}" y1="{count_top + count_h}" x2="{left + plot_w}" '
                 f'y2="{count_top + count_h}"/>'
                 f'<text x="{left - 4}" y="{count_top + 10}" text-anchor="end">{peak:,}</text>'
                 f'<text x="{left}" y="{count_top + count_h + 14}">images per bin</text>')
    parts.append(f'<text x="{left}" y="14">{text(title)}</text>')
    legend_y = height - 14
    parts.append(f'<rect class="legend-acc" x="{left}" y="{legend_y - 9}" width="10" height="10"/>'
                 f'<text x="{left + 14}" y="{legend_y}">accuracy</text>'
                 f'<rect class="gap" x="{left + 80}" y="{legend_y - 9}" width="10" height="10"/>'
                 f'<text x="{left + 94}" y="{legend_y}">gap to mean confidence</text>'
                 f'<line class="diagonal" x1="{left + 250}" y1="{legend_y - 4}" x2="{left + 270}" y2="{legend_y - 4}"/>'
                 f'<text x="{left + 274}" y="{legend_y}">calibrated</text>')
    return _svg(width, height, title, "".join(parts), ident)


def _axes(left: float, top: float, plot_w: float, plot_h: float) -> str:
    return (f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>'
            f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>')


def _axis_labels(left: float, top: float, plot_w: float, plot_h: float, x_label: str, y_label: str) -> str:
    cy = top + plot_h / 2
    return (f'<text x="{_f(left + plot_w / 2)}" y="{_f(top + plot_h + 28)}" text-anchor="middle">'
            f'{text(x_label)}</text>'
            f'<text x="12" y="{_f(cy)}" text-anchor="middle" transform="rotate(-90 12 {_f(cy)})">'
            f'{text(y_label)}</text>')


def _range_text(a: float, b: float, percent: bool) -> str:
    return f"{a * 100:.0f}-{b * 100:.0f}%" if percent else f"{_f(a)}-{_f(b)}"


def _clip(label: str, length: int) -> str:
    return label if len(label) <= length else label[: length - 1] + "\u2026"
