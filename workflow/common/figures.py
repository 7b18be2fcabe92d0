"""Image files as pixels: reading one as a grayscale array, tiling equally sized images (validation grids),
atomic PNG writing.

Pillow only; charts (loss curves, ROC curves, ...) are drawn with matplotlib in :mod:`workflow.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from workflow.common.errors import InputError
from workflow.common.provenance import atomic_path


def load_gray(path: str, size: int, resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """A PNG as a ``size`` x ``size`` uint8 grayscale array (RGB converted with PIL's ITU-R 601 luma)."""
    try:
        with Image.open(path) as image:
            gray = image.convert("L")
            if gray.size != (size, size):
                gray = gray.resize((size, size), resample)
            return np.asarray(gray)
    except OSError as err:
        raise InputError(f"'{path}': unreadable image ({err})") from err


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
