"""Deterministic inline SVG charts for the data-quality report: plain string building.

Grouped bars, horizontal bars, small-multiple histograms and a scatter with legends, axis
ticks at nice steps and axis labels. Nothing is measured at render time: text is laid out
from the advance widths of DejaVu Sans (the font the charts ask for first; Verdana, the
usual fallback elsewhere, is about as wide, Arial and Helvetica narrower), long labels are
truncated with the full text in a `<title>` tooltip, and every text is XML-escaped. The
same input gives the same bytes (no ids, no counters, fixed number formatting).

Each chart's plot area is a `<rect class='frame'>`, its legend a `<g class='legend'>` and
the few texts meant to sit inside a plot area carry `class='inside'`: the report tests
measure every text in headless Chromium against those (no overlaps, nothing clipped).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FONT = "DejaVu Sans,Verdana,Arial,sans-serif"
TICK = 10  # tick label font size (px)
LABEL = 11  # axis labels, category labels, legends
TITLE = 12
X_TICKS = TICK + 7  # baseline of x tick labels under the plot (clear of the lowest y label)
INK = "#222"
AXIS = "#888"
GRID = "#e6e6e6"
ACCEPTED, REJECTED = "#4f81bd", "#c0504d"
PLANNED = "#9bbb59"
THRESHOLD = "#222"  # threshold lines on histograms (dashed)
# the tab10 and tab20 palettes (the usual categorical colours)
TAB10 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
TAB20 = (
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
    "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
    "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
)  # fmt: skip

# DejaVu Sans advance widths (em) of the printable ASCII characters, space to tilde;
# anything else counts 1 em (as wide as the widest Latin glyphs and CJK).
_WIDTHS = (
    0.318, 0.401, 0.46, 0.838, 0.636, 0.95, 0.78, 0.275, 0.39, 0.39, 0.5, 0.838, 0.318, 0.361,
    0.318, 0.337, 0.636, 0.636, 0.636, 0.636, 0.636, 0.636, 0.636, 0.636, 0.636, 0.636, 0.337,
    0.337, 0.838, 0.838, 0.838, 0.531, 1.0, 0.684, 0.686, 0.698, 0.77, 0.632, 0.575, 0.775,
    0.752, 0.295, 0.295, 0.656, 0.557, 0.863, 0.748, 0.787, 0.603, 0.787, 0.695, 0.635, 0.611,
    0.732, 0.684, 0.989, 0.685, 0.611, 0.685, 0.39, 0.337, 0.39, 0.838, 0.5, 0.5, 0.613, 0.635,
    0.55, 0.635, 0.615, 0.352, 0.635, 0.634, 0.278, 0.278, 0.579, 0.278, 0.974, 0.634, 0.612,
    0.635, 0.635, 0.411, 0.521, 0.392, 0.634, 0.592, 0.818, 0.592, 0.592, 0.525, 0.636, 0.337,
    0.636, 0.838,
)  # fmt: skip
_SLACK = 1.04  # renderers round and kern a little differently


def text_width(text: str, size: float) -> float:
    """Estimated rendered width of `text` at font size `size` (px)."""
    em = sum(_WIDTHS[o - 32] if 32 <= o < 127 else 1.0 for o in map(ord, text))
    return em * size * _SLACK


def fit(text: str, width: float, size: float) -> str:
    """`text`, or its longest prefix plus an ellipsis, that fits in `width` px."""
    if text_width(text, size) <= width:
        return text
    room = width - text_width("…", size)
    used, kept = 0.0, 0
    while kept < len(text) and used + text_width(text[kept], size) <= room:
        used += text_width(text[kept], size)
        kept += 1
    return text[:kept].rstrip() + "…"


def esc(value: object) -> str:
    """XML-escaped text or attribute value (quotes too)."""
    return html.escape(str(value), quote=True)


def num(v: float) -> str:
    """A coordinate: one decimal, no trailing `.0`, never `-0`."""
    s = f"{v:.1f}"
    if s.endswith(".0"):
        s = s[:-2]
    return "0" if s == "-0" else s


def nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> list[float]:
    """Ticks at a 1/2/2.5/5 x 10^k step covering [lo, hi] (first <= lo, last >= hi), about
    `target` intervals; whole numbers only when `integer`."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
        if integer:
            lo, hi = math.floor(lo), math.ceil(hi)
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in steps if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(step, 1)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Tick values with as many decimals as their step needs (the same for all)."""
    if len(ticks) < 2:
        return [f"{t:g}" for t in ticks]
    step = abs(ticks[1] - ticks[0])
    if max(abs(ticks[0]), abs(ticks[-1])) >= 1e6:
        return [f"{t:.3g}" for t in ticks]
    decimals = 0
    while decimals < 8 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    out = []
    for t in ticks:
        s = f"{t:.{decimals}f}"
        out.append(s[1:] if s.startswith("-") and float(s) == 0 else s)
    return out


def _thin(labels: list[str], spacing: float, size: float) -> list[str]:
    """Blank every other label (then every third...) until horizontal labels `spacing` px
    apart do not touch."""
    widest = max((text_width(s, size) for s in labels), default=0.0)
    every = 1
    while every < len(labels) and widest + 6 > spacing * every:
        every += 1
    return [s if i % every == 0 else "" for i, s in enumerate(labels)]


class _Svg:
    """One chart: parts appended in drawing order, wrapped by `done`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.parts: list[str] = []

    def add(self, part: str) -> None:
        self.parts.append(part)

    def text(
        self,
        x: float,
        y: float,
        shown: str,
        size: float = LABEL,
        anchor: str = "start",
        rotate: bool = False,
        full: str | None = None,
        cls: str = "",
        fill: str = INK,
    ) -> None:
        """Text with its baseline at `y` (`rotate`: turned -90 degrees about (x, y), read
        bottom to top); `full`, when it differs from the shown text, becomes a tooltip."""
        if not shown:
            return
        attrs = f"x='{num(x)}' y='{num(y)}'"
        if size != LABEL:
            attrs += f" font-size='{size}'"
        if anchor != "start":
            attrs += f" text-anchor='{anchor}'"
        if rotate:
            attrs += f" transform='rotate(-90 {num(x)} {num(y)})'"
        if cls:
            attrs += f" class='{cls}'"
        if fill != INK:
            attrs += f" fill='{fill}'"
        tip = f"<title>{esc(full)}</title>" if full is not None and full != shown else ""
        self.add(f"<text {attrs}>{tip}{esc(shown)}</text>")

    def frame(self, x: float, y: float, w: float, h: float) -> None:
        self.add(
            f"<rect class='frame' x='{num(x)}' y='{num(y)}' width='{num(w)}' height='{num(h)}' "
            f"fill='none' stroke='{AXIS}'/>"
        )

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str = AXIS) -> None:
        self.add(
            f"<line x1='{num(x1)}' y1='{num(y1)}' x2='{num(x2)}' y2='{num(y2)}' stroke='{stroke}'/>"
        )

    def done(self, width: float, height: float) -> str:
        w, h = math.ceil(width), math.ceil(height)
        return (
            f"<svg class='chart' xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' "
            f"viewBox='0 0 {w} {h}' role='img' aria-label='{esc(self.name)}' "
            f"font-family='{FONT}' font-size='{LABEL}' fill='{INK}'>"
            f"<rect width='{w}' height='{h}' fill='#fff'/>" + "".join(self.parts) + "</svg>"
        )


