"""Training curves drawn with Pillow alone (no plotting dependency), one panel per metric."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vqgen.engine.files import atomic_write

Series = list[tuple[float, float]]
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (127, 127, 127), (148, 103, 189)]
PANEL_W, PANEL_H, MARGIN = 420, 260, 48


def _bounds(lines: dict[str, Series]) -> tuple[float, float, float, float]:
    xs = [x for s in lines.values() for x, _ in s]
    ys = [y for s in lines.values() for _, y in s if math.isfinite(y)]
    x0, x1 = min(xs, default=0.0), max(xs, default=1.0)
    y0, y1 = min(ys, default=0.0), max(ys, default=1.0)
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.05 or 1.0
    return x0, max(x1, x0 + 1), y0 - pad, y1 + pad


def _panel(title: str, lines: dict[str, Series]) -> Image.Image:
    image = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    x0, x1, y0, y1 = _bounds(lines)
    left, top, right, bottom = MARGIN, 24, PANEL_W - 12, PANEL_H - 28

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 6), title, fill="black", font=font)
    draw.text((2, top), f"{y1:.3g}", fill="black", font=font)
    draw.text((2, bottom - 10), f"{y0:.3g}", fill="black", font=font)
    draw.text((left, bottom + 6), f"step {x0:g}", fill="black", font=font)
    draw.text((right - 70, bottom + 6), f"{x1:g}", fill="black", font=font)
    for i, (name, series) in enumerate(lines.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [at(x, y) for x, y in series if math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        elif points:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        draw.text((right - 150, top + 4 + 12 * i), name, fill=colour, font=font)
    return image


def plot_curves(path: str | Path, panels: dict[str, dict[str, Series]], columns: int = 2) -> None:
    """Write a PNG of `panels`: {panel title: {line name: [(step, value), ...]}}."""
    images = [_panel(title, lines) for title, lines in panels.items()]
    rows = max(1, -(-len(images) // columns))
    canvas = Image.new("RGB", (PANEL_W * columns, PANEL_H * rows), "white")
    for i, image in enumerate(images):
        canvas.paste(image, ((i % columns) * PANEL_W, (i // columns) * PANEL_H))
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
