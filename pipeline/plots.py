"""Training curves drawn with Pillow alone (no plotting dependency), one panel per metric.

Axes are rounded out to 1-2-5 ticks and never reach below 0 for values that cannot be negative;
a panel whose values span decades (reconstruction MSE) uses a log scale; the legend sits below the
plot area, off the curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from PIL import Image, ImageDraw, ImageFont

from vqgen.engine.files import atomic_write

Series = list[tuple[float, float]]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (127, 127, 127), (148, 103, 189)]
PANEL_W, PANEL_H = 460, 320
# The plot area (left, top, right, bottom), leaving room for the y labels, the title, and below it the
# x tick labels, the x label and the legend.
BOX = (72, 30, PANEL_W - 16, PANEL_H - 70)
STEPS = (1, 2, 5)  # log-axis marks within each decade
LINEAR_STEPS = (1, 2, 2.5, 5, 10)  # linear-axis tick steps, times a power of ten
TICKS = 5  # about this many intervals per linear axis
EPS = 1e-9


@dataclass(frozen=True)
class Panel:
    title: str
    lines: dict[str, Series]
    y_label: str
    log: bool = False


class Axis(NamedTuple):
    lo: float
    hi: float
    ticks: list[float]
    log: bool = False

    def fraction(self, value: float) -> float:
        """Where `value` falls on the axis: 0 at lo, 1 at hi (in log10 on a log axis)."""
        if self.log:
            return (math.log10(value) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (value - self.lo) / (self.hi - self.lo)


def nice_step(span: float, intervals: int = TICKS) -> float:
    """The 1, 2, 2.5 or 5 x 10^k step that cuts `span` into at most `intervals` pieces."""
    raw = span / intervals
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in LINEAR_STEPS if m * magnitude >= raw * (1 - EPS))


def linear_axis(values: Iterable[float]) -> Axis:
    """lo and hi rounded out to whole steps; lo is never below 0 when no value is."""
    values = [v for v in values if math.isfinite(v)]
    lo, hi = min(values, default=0.0), max(values, default=1.0)
    non_negative = lo >= 0
    if hi == lo:  # a flat line: a band around it
        lo, hi = lo - (abs(lo) or 1.0) / 2, hi + (abs(hi) or 1.0) / 2
    if non_negative:
        lo = max(lo, 0.0)
    step = nice_step(hi - lo)
    first, last = math.floor(lo / step + EPS), math.ceil(hi / step - EPS)
    ticks = [round(k * step, 12) for k in range(first, last + 1)]
    return Axis(ticks[0], ticks[-1], ticks)


def log_axis(values: Iterable[float]) -> Axis:
    """Over the positive values: whole decades when they span more than two, else lo and hi rounded out
    to 1, 2 or 5 x 10^k with a tick at each such mark."""
    positive = [v for v in values if v > 0 and math.isfinite(v)] or [1.0]
    first = math.floor(math.log10(min(positive)) + EPS)
    last = max(math.ceil(math.log10(max(positive)) - EPS), first + 1)
    if last - first > 2:
        ticks = [10.0 ** d for d in range(first, last + 1)]
        return Axis(ticks[0], ticks[-1], ticks, log=True)
    marks = [m * 10.0 ** d for d in range(first, last + 1) for m in STEPS]
    lo = max(m for m in marks if m <= min(positive) * (1 + EPS))
    hi = min(m for m in marks if m >= max(positive) * (1 - EPS) and m > lo)
    return Axis(lo, hi, [m for m in marks if lo <= m <= hi], log=True)


def tick_label(value: float) -> str:
    """Whole numbers as integers (steps: 1500, not 1.5e+03), others to three significant digits."""
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def _vertical_text(text: str, font: Font) -> Image.Image:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    label = Image.new("RGB", (box[2] + 2, box[3] + 2), "white")
    ImageDraw.Draw(label).text((0, 0), text, fill="black", font=font)
    return label.rotate(90, expand=True)


def _axes(panel: Panel) -> tuple[Axis, Axis]:
    """Steps from 0, so that panels line up; values on the panel's scale."""
    points = [p for series in panel.lines.values() for p in series]
    ys = [y for _, y in points]
    return linear_axis([0.0] + [x for x, _ in points]), log_axis(ys) if panel.log else linear_axis(ys)


def _pixel(x: Axis, y: Axis, a: float, b: float) -> tuple[float, float]:
    """Where the point (a, b) lands in the panel."""
    left, top, right, bottom = BOX
    return left + x.fraction(a) * (right - left), bottom - y.fraction(b) * (bottom - top)


def _draw_frame(draw: ImageDraw.ImageDraw, image: Image.Image, panel: Panel, x: Axis, y: Axis, font: Font) -> None:
    """Title, grid lines, tick labels and axis labels."""
    left, top, right, bottom = BOX
    draw.text((left, 8), panel.title, fill="black", font=font)
    for t in y.ticks:
        row = bottom - y.fraction(t) * (bottom - top)
        draw.line([(left, row), (right, row)], fill=(225, 225, 225))
        draw.text((left - 6, row), tick_label(t), fill="black", font=font, anchor="rm")
    for t in x.ticks:
        column = left + x.fraction(t) * (right - left)
        draw.line([(column, top), (column, bottom)], fill=(235, 235, 235))
        draw.text((column, bottom + 5), tick_label(t), fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, bottom + 22), "step", fill="black", font=font, anchor="mt")
    label = _vertical_text(panel.y_label + (", log scale" if y.log else ""), font)
    image.paste(label, (4, max(0, (top + bottom - label.height) // 2)))


def _draw_legend(draw: ImageDraw.ImageDraw, names: list[str], font: Font) -> None:
    """A row of swatches and names below the x label, wrapping when it runs out of width."""
    left, _, right, bottom = BOX
    column, row = left, bottom + 42
    for i, name in enumerate(names):
        width = 26 + draw.textlength(name, font=font) + 18
        if column + width > right and column > left:
            column, row = left, row + 18
        colour = COLOURS[i % len(COLOURS)]
        draw.line([(column, row + 7), (column + 20, row + 7)], fill=colour, width=3)
        draw.text((column + 26, row), name, fill="black", font=font)
        column += width


def _panel(panel: Panel, font: Font) -> Image.Image:
    image = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    x, y = _axes(panel)
    _draw_frame(draw, image, panel, x, y, font)
    for i, series in enumerate(panel.lines.values()):
        colour = COLOURS[i % len(COLOURS)]
        points = [_pixel(x, y, a, b) for a, b in series if math.isfinite(b) and (b > 0 or not y.log)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        elif points:
            draw.ellipse([points[0][0] - 3, points[0][1] - 3, points[0][0] + 3, points[0][1] + 3], fill=colour)
    _draw_legend(draw, list(panel.lines), font)
    return image


def plot_curves(path: str | Path, panels: list[Panel], columns: int = 2) -> None:
    """Write a PNG of `panels`, `columns` to a row."""
    font = ImageFont.load_default(size=12)
    images = [_panel(panel, font) for panel in panels]
    rows = max(1, -(-len(images) // columns))
    canvas = Image.new("RGB", (PANEL_W * columns, PANEL_H * rows), "white")
    for i, image in enumerate(images):
        canvas.paste(image, ((i % columns) * PANEL_W, (i // columns) * PANEL_H))
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