def _legend(
    svg: _Svg, x: float, y: float, items: Sequence[tuple[str, str]], max_width: float = 170
) -> tuple[float, float]:
    """A vertical legend of (label, colour) swatches with its top left at (x, y); returns
    its width and height."""
    svg.add("<g class='legend'>")
    widest = 0.0
    for i, (label, colour) in enumerate(items):
        top = y + i * 16
        shown = fit(label, max_width, LABEL)
        svg.add(f"<rect x='{num(x)}' y='{num(top + 2)}' width='10' height='10' fill='{colour}'/>")
        svg.text(x + 14, top + 11, shown, full=label)
        widest = max(widest, text_width(shown, LABEL))
    svg.add("</g>")
    return 14 + widest, 16 * len(items)


def _y_axis(
    svg: _Svg,
    left: float,
    top: float,
    width: float,
    height: float,
    ticks: list[float],
    size: float = TICK,
) -> None:
    """Grid lines, tick marks and tick labels of a vertical value axis."""
    lo, hi = ticks[0], ticks[-1]
    for t, label in zip(ticks, tick_labels(ticks), strict=True):
        y = top + height - (t - lo) / (hi - lo) * height
        svg.line(left, y, left + width, y, GRID)
        svg.line(left - 4, y, left, y)
        svg.text(left - 6, y + 0.35 * size, label, size=size, anchor="end")


