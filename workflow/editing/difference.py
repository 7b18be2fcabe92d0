"""Difference maps of counterfactuals: what an edit changed, signed, from float images.

PRISM's difference maps subtract uint8 images, where a darker pixel wraps around to a bright one (``10 - 20``
is ``246``); here the map is ``edited - source`` of the float images in [0, 1] (grayscale: the channel mean),
signed: positive where the edit brightened (e.g. an added effusion's opacity), negative where it darkened.

- :func:`difference`: the signed map;
- :func:`colour_map`: the map as an RGB image on a diverging colour map (matplotlib ``RdBu_r``), centred on 0
  and scaled to the map's largest absolute value (or a given one), so blue is darker and red brighter;
- :func:`changed_region`: the changed region, ``|difference|`` above its ``percentile``-th percentile (and
  above zero), cut into 8-connected components (scipy ``ndimage.label``);
- :func:`cross_fade`: a GIF that fades the source into the edit and back, for people to look at;
- :func:`region_statistics`: the mean signed and absolute change overall, inside and outside the changed
  region,
  the region's size and components, and with a segmentation mask the mean absolute change per mask class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage


def grayscale(image: np.ndarray) -> np.ndarray:
    """A ``(3, H, W)`` or ``(H, W)`` float image in [-1, 1] as an ``(H, W)`` float64 image in [0, 1]."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3:
        array = array.mean(axis=0)
    return np.clip((array + 1.0) / 2.0, 0.0, 1.0)


def difference(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """``edited - source`` of two float images in [-1, 1] (``(3, H, W)`` or ``(H, W)``), as an ``(H, W)``
    float32 map in [-1, 1] of their grayscale in [0, 1] (module docstring)."""
    if np.issubdtype(np.asarray(source).dtype, np.integer) or np.issubdtype(
        np.asarray(edited).dtype, np.integer
    ):
        raise TypeError("difference maps are computed from float images, not integer ones (wrap-around)")
    return (grayscale(edited) - grayscale(source)).astype(np.float32)


def colour_map(diff: np.ndarray, scale: float | None = None) -> np.ndarray:
    """The signed map as ``(H, W, 3)`` uint8 RGB on ``RdBu_r``: 0 white, ``-scale`` blue, ``+scale`` red
    (``scale``: the map's largest absolute value when None)."""
    from matplotlib import colormaps

    limit = scale if scale is not None else float(np.abs(diff).max())
    normalised = 0.5 + 0.5 * np.asarray(diff, dtype=np.float64) / max(limit, 1e-12)
    rgba = colormaps["RdBu_r"](np.clip(normalised, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def changed_region(diff: np.ndarray, percentile: float) -> tuple[np.ndarray, int]:
    """The changed pixels (``|diff|`` above its ``percentile``-th percentile and above 0) and the number of
    their 8-connected components."""
    magnitude = np.abs(diff)
    region = (magnitude > np.percentile(magnitude, percentile)) & (magnitude > 0)
    _, components = ndimage.label(region, structure=np.ones((3, 3)))
    return region, int(components)


def region_statistics(
    diff: np.ndarray,
    percentile: float,
    mask: np.ndarray | None = None,
    mask_classes: Sequence[str] = (),
) -> dict[str, Any]:
    """The changed-region statistics of one difference map (module docstring); ``mask``: integer class ids
    of the same size, named by ``mask_classes``."""
    region, components = changed_region(diff, percentile)
    magnitude = np.abs(diff)

    def mean(values: np.ndarray) -> float | None:
        return float(values.mean()) if values.size else None

    stats: dict[str, Any] = {
        "mean_change": float(diff.mean()),
        "mean_abs_change": float(magnitude.mean()),
        "max_abs_change": float(magnitude.max()),
        "region_fraction": float(region.mean()),
        "region_components": components,
        "region_mean_change": mean(diff[region]),
        "outside_mean_abs_change": mean(magnitude[~region]),
    }
    if mask is not None:
        names = list(mask_classes) or [str(k) for k in range(int(mask.max()) + 1)]
        stats["mask_mean_abs_change"] = {
            name: mean(magnitude[mask == k]) for k, name in enumerate(names) if (mask == k).any()
        }
    return stats


def cross_fade(source: np.ndarray, edited: np.ndarray, path: str, frames: int = 8, ms: int = 120) -> None:
    """Write a looping GIF fading ``source`` into ``edited`` and back (``(H, W)`` grayscale in [0, 1]),
    ``frames`` steps each way, ``ms`` milliseconds a frame, atomically."""
    from PIL import Image

    from workflow.common.files import atomic_output

    weights = [*np.linspace(0, 1, frames), *np.linspace(1, 0, frames)[1:-1]]
    images = [
        Image.fromarray(((1 - w) * source * 255 + w * edited * 255).round().astype(np.uint8), mode="L")
        for w in weights
    ]
    with atomic_output(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0)
