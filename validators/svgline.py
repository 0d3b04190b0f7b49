"""A deterministic inline SVG line chart for the data-quality report (see svgchart).

Curves of (x, y) points, each point a marker with a tooltip, and horizontal reference lines
(dashed or dotted) across the whole plot; the legend, with a line sample per entry, on the
right outside the plot. Same conventions as svgchart: the plot area is a `<rect
class='frame'>`, the legend a `<g class='legend'>`, texts laid out from the font's advance
widths, the same input gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from synthgen.validators.svgchart import (
    LABEL,
    TICK,
    TITLE,
    X_TICKS,
    _Svg,
    _value_y,
    _x_axis,
    _y_axis,
    esc,
    fit,
    nice_ticks,
    num,
    text_width,
    tick_labels,
)

DASHED, DOTTED = "6 4", "2 3"


@dataclass(frozen=True)
class Curve:
    """A line through `points` (x, y), in x order as given; a marker on each point."""

    label: str
    points: Sequence[tuple[float, float]]
    colour: str


@dataclass(frozen=True)
class Reference:
    """A horizontal line at `value` across the plot, `dash` an SVG stroke-dasharray."""

    label: str
    value: float
    colour: str
    dash: str = DASHED


def _value(v: float) -> str:
    return f"{v:.4g}"


def _legend_lines(
    svg: _Svg, x: float, y: float, items: Sequence[tuple[str, str, str]]
) -> tuple[float, float]:
    """A vertical legend of (label, colour, dash) line samples with its top left at (x, y);
    returns its width and height."""
    svg.add("<g class='legend'>")
    widest = 0.0
    for i, (label, colour, dash) in enumerate(items):
        mid = y + i * 16 + 7
        pattern = f" stroke-dasharray='{dash}'" if dash else ""
        svg.add(
            f"<line x1='{num(x)}' y1='{num(mid)}' x2='{num(x + 18)}' y2='{num(mid)}' "
            f"stroke='{colour}' stroke-width='2'{pattern}/>"
        )
        shown = fit(label, 220, LABEL)
        svg.text(x + 22, mid + 4, shown, full=label)
        widest = max(widest, text_width(shown, LABEL))
    svg.add("</g>")
    return 22 + widest, 16 * len(items)


class _Place:
    """A value axis mapped onto the page: ticks[0] -> start, ticks[-1] -> end."""

    def __init__(self, ticks: list[float], start: float, end: float) -> None:
        self.ticks, self.start, self.end = ticks, start, end

    def __call__(self, v: float) -> float:
        lo, hi = self.ticks[0], self.ticks[-1]
        return self.start + (v - lo) / (hi - lo) * (self.end - self.start)


def _curve(svg: _Svg, curve: Curve, place: tuple[_Place, _Place], xname: str) -> None:
    sx, sy = place
    if not curve.points:
        return
    path = "".join(
        f"{'M' if i == 0 else 'L'}{num(sx(x))} {num(sy(y))}"
        for i, (x, y) in enumerate(curve.points)
    )
    svg.add(
        f"<g class='curve' data-label='{esc(curve.label)}'><path d='{path}' fill='none' "
        f"stroke='{curve.colour}' stroke-width='2'/>"
    )
    for x, y in curve.points:
        svg.add(
            f"<circle cx='{num(sx(x))}' cy='{num(sy(y))}' r='3' fill='{curve.colour}' "
            f"data-x='{_value(x)}' data-y='{_value(y)}'><title>{esc(curve.label)} at "
            f"{_value(x)} {esc(xname)}: {_value(y)}</title></circle>"
        )
    svg.add("</g>")


def lines(
    name: str,
    curves: Sequence[Curve],
    references: Sequence[Reference] = (),
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
) -> str:
    """Curves over a value x axis that starts at 0 (whole-number ticks) and a y axis
    covering every point and reference value; references drawn under the curves."""
    svg = _Svg(name)
    pw, ph = 420.0, 220.0
    xs = [x for c in curves for x, _ in c.points] or [0.0]
    ys = [y for c in curves for _, y in c.points] + [r.value for r in references] or [0.0]
    xt = nice_ticks(0.0, max(max(xs), 1.0), 6, integer=True)
    yt = nice_ticks(min(ys), max(ys), 5)
    tick_w = max(text_width(s, TICK) for s in tick_labels(yt))
    left = 8 + (16 if ylabel else 0) + tick_w + 10
    top = 26.0 if title else 10.0
    if title:
        svg.text(left, 16, fit(title, pw + 150, TITLE), size=TITLE, full=title)
    _y_axis(svg, left, top, pw, ph, yt)
    sx = _Place(xt, left, left + pw)
    _x_axis(svg, xt, sx, top, pw, ph)
    for ref in references:
        y = _value_y(ref.value, yt, top, ph)
        svg.add(
            f"<line class='reference' x1='{num(left)}' y1='{num(y)}' x2='{num(left + pw)}' "
            f"y2='{num(y)}' stroke='{ref.colour}' stroke-width='1.5' "
            f"stroke-dasharray='{ref.dash}' data-y='{_value(ref.value)}'>"
            f"<title>{esc(ref.label)}: {_value(ref.value)}</title></line>"
        )
    sy = _Place(yt, top + ph, top)
    for curve in curves:
        _curve(svg, curve, (sx, sy), xlabel)
    svg.frame(left, top, pw, ph)
    bottom = top + ph + X_TICKS + 4
    if xlabel:
        svg.text(left + pw / 2, bottom + 4 + LABEL, xlabel, anchor="middle")
        bottom += LABEL + 8
    if ylabel:
        svg.text(8 + LABEL, top + ph / 2, ylabel, anchor="middle", rotate=True)
    items = [(c.label, c.colour, "") for c in curves]
    items += [(r.label, r.colour, r.dash) for r in references]
    lx = left + pw + 14
    lw, lh = _legend_lines(svg, lx, top, items)
    return svg.done(lx + lw + 8, max(bottom, top + lh) + 4)