def _value_y(v: float, ticks: list[float], top: float, height: float) -> float:
    return top + height - (v - ticks[0]) / (ticks[-1] - ticks[0]) * height


def _category_axis(
    svg: _Svg,
    categories: Sequence[str],
    shown: Sequence[str],
    left: float,
    slot: float,
    base: float,
    flat: bool,
) -> None:
    """A tick and a label under each category's slot: side by side when `flat`, else
    turned upright (the full name a tooltip)."""
    for i, (cat, s_) in enumerate(zip(categories, shown, strict=True)):
        x = left + (i + 0.5) * slot
        svg.line(x, base, x, base + 4)
        if flat:
            svg.text(x, base + 6 + LABEL, s_, anchor="middle", full=cat)
        else:
            svg.text(x + 0.35 * LABEL, base + 7, s_, anchor="end", rotate=True, full=cat)


def _x_axis(
    svg: _Svg, ticks: list[float], sx: Callable[[float], float], top: float, w: float, h: float
) -> None:
    """Grid lines, tick marks and (thinned) tick labels of a horizontal value axis under a
    plot area `w` x `h` px with its top at `top`; `sx` maps a value to x."""
    texts = _thin(tick_labels(ticks), w / max(len(ticks) - 1, 1), TICK)
    for t, tl in zip(ticks, texts, strict=True):
        svg.line(sx(t), top, sx(t), top + h, GRID)
        svg.line(sx(t), top + h, sx(t), top + h + 4)
        svg.text(sx(t), top + h + X_TICKS, tl, size=TICK, anchor="middle")


def grouped_bars(
    name: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None], str]],
    ylabel: Sequence[str] = (),
    title: str = "",
) -> str:
    """Bars side by side per category, one per series (label, values, colour); a value of
    None draws no bar. Category labels sit under the axis, turned upright when they do not
    fit side by side (truncated past 150 px, tooltip with the full name); the legend is on
    the right, outside the plot."""
    svg = _Svg(name)
    n, k = len(categories), max(len(series), 1)
    values = [v for _, vs, _ in series for v in vs if v is not None]
    integer = all(float(v).is_integer() for v in values)
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]), 5, integer)
    if ticks[-1] == ticks[0]:
        ticks = [ticks[0], ticks[0] + 1]
    plot_h = 170.0
    bar = 10.0 if k > 1 else 14.0
    slot = max(k * bar + 10, 18.0)
    plot_w = max(n * slot, 200.0)
    slot = plot_w / max(n, 1)
    flat = all(text_width(c, LABEL) + 8 <= slot for c in categories)
    shown = [c if flat else fit(c, 150, LABEL) for c in categories]
    below = LABEL + 8 if flat else max((text_width(s, LABEL) for s in shown), default=0) + 10
    tick_w = max(text_width(s, TICK) for s in tick_labels(ticks))
    left = 8 + 16 * len(ylabel) + tick_w + 10
    top = 26.0 if title else 10.0
    if title:
        svg.text(left, 16, fit(title, plot_w + 150, TITLE), size=TITLE, full=title)
    _y_axis(svg, left, top, plot_w, plot_h, ticks)
    for i, line in enumerate(ylabel):
        x: float = 8 + 16 * i + LABEL
        svg.text(x, top + plot_h / 2, line, anchor="middle", rotate=True)
    zero = _value_y(max(ticks[0], 0.0), ticks, top, plot_h)
    group = k * bar
    for s, (label, vals, colour) in enumerate(series):
        svg.add(f"<g fill='{colour}'>")
        for i, (cat, v) in enumerate(zip(categories, vals, strict=True)):
            if v is None:
                continue
            x = left + i * slot + (slot - group) / 2 + s * bar
            y = _value_y(float(v), ticks, top, plot_h)
            value = str(int(v)) if integer else f"{v:.4g}"
            svg.add(
                f"<rect x='{num(x)}' y='{num(min(y, zero))}' width='{num(bar - 1)}' "
                f"height='{num(abs(zero - y))}'><title>{esc(cat)}, {esc(label)}: {value}"
                "</title></rect>"
            )
        svg.add("</g>")
    svg.frame(left, top, plot_w, plot_h)
    base = top + plot_h
    _category_axis(svg, categories, shown, left, slot, base, flat)
    lw, lh = _legend(svg, left + plot_w + 14, top, [(lbl, c) for lbl, _, c in series])
    return svg.done(left + plot_w + 14 + lw + 8, max(base + below, top + lh) + 4)


