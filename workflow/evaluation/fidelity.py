"""Image quality of a synthetic set against a real split: FID, KID, precision/recall, overall and per group.

Metrics are torch-fidelity's own implementations (``input1`` = synthetic, ``input2`` = real). They are applied
to feature matrices rather than through ``torch_fidelity.calculate_metrics``, which extracts the features of
whole inputs on every call: the groups below are subsets of one extraction, so each image set is extracted
once (:mod:`workflow.evaluation.features`, content-keyed cache) and every comparison indexes it. On
the same images the numbers equal ``calculate_metrics``' (tested):

- FID, Fréchet distance between Gaussians fitted to the two feature sets (Heusel et al., "GANs trained by a
  two time-scale update rule converge to a local Nash equilibrium", NeurIPS 2017). Biased in N; with fewer
  images than feature dimensions the covariance is rank-deficient: a warning says so;
- KID, unbiased MMD² with the cubic polynomial kernel, mean and std over ``kid_subsets`` random subsets
  (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018); the subset size is
  ``min(evaluation.kid_subset_size, n_real, n_synthetic)`` and a warning says when it was clamped (when
  it is both sets whole, every subset is the same and the std is null);
- improved precision and recall, k-NN manifold estimates with k = ``prc_neighborhood`` (Kynkäänniemi et al.,
  "Improved precision and recall metric for assessing generative models", NeurIPS 2019), in the same
  feature space as FID (Inception pool3 for the standard extractor; the paper and torch-fidelity's default
  use VGG-16 fc2 features, so these values compare with other synthmed runs, not with published VGG
  figures). Beyond :data:`PRC_FULL_MATRIX` images in a set the distances are computed in batches
  (torch-fidelity's ``save_cpu_ram``, the same values) instead of as one N x N matrix.

Groups (:func:`groups`), each with its own FID/KID/precision/recall, or null values and the reason when
either side has fewer than ``evaluation.min_images`` images:

- ``label``: per finding, synthetic vs real images positive for it (``label_<name> == 1``);
- ``prompt``: per prompt id, its synthetic images vs the real images of the reference split that carry the
  same prompt (prompt ids are shared by all splits' prompt tables);
- ``slice_bin``: for volumes only. "Slice-wise" metrics treat every 2D slice as one image: the overall
  metrics pool all slices of all volumes; per bin, slices whose relative position in their volume,
  ``slice_index / (n_slices - 1)``, lies in ``[b/B, (b+1)/B)`` (``B`` = ``evaluation.slice_bins``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from workflow.common.errors import InputError
from workflow.common.manifest import label_column, label_names
from workflow.evaluation.settings import EvaluationSettings

log = logging.getLogger(__name__)

METRICS = ("fid", "kid_mean", "kid_std", "precision", "recall")
GROUP_KINDS = ("label", "prompt", "slice_bin")
PRC_FULL_MATRIX = 20_000
"""Images in a set up to which precision/recall compute the whole N x N distance matrix (1.6 GB in float32;
PCam's 262,144 training patches would take 275 GB)."""
SLICEWISE = (
    "every 2D slice is one image: the overall metrics pool all slices of all volumes; per_slice_bin compares "
    "slices by relative position slice_index / (n_slices - 1) in their volume, in evaluation.slice_bins bins"
)


@dataclass
class Group:
    """A comparison: which synthetic and real rows, and why it cannot be computed (None if it can)."""

    kind: str
    name: str
    fake: np.ndarray
    real: np.ndarray
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def compare(fake: torch.Tensor, real: torch.Tensor, settings: EvaluationSettings) -> dict[str, Any]:
    """FID, KID (mean, std) and precision/recall of synthetic vs real features, with sample-size warnings.

    Returns a row (:func:`empty_row`): counts, the metrics (null with ``reason`` when either set is smaller
    than ``min_images``), ``kid_subset_size`` as used and ``warnings``.
    """
    n_fake, n_real, dim = len(fake), len(real), real.shape[1]
    smallest = min(n_fake, n_real)
    if smallest < settings.min_images:
        reason = f"fewer than evaluation.min_images = {settings.min_images} images"
        return empty_row(n_fake, n_real, f"{reason} (synthetic {n_fake}, real {n_real})")
    row = empty_row(n_fake, n_real, None)
    for which, n in (("synthetic", n_fake), ("real", n_real)):
        if n < dim:
            row["warnings"].append(
                f"FID: {n} {which} images < feature dimension {dim}, the covariance is rank-deficient and "
                "FID is biased upwards; compare FIDs only at equal N, or use KID"
            )
    row["kid_subset_size"] = min(settings.kid_subset_size, smallest)
    if row["kid_subset_size"] < settings.kid_subset_size:
        row["warnings"].append(f"KID: subset size {settings.kid_subset_size} clamped to min(n_real, n_fake)")
    options = {
        "kid_subsets": settings.kid_subsets,
        "kid_subset_size": row["kid_subset_size"],
        "prc_neighborhood": settings.prc_neighborhood,
        "rng_seed": settings.seed,
        "verbose": False,
    }
    stats = [fid_features_to_statistics(features) for features in (fake, real)]
    row["fid"] = fid_statistics_to_metric(*stats, False)[KEY_METRIC_FID]
    kid = kid_features_to_metric(fake, real, **options)
    row |= {"kid_mean": kid[KEY_METRIC_KID_MEAN], "kid_std": kid[KEY_METRIC_KID_STD]}
    if n_fake == n_real == row["kid_subset_size"]:
        row["kid_std"] = None
        row["warnings"].append("KID: every subset is both sets whole, so there is no std over subsets")
    if smallest > settings.prc_neighborhood:
        large = max(n_fake, n_real) > PRC_FULL_MATRIX
        prc = prc_features_to_metric(fake, real, **options, save_cpu_ram=large)
        row |= {"precision": prc[KEY_METRIC_PRECISION], "recall": prc[KEY_METRIC_RECALL]}
    else:
        row["warnings"].append(
            f"precision/recall need more than prc_neighborhood = {settings.prc_neighborhood}"
        )
    return row


def empty_row(n_fake: int, n_real: int, reason: str | None) -> dict[str, Any]:
    """A result row with its counts and no metrics yet."""
    return {"n_fake": n_fake, "n_real": n_real, **dict.fromkeys(METRICS), "kid_subset_size": None} | {
        "reason": reason,
        "warnings": [],
    }


def slice_position(frame: pd.DataFrame) -> pd.Series:
    """Relative position of each slice in its volume, 0 (first) to 1 (last); NaN for 2D images."""
    if "slice_index" not in frame or "volume_shape" not in frame or "slice_axis" not in frame:
        return pd.Series(np.nan, index=frame.index)
    known = frame["slice_index"].notna() & frame["volume_shape"].notna() & frame["slice_axis"].notna()
    position = pd.Series(np.nan, index=frame.index)
    for i in frame.index[known]:
        n_slices = json.loads(frame.at[i, "volume_shape"])[int(frame.at[i, "slice_axis"])]
        position[i] = int(frame.at[i, "slice_index"]) / max(n_slices - 1, 1)
    return position


def has_volumes(frame: pd.DataFrame) -> bool:
    """Whether a manifest holds slices of volumes."""
    return "volume_id" in frame and bool(frame["volume_id"].notna().any())


def groups(fake: pd.DataFrame, real: pd.DataFrame, slice_bins: int) -> Iterator[Group]:
    """The per-label, per-prompt and (for volumes) per-slice-position comparisons (module docstring).

    Both frames carry ``prompt_id`` (``real``: from the reference split's prompts table of the generator's
    prompt variant; NA for none), compared as text (a mask-text generator's ids are text, the tables'
    integers).
    """
    for name in [n for n in label_names(fake) if label_column(n) in real]:
        column = label_column(name)
        yield Group("label", name, (fake[column] == 1).to_numpy(), (real[column] == 1).to_numpy())
    fake_ids, real_ids = (frame["prompt_id"].astype("string") for frame in (fake, real))
    for prompt_id, rows in fake.groupby("prompt_id", sort=True):
        fake_rows = (fake_ids == str(prompt_id)).to_numpy(dtype=bool, na_value=False)
        real_rows = (real_ids == str(prompt_id)).to_numpy(dtype=bool, na_value=False)
        yield Group(
            "prompt", str(prompt_id), fake_rows, real_rows, extra={"prompt": str(rows["prompt"].iloc[0])}
        )
    if has_volumes(real):
        yield from slice_groups(slice_position(fake), slice_position(real), slice_bins)


def slice_groups(fake: pd.Series, real: pd.Series, bins: int) -> Iterator[Group]:
    """One group per bin of relative slice position; null when the synthetic images carry no position."""
    reason = None if fake.notna().any() else "the synthetic images carry no slice position (slice_index)"
    fake_bin = np.minimum(np.floor(fake.to_numpy() * bins), bins - 1)
    real_bin = np.minimum(np.floor(real.to_numpy() * bins), bins - 1)
    for b in range(bins):
        name = f"{b / bins:.2f}-{(b + 1) / bins:.2f}"
        yield Group("slice_bin", name, fake_bin == b, real_bin == b, reason)


def evaluate_group(
    group: Group, fake: torch.Tensor, real: torch.Tensor, settings: EvaluationSettings
) -> dict[str, Any]:
    """One row of the per-group table: the group's id, counts, metrics, reason and warnings."""
    head = {"group": group.kind, "name": group.name, **group.extra}
    if group.reason is not None:
        return head | empty_row(int(group.fake.sum()), int(group.real.sum()), group.reason)
    rows = [torch.from_numpy(np.flatnonzero(mask)) for mask in (group.fake, group.real)]
    return head | compare(fake[rows[0]], real[rows[1]], settings)


def clean(row: Mapping[str, Any]) -> dict[str, Any]:
    """A table row for the JSON report: without its group and name, NaN/inf as null."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in row.items()
        if key not in ("group", "name")
    }


def volume_count(frame: pd.DataFrame) -> int | None:
    """Number of volumes the slices come from; None for 2D images."""
    return int(frame["volume_id"].nunique()) if has_volumes(frame) else None


def read_sets(
    dataset_in: str, samples_in: str, prompts_in: str, split: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The real images of ``split`` (with their ``prompt_id``) and the synthetic images.

    Raises:
        InputError: when either set is empty.
    """
    dataset = pd.read_parquet(dataset_in)
    real = dataset[dataset["split"] == split].reset_index(drop=True)
    fake = pd.read_parquet(samples_in)
    if real.empty or fake.empty:
        empty = f"split '{split}' of {dataset_in} (evaluation.reference_split)" if real.empty else samples_in
        raise InputError(f"no images to evaluate in {empty}")
    prompts = pd.read_parquet(prompts_in, columns=["image_id", "prompt_id"])
    return real.merge(prompts, on="image_id", how="left"), fake
