"""How sound the counterfactuals are (Monteiro et al., ICLR 2023, "Measuring axiomatic soundness of
counterfactual image models"), per edit and summarised per edit type and overall.

Per edit (rule ``edit_images``, from the float images, :func:`image_measures`):

- **composition**: a method that inverts returns the null edit (source caption to source caption); its
  reconstruction error against the source is PSNR and SSIM (:func:`psnr`, :func:`ssim`) and LPIPS where its
  weights exist (:mod:`workflow.editing.perceptual`; null otherwise, the reason in soundness.json);
- **error against the true counterfactual** (demo phantoms only: the same patient and noise rendered with the
  finding switched, :mod:`workflow.editing.edits`): MAE and SSIM of the edited image against it, inside and
  outside the finding's region, the pixels where the true counterfactual differs from the phantom's render by
  more than ``TRUTH_THRESHOLD`` (so "inside" scores the finding and "outside" what should not have changed);
- **minimality**: the changed-region statistics of the difference map (:mod:`workflow.editing.difference`);
- **reversibility** (with ``editing.reversibility``): the edit undone by the same method (the edited image,
  target caption back to the source caption) against the source: MAE, PSNR and SSIM
  (:func:`reversibility`) and LPIPS as for composition; the composition error is its floor, since the undo
  passes the round trip twice;
- **CLIP filter** (with ``editing.clip.model``): its scores and whether the edit passed
  (:mod:`workflow.editing.clip_filter`); the mean of ``clip_passed`` is the acceptance rate.

Per set (rule ``counterfactual_soundness``, :func:`summarise`): **effectiveness**, the real-trained
classifier's probability of the edited finding on the source and on the edited image: the mean change,
signed so that positive is the right way (up for ``add``, down for ``remove``), and the flip rate (the
prediction at the classifier's validation threshold is the target label after the edit); and the means of
the measures above.

SSIM is Wang et al. 2004 eq. 13 with an 11x11 Gaussian window of sigma 1.5 (scipy), constants K1 = 0.01,
K2 = 0.03 and data range 1; region SSIM is the SSIM map averaged over the region's pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

TRUTH_THRESHOLD = 1.0 / 255.0
"""A pixel is in the finding's region when the true counterfactual and the source differ by more than this
(one grey level)."""
SIGMA, K1, K2 = 1.5, 0.01, 0.03


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (data range 1); inf when equal."""
    error = float(np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2))
    return float("inf") if error == 0 else float(10 * np.log10(1.0 / error))


