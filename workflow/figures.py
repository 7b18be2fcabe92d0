"""PNG figures for people to look at: loss curves, image grids, and atomic PNG writing.

Drawn with Pillow only (no plotting library needed on a cluster node); the numbers themselves go into the
run's JSON report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from workflow.provenance import atomic_path

SIZE = (640, 360)
MARGIN = 48


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (shorter at the start), same length as ``values``."""
    array = np.asarray(values, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(array)])
    ends = np.arange(1, len(array) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def loss_curve(losses: Sequence[float], path: str | Path, title: str) -> None:
    """Plot the loss per optimizer step (grey) and its moving average (black) to a PNG."""
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    width, height = SIZE[0] - 2 * MARGIN, SIZE[1] - 2 * MARGIN
    draw.rectangle([MARGIN, MARGIN, MARGIN + width, MARGIN + height], outline="black")
    draw.text((MARGIN, 12), title, fill="black")
    if len(losses):
        low, high = float(min(losses)), float(max(losses))
        span = max(high - low, 1e-12)
        xs = MARGIN + np.linspace(0, width, num=len(losses)) if len(losses) > 1 else np.array([MARGIN])

        def points(values: Sequence[float]) -> list[tuple[float, float]]:
            ys = MARGIN + height * (1 - (np.asarray(values) - low) / span)
            return list(zip(xs.tolist(), ys.tolist(), strict=True))

        draw.line(points(losses), fill=(170, 170, 170), width=1)
        draw.line(points(moving_average(losses, max(len(losses) // 20, 1))), fill="black", width=2)
        draw.text((4, MARGIN - 6), f"{high:.3g}", fill="black")
        draw.text((4, MARGIN + height - 6), f"{low:.3g}", fill="black")
        draw.text((MARGIN + width - 60, MARGIN + height + 8), f"step {len(losses)}", fill="black")
    draw.text((MARGIN, MARGIN + height + 8), "loss per optimizer step (black: moving average)", fill="black")
    save_png(image, path)


def save_grid(images: Sequence[Image.Image], path: str | Path, columns: int) -> None:
    """Tile equally sized images row by row into one PNG."""
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "black")
    for i, tile in enumerate(images):
        grid.paste(tile.convert("RGB"), ((i % columns) * width, (i // columns) * height))
    save_png(grid, path)


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
