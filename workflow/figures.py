"""Image files made of images: tiles of equally sized images (validation grids) and atomic PNG writing.

Pillow only; charts (loss curves, ROC curves, ...) are drawn with matplotlib in :mod:`workflow.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from workflow.provenance import atomic_path


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