def hbars(
    name: str,
    labels: Sequence[str],
    values: Sequence[float],
    colour: str,
    xlabel: str,
    empty: str = "nothing to show",
) -> str:
    """One horizontal bar per label (labels on the left, truncated past 260 px with a
    tooltip), a value axis underneath; `empty` written in the plot area when no label."""
    svg = _Svg(name)
    plot_w = 280.0
    if not labels:
        left, top, plot_h = 12.0, 8.0, 48.0
        svg.frame(left, top, plot_w, plot_h)
        svg.text(left + plot_w / 2, top + plot_h / 2 + 4, empty, anchor="middle", cls="inside")
        svg.text(left + plot_w / 2, top + plot_h + 18, xlabel, anchor="middle")
        return svg.done(left + plot_w + 12, top + plot_h + 26)
    shown = [fit(lbl, 260, LABEL) for lbl in labels]
    left = 10 + max(text_width(s, LABEL) for s in shown) + 8
    row = 18.0
    top, plot_h = 8.0, row * len(labels) + 6
    integer = all(float(v).is_integer() for v in values)
    ticks = nice_ticks(min(0.0, *values), max(0.0, *values), 5, integer)
    if ticks[-1] == ticks[0]:
        ticks = [ticks[0], ticks[0] + 1]
    lo, hi = ticks[0], ticks[-1]

    def sx(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    _x_axis(svg, ticks, sx, top, plot_w, plot_h)
    svg.add(f"<g fill='{colour}'>")
    for i, (lbl, v) in enumerate(zip(labels, values, strict=True)):
        y = top + 3 + i * row + 2
        x0, x1 = sorted((sx(0.0), sx(float(v))))
        value = str(int(v)) if integer else f"{v:.4g}"
        svg.add(
            f"<rect x='{num(x0)}' y='{num(y)}' width='{num(x1 - x0)}' height='{num(row - 4)}'>"
            f"<title>{esc(lbl)}: {value}</title></rect>"
        )
    svg.add("</g>")
    for i, (lbl, s) in enumerate(zip(labels, shown, strict=True)):
        y = top + 3 + i * row + row / 2
        svg.line(left - 4, y, left, y)
        svg.text(left - 6, y + 0.35 * LABEL, s, anchor="end", full=lbl)
    svg.frame(left, top, plot_w, plot_h)
    bottom = top + plot_h + X_TICKS + 8
    svg.text(left + plot_w / 2, bottom + LABEL, xlabel, anchor="middle")
    return svg.done(left + plot_w + 16, bottom + LABEL + 6)


Panel = tuple[str, Sequence[tuple[str, Sequence[int], str]]]  # title, [(label, counts, colour)]


@dataclass(frozen=True)
class _GridLayout:
    """Where a histogram grid's panels go: shared x ticks, each panel's y ticks and
    threshold, the padding around a panel's plot area."""

    cols: int
    xt: list[float]
    x_texts: list[str]
    y_ticks: list[list[float]]
    cuts: list[float | None]
    pad_l: float
    pad_t: float
    pad_r: float
    cell_w: float
    cell_h: float
    x_half: float
    pw: float = 150.0  # plot area of a panel
    ph: float = 80.0
    head: float = 28.0  # the title and legend above the panels


def _grid_layout(
    edges: Sequence[float],
    panels: Sequence[Panel],
    columns: int,
    thresholds: Sequence[float | None] | None,
) -> _GridLayout:
    """Ticks shared by every panel (widened to show each threshold), each panel's count
    ticks, and paddings that keep every tick label clear of its neighbours."""
    cols = min(columns, max(len(panels), 1))
    lo, hi = float(edges[0]), float(edges[-1])
    cuts = [
        None if t is None or not math.isfinite(t) else float(t)
        for t in (thresholds or [None] * len(panels))
    ]
    drawn = [t for t in cuts if t is not None]
    if drawn:
        lo, hi = min(lo, *drawn), max(hi, *drawn)
    xt = nice_ticks(lo, hi, 3)
    y_ticks = []
    for _, series in panels:
        top_count = max((max(c, default=0) for _, c, _ in series), default=0)
        y_ticks.append(nice_ticks(0, max(int(top_count), 1), 3, integer=True))
    tick_w = max(text_width(s, TICK) for t in y_ticks for s in tick_labels(t))
    pw, ph = _GridLayout.pw, _GridLayout.ph
    x_texts = _thin(tick_labels(xt), pw / max(len(xt) - 1, 1), TICK)
    x_half = max(text_width(s, TICK) for s in x_texts) / 2  # x labels reach past the plot
    pad_l, pad_t, pad_b = max(tick_w + 10, x_half), 18.0, X_TICKS + 7
    pad_r = max(12.0, 2 * x_half + 6 - pad_l)  # room for both neighbours' edge labels
    return _GridLayout(
        cols=cols,
        xt=xt,
        x_texts=x_texts,
        y_ticks=y_ticks,
        cuts=cuts,
        pad_l=pad_l,
        pad_t=pad_t,
        pad_r=pad_r,
        cell_w=pad_l + pw + pad_r,
        cell_h=pad_t + ph + pad_b,
        x_half=x_half,
    )


def _grid_legend(svg: _Svg, x: float, labels: Sequence[tuple[str, str]]) -> None:
    """One row of swatches from `x`: a series' colour, or (colour "") the threshold's
    short dashed line."""
    svg.add("<g class='legend'>")
    for lbl, colour in labels:
        if colour:
            svg.add(
                f"<rect x='{num(x)}' y='9' width='10' height='10' fill='{colour}' opacity='0.7'/>"
            )
        else:  # the threshold's swatch: a short dashed upright line
            svg.add(
                f"<line x1='{num(x + 5)}' y1='8' x2='{num(x + 5)}' y2='20' stroke='{THRESHOLD}' "
                "stroke-width='1.5' stroke-dasharray='3 2'/>"
            )
        svg.text(x + 14, 18, lbl)
        x += 26 + text_width(lbl, LABEL)
    svg.add("</g>")


def _grid_panel(
    svg: _Svg,
    g: _GridLayout,
    p: int,
    panel: Panel,
    edges: Sequence[float],
    threshold_label: str,
) -> None:
    """Panel `p`: its title, count axis, the series' bars overlaid, its threshold line,
    the shared x axis and its frame; the counts per series as a tooltip."""
    panel_title, series = panel
    yt, cut, pw, ph = g.y_ticks[p], g.cuts[p], g.pw, g.ph
    cx, cy = 8 + (p % g.cols) * g.cell_w, g.head + (p // g.cols) * g.cell_h
    left, top = cx + g.pad_l, cy + g.pad_t
    total = ", ".join(f"{sum(c)} {lbl}" for lbl, c, _ in series)
    svg.add(f"<g><title>{esc(panel_title)}: {esc(total)}</title>")
    svg.text(left + pw / 2, cy + 13, fit(panel_title, pw, LABEL), anchor="middle", full=panel_title)
    _y_axis(svg, left, top, pw, ph, yt)

    def sx(v: float) -> float:
        return left + (v - g.xt[0]) / (g.xt[-1] - g.xt[0]) * pw

    for _, counts, colour in series:
        path = []
        for b, c in enumerate(counts):
            if c:
                x0, x1 = sx(edges[b]), sx(edges[b + 1])
                y = _value_y(c, yt, top, ph)
                path.append(f"M{num(x0)} {num(top + ph)}V{num(y)}H{num(x1)}V{num(top + ph)}Z")
        if path:
            svg.add(f"<path d='{''.join(path)}' fill='{colour}' opacity='0.7'/>")
    if cut is not None:
        x = sx(cut)
        svg.add(
            f"<line class='threshold' x1='{num(x)}' y1='{num(top)}' x2='{num(x)}' "
            f"y2='{num(top + ph)}' stroke='{THRESHOLD}' stroke-width='1.5' "
            f"stroke-dasharray='4 3'><title>{esc(threshold_label)}: {esc(f'{cut:.4g}')}"
            "</title></line>"
        )
    for t, tl in zip(g.xt, g.x_texts, strict=True):
        svg.line(sx(t), top + ph, sx(t), top + ph + 4)
        svg.text(sx(t), top + ph + X_TICKS, tl, size=TICK, anchor="middle")
    svg.frame(left, top, pw, ph)
    svg.add("</g>")


def histogram_grid(
    name: str,
    title: str,
    edges: Sequence[float],
    panels: Sequence[Panel],
    columns: int = 5,
    thresholds: Sequence[float | None] | None = None,
    threshold_label: str = "threshold",
) -> str:
    """Small multiples: one histogram panel per (panel title, [(series label, counts per
    bin, colour)]), every panel on the shared bin `edges`, series overlaid half-transparent;
    `title` and one legend above the panels.

    `thresholds` (one value or None per panel) draws a dashed vertical `line.threshold` at
    that value in the panel (the x axis widened to show it), with a tooltip, and a legend
    entry `threshold_label`."""
    svg = _Svg(name)
    g = _grid_layout(edges, panels, columns, thresholds)
    labels = [(lbl, c) for lbl, _, c in (panels[0][1] if panels else ())]
    if any(t is not None for t in g.cuts):
        labels.append((threshold_label, ""))
    legend_w = sum(26 + text_width(lbl, LABEL) for lbl, _ in labels)
    width = max(8 + g.cols * g.cell_w - g.pad_r + max(g.pad_r, g.x_half + 4), legend_w + 60)
    svg.text(8, 18, fit(title, width - legend_w - 24, TITLE), size=TITLE, full=title)
    _grid_legend(svg, width - legend_w - 4, labels)
    for p, (panel, _) in enumerate(zip(panels, g.cuts, strict=True)):
        _grid_panel(svg, g, p, panel, edges, threshold_label)
    rows = math.ceil(len(panels) / g.cols)
    return svg.done(width, g.head + rows * g.cell_h + 4)


def _scatter_marks(
    svg: _Svg,
    points: Sequence[tuple[float, float, str, str]],
    colours: dict[str, str],
    markers: Sequence[tuple[str, str, str]],
    place: Callable[[float, float], tuple[float, float]],
) -> None:
    """The points as one path per (marker kind, group): kinds in `markers` order, groups
    in legend order; `place` maps a point to the page."""
    order = {kind: i for i, (kind, _, _) in enumerate(markers)}
    shapes = [shape for _, _, shape in markers]
    groups: dict[tuple[int, str], list[str]] = {}
    for x, y, group, kind in points:
        if kind in order:
            px, py = place(x, y)
            groups.setdefault((order[kind], group), []).append(_mark(shapes[order[kind]], px, py))
    rank = {g: i for i, g in enumerate(colours)}
    for (o, group), marks in sorted(groups.items(), key=lambda g: (g[0][0], rank.get(g[0][1], -1))):
        svg.add(
            f"<path d='{''.join(marks)}' fill='none' stroke='{colours.get(group, AXIS)}' "
            f"{_MARKER_STYLE[shapes[o]]}/>"
        )


def _scatter_legend(
    svg: _Svg,
    lx: float,
    top: float,
    colours: dict[str, str],
    markers: Sequence[tuple[str, str, str]],
) -> tuple[float, float]:
    """The groups' colours, then one grey sample of each marker kind; returns the legend's
    width and the y under it."""
    lw, lh = _legend(svg, lx, top, list(colours.items()))
    svg.add("<g class='legend'>")
    y = top + lh + 8
    for _, label, shape in markers:
        shown = fit(label, 170, LABEL)
        svg.add(
            f"<path d='{_mark(shape, lx + 5, y + 7)}' fill='none' stroke='#555' "
            f"{_MARKER_STYLE[shape]}/>"
        )
        svg.text(lx + 14, y + 11, shown, full=label)
        lw = max(lw, 14 + text_width(shown, LABEL))
        y += 16
    svg.add("</g>")
    return lw, y


def scatter(
    name: str,
    points: Sequence[tuple[float, float, str, str]],
    colours: dict[str, str],
    markers: Sequence[tuple[str, str, str]],
    xlabel: str,
    ylabel: str,
    note: str = "",
) -> str:
    """Points (x, y, group, kind): colour by group (`colours`, in legend order), marker by
    kind; `markers` lists the kinds in drawing order as (kind, legend label, shape), shape
    one of "dot" (small, faint), "circle", "cross". The legend (groups, then the marker
    kinds) on the right, outside the plot; `note` under the axis label."""
    svg = _Svg(name)
    pw, ph = 440.0, 320.0
    xs = [p[0] for p in points] or [0.0]
    ys = [p[1] for p in points] or [0.0]
    xt, yt = nice_ticks(min(xs), max(xs), 6), nice_ticks(min(ys), max(ys), 5)
    tick_w = max(text_width(s, TICK) for s in tick_labels(yt))
    left, top = 8 + 16 + tick_w + 10, 10.0
    _y_axis(svg, left, top, pw, ph, yt)

    def sx(v: float) -> float:
        return left + (v - xt[0]) / (xt[-1] - xt[0]) * pw

    _x_axis(svg, xt, sx, top, pw, ph)
    _scatter_marks(svg, points, colours, markers, lambda x, y: (sx(x), _value_y(y, yt, top, ph)))
    svg.frame(left, top, pw, ph)
    svg.text(left + pw / 2, top + ph + X_TICKS + 8 + LABEL, xlabel, anchor="middle")
    svg.text(8 + LABEL, top + ph / 2, ylabel, anchor="middle", rotate=True)
    bottom = top + ph + X_TICKS + 8 + LABEL + 6
    if note:
        svg.text(left, bottom + TICK + 2, note, size=TICK, fill="#555")
        bottom += TICK + 8
    lx = left + pw + 14
    lw, y = _scatter_legend(svg, lx, top, colours, markers)
    return svg.done(lx + lw + 8, max(bottom, y + 4))


# A dot or circle is a zero-length stroke with round caps (a few bytes a point).
_MARKER_STYLE = {
    "dot": "stroke-width='3' stroke-linecap='round' opacity='0.3'",
    "circle": "stroke-width='5.5' stroke-linecap='round' opacity='0.9'",
    "cross": "stroke-width='1.3' opacity='0.9'",
}


def _mark(shape: str, x: float, y: float) -> str:
    if shape == "cross":
        return f"M{num(x - 2.5)} {num(y - 2.5)}l5 5m0-5l-5 5"
    return f"M{num(x)} {num(y)}h0"