def ssim_map(reference: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The local SSIM of two ``(H, W)`` images in [0, 1] at every pixel (module docstring)."""
    x, y = np.asarray(reference, np.float64), np.asarray(image, np.float64)

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, SIGMA, truncate=3.5, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = K1**2, K2**2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(reference: np.ndarray, image: np.ndarray, region: np.ndarray | None = None) -> float | None:
    """Mean SSIM over the image, or over ``region`` (None when the region is empty)."""
    values = ssim_map(reference, image)
    if region is not None:
        values = values[region]
    return float(values.mean()) if values.size else None


def truth_region(true_source: np.ndarray, true_counterfactual: np.ndarray) -> np.ndarray:
    """The finding's region: where the true counterfactual differs from the source (module docstring)."""
    return (
        np.abs(np.asarray(true_counterfactual, np.float64) - np.asarray(true_source, np.float64))
        > TRUTH_THRESHOLD
    )


def truth_error(
    edited: np.ndarray, true_source: np.ndarray, true_counterfactual: np.ndarray
) -> dict[str, Any]:
    """MAE and SSIM of ``edited`` against the true counterfactual, overall, inside and outside the finding's
    region; the same of the unedited source as the baseline an edit must beat (all images ``(H, W)`` in
    [0, 1])."""
    region = truth_region(true_source, true_counterfactual)
    out: dict[str, Any] = {"region_fraction": float(region.mean())}
    for name, image in (("edited", edited), ("source", true_source)):
        error = np.abs(np.asarray(image, np.float64) - true_counterfactual)
        for where, pixels in (("all", np.ones_like(region)), ("inside", region), ("outside", ~region)):
            out[f"{name}_mae_{where}"] = float(error[pixels].mean()) if pixels.any() else None
            out[f"{name}_ssim_{where}"] = ssim(true_counterfactual, image, pixels)
    return out


def image_measures(
    source: np.ndarray,
    reconstruction: np.ndarray | None,
    truth: tuple[np.ndarray, np.ndarray] | None,
    edited: np.ndarray,
) -> dict[str, Any]:
    """The per-edit measures from float ``(H, W)`` images in [0, 1]: composition (when there is a
    reconstruction) and the error against the truth (when ``truth`` = (phantom render, true
    counterfactual))."""
    out: dict[str, Any] = {}
    if reconstruction is not None:
        out["reconstruction_psnr"] = psnr(source, reconstruction)
        out["reconstruction_ssim"] = ssim(source, reconstruction)
    if truth is not None:
        out |= {f"truth_{k}": v for k, v in truth_error(edited, *truth).items()}
    return out


def reversibility(source: np.ndarray, undone: np.ndarray) -> dict[str, Any]:
    """MAE, PSNR and SSIM of the undone edit against the source (``(H, W)`` in [0, 1])."""
    error = np.abs(np.asarray(undone, np.float64) - np.asarray(source, np.float64))
    return {
        "reversibility_mae": float(error.mean()),
        "reversibility_psnr": psnr(source, undone),
        "reversibility_ssim": ssim(source, undone),
    }


def effectiveness(
    source_probability: np.ndarray,
    edited_probability: np.ndarray,
    direction: np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    """The classifier's probability of the edited finding before and after, for edits in ``direction``
    (+1 add, -1 remove): mean signed change (positive: the right way), the fraction that moved the right way,
    and the flip rate at ``threshold`` (the prediction after the edit is the target label)."""
    before, after = np.asarray(source_probability, float), np.asarray(edited_probability, float)
    change = (after - before) * direction
    target = direction > 0
    return {
        "edits": len(before),
        "mean_source_probability": float(before.mean()),
        "mean_edited_probability": float(after.mean()),
        "mean_change_toward_target": float(change.mean()),
        "moved_toward_target": float((change > 0).mean()),
        "flip_rate": float(((after >= threshold) == target).mean()),
        "threshold": threshold,
    }


def _mean(values: pd.Series) -> float | None:
    finite = pd.to_numeric(values, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    return float(finite.mean()) if len(finite) else None


def summarise(
    edits: pd.DataFrame,
    probabilities: pd.DataFrame | None,
    thresholds: Mapping[str, float],
    measures: Sequence[str],
) -> dict[str, Any]:
    """Soundness per edit type (the ``edit`` column) and overall (module docstring).

    Args:
        edits: the set's manifest rows (``edit``, ``edit_kind``, ``edit_target`` and the per-edit measures).
        probabilities: per row of ``edits`` (same index), ``source_<finding>`` and ``edited_<finding>``
            probabilities of the real-trained classifier; None without one.
        thresholds: the classifier's validation threshold per finding (a finding without one, which the
            classifier was not trained on, is not scored).
        measures: the per-edit measure columns averaged.
    """

    def block(rows: pd.DataFrame) -> dict[str, Any]:
        out: dict[str, Any] = {"edits": len(rows)}
        out |= {name: _mean(rows[name]) for name in measures if name in rows}
        findings = rows[rows["edit_kind"] != "set"]
        scored = (
            []
            if probabilities is None
            else [
                (t, g)
                for t, g in findings.groupby("edit_target")
                if f"source_{t}" in probabilities and t in thresholds
            ]
        )
        if scored:
            parts = []
            for target, group in scored:
                direction = np.where(group["edit_kind"] == "add", 1.0, -1.0)
                before = probabilities.loc[group.index, f"source_{target}"].to_numpy()
                after = probabilities.loc[group.index, f"edited_{target}"].to_numpy()
                parts.append((len(group), effectiveness(before, after, direction, thresholds[target])))
            total = sum(n for n, _ in parts)
            keys = ("mean_change_toward_target", "moved_toward_target", "flip_rate")
            out["effectiveness"] = {k: sum(n * p[k] for n, p in parts) / total for k in keys} | {
                "edits": total
            }
            if len(parts) == 1:
                out["effectiveness"] = parts[0][1]
        return out

    return {
        "overall": block(edits),
        "per_edit": {name: block(rows) for name, rows in edits.groupby("edit", sort=True)},
    }


MEASURES = (
    "mean_abs_change",
    "region_fraction",
    "region_components",
    "outside_mean_abs_change",
    "reconstruction_psnr",
    "reconstruction_ssim",
    "reconstruction_lpips",
    "reversibility_mae",
    "reversibility_psnr",
    "reversibility_ssim",
    "reversibility_lpips",
    "clip_passed",
    "clip_image_image",
    "clip_caption_source",
    "clip_caption_edited",
    "clip_direction",
    "truth_region_fraction",
    *(
        f"truth_{image}_{metric}_{where}"
        for image in ("edited", "source")
        for metric in ("mae", "ssim")
        for where in ("all", "inside", "outside")
    ),
)
"""The per-edit measures (rule ``edit_images``) :func:`summarise` averages."""
