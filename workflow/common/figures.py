"""Figures for people to look at, written atomically: images as pixels (reading one as grayscale or RGB,
tiling equal images, PNG writing) and charts drawn with matplotlib's object API (``Figure``; no pyplot state,
no display): an image grid with titles and a loss curve. Stage-specific charts (ROC curves, subgroup bars)
live in their stage and save through :func:`save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from workflow.common.errors import InputError
from workflow.common.files import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def load_image(
    path: str, size: int, color: str = "grayscale", resample: Image.Resampling = Image.Resampling.BILINEAR
) -> np.ndarray:
    """A PNG as a ``size`` x ``size`` uint8 array: ``color`` ``grayscale`` (S x S; RGB converted with PIL's
    ITU-R 601 luma) or ``rgb`` (S x S x 3; a grayscale image repeated to three channels)."""
    try:
        with Image.open(path) as image:
            converted = image.convert("L" if color == "grayscale" else "RGB")
            if converted.size != (size, size):
                converted = converted.resize((size, size), resample)
            return np.asarray(converted)
    except OSError as err:
        raise InputError(f"'{path}': unreadable image ({err})") from err


def load_gray(path: str, size: int, resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """A PNG as a ``size`` x ``size`` uint8 grayscale array (:func:`load_image`)."""
    return load_image(path, size, "grayscale", resample)


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
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")


def save_figure(figure: Figure, path: str | Path) -> None:
    """Write a matplotlib figure as a PNG atomically."""
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def loss_curve(losses: Sequence[float], path: str | Path, title: str) -> None:
    """The loss per optimizer step (grey) and its trailing mean over 5% of the steps (black)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), layout="constrained")
    axes = figure.subplots()
    steps = np.arange(1, len(losses) + 1)
    smooth = pd.Series(losses, dtype=float).rolling(max(len(losses) // 20, 1), min_periods=1).mean()
    axes.plot(steps, losses, color="0.7", linewidth=0.8, label="loss")
    axes.plot(steps, smooth, color="black", linewidth=1.5, label="moving average")
    axes.set(xlabel="optimizer step", ylabel="loss", title=title)
    axes.legend(fontsize="small")
    save_figure(figure, path)


def image_grid(
    images: Sequence[tuple[np.ndarray, str] | None],
    path: str | Path,
    title: str,
    columns: int = 4,
    empty: str = "no image",
) -> None:
    """RGB images with their titles in a grid, row by row; a None cell stays blank, and ``empty`` is
    written instead when there is no image at all."""
    from matplotlib.figure import Figure

    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(2.4 * columns, 2.6 * rows), layout="constrained")
    figure.suptitle(title)
    for k, axes in enumerate(np.atleast_1d(figure.subplots(rows, columns)).ravel()):
        axes.axis("off")
        cell = images[k] if k < len(images) else None
        if cell is not None:
            axes.imshow(cell[0])
            axes.set_title(cell[1], fontsize="small")
    if not any(cell is not None for cell in images):
        figure.text(0.5, 0.5, empty, ha="center")
    save_figure(figure, path)
