"""MEP-LDM's outlier rule for histology patches: drop background, glass, blurry and structure-less images.

MEP-LDM (Osorio et al., Diagnostics 2024; ``outlierremoval/histopathology-patches.yaml``) removes a patch
before clustering when ANY of these holds on its 8-bit HSV and grayscale versions (PIL conversions):
mean V < 70, mean S < 3, std V < 4, std S < 4, std H < 1.5, variance of the Laplacian of the gray image
< 100, or fewer than 10 contours in the gray image thresholded at 150 (OpenCV ``findContours`` with
``RETR_TREE``). Its chest X-ray configuration has the rule switched off.

The features are computed here with NumPy/SciPy instead of OpenCV: the Laplacian is OpenCV's default
3x3 aperture with reflect-101 borders, and ``RETR_TREE`` returns one contour per 8-connected foreground
component plus one per hole (4-connected background component not touching the image border), which is
what :func:`count_contours` counts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

FEATURES: tuple[str, ...] = ("mean_v", "mean_s", "std_v", "std_s", "std_h", "laplacian_var", "contours")

# config key (prompts.mep.outliers.*) -> feature it bounds from below
RULES: dict[str, str] = {
    "min_mean_v": "mean_v",
    "min_mean_s": "mean_s",
    "min_std_v": "std_v",
    "min_std_s": "std_s",
    "min_std_h": "std_h",
    "min_laplacian_var": "laplacian_var",
    "min_contours": "contours",
}

_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = ndimage.generate_binary_structure(2, 1)


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] with reflect-101 borders (cv2 default;
    scipy calls that border mode "mirror")."""
    return float(ndimage.laplace(gray.astype(np.float64), mode="mirror").var())


def count_contours(binary: np.ndarray) -> int:
    """Contours ``cv2.findContours(..., RETR_TREE)`` returns: outer borders plus hole borders."""
    _, outer = ndimage.label(binary, structure=_EIGHT)
    background, n_background = ndimage.label(~binary, structure=_FOUR)
    touching = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    holes = n_background - int(np.count_nonzero(touching))
    return int(outer + holes)


def image_features(path: str) -> dict[str, float]:
    """The features MEP-LDM thresholds, from the image file at ``path`` (any mode; converted to RGB)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    hsv = np.asarray(rgb.convert("HSV"), dtype=np.float64)
    gray = np.asarray(rgb.convert("L"))
    return {
        "mean_v": float(hsv[..., 2].mean()),
        "mean_s": float(hsv[..., 1].mean()),
        "std_v": float(hsv[..., 2].std()),
        "std_s": float(hsv[..., 1].std()),
        "std_h": float(hsv[..., 0].std()),
        "laplacian_var": laplacian_variance(gray),
        "contours": float(count_contours(gray > 150)),
    }


def flag(features: pd.DataFrame, thresholds: Mapping[str, float]) -> pd.DataFrame:
    """One boolean column per rule (True = the image fails it) and ``outlier`` = any rule failed."""
    failed = pd.DataFrame(
        {key: features[feature].to_numpy() < thresholds[key] for key, feature in RULES.items()},
        index=features.index,
    )
    failed["outlier"] = failed.any(axis=1)
    return failed
