"""Grad-CAM focus metrics (the LoRA-fairness "focus observation", seeds spec 5.5) with the grad-cam package.

**Cases.** ``classifier.focus.images`` test images with at least one positive finding, drawn without
replacement with the evaluation seed; each is explained for every positive finding the classifier has.

**CAM.** ``pytorch_grad_cam.GradCAM`` (Selvaraju et al., ICCV 2017) on the backbone's last convolutional block
(:func:`workflow.classifier.networks.cam_layer`) for the finding's logit: ReLU(sum_k a_k A_k), a_k the spatial
mean of d logit / d A_k, upsampled bilinearly to the input size and min-max scaled to [0, 1] by the package.
Then p = cam / sum(cam) over the N pixels (the metrics are null when the CAM is zero everywhere):

- ``entropy`` = -sum p log p (nats; 0 log 0 = 0), from 0 (one pixel) to log N (uniform): low is focused;
- ``sparsity_85`` = k / N, k the fewest pixels whose p add up to at least 0.85 (largest p first): the share
  of the image that holds 85 % of the attention: low is focused;
- ``region_fraction`` = sum of p over the pixels whose mask class is one of the finding's regions
  (``classifier.focus.regions``, e.g. Cardiomegaly: heart): the share of attention inside the anatomy where
  the finding lies; null when the image has no mask or the finding no region. A region the dataset has no
  mask class for (``dataset.mask_classes``, e.g. ``[background]`` for CheXpert) is left out: the report
  lists it under ``regions_unavailable`` and everything else is computed as usual.

Per finding and over all cases: the means of these, the variance of the confidences (the predicted
probability of the explained finding) and Pearson's r between confidence and entropy, as in the LoRA-fairness
code (null with fewer than three cases or a constant input). Differences from that code: grad-cam instead of
Captum's LayerGradCam (the same map up to the package's min-max scaling, which subtracts the minimum: 0 after
the ReLU unless every pixel is positive), and metrics on the input-resolution map.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy.stats import pearsonr

from workflow.classifier import networks
from workflow.classifier.settings import FocusSettings
from workflow.classifier.training import image_tensor
from workflow.common.figures import load_gray
from workflow.common.manifest import label_column

log = logging.getLogger(__name__)

MASS = 0.85


def distribution(cam: np.ndarray) -> np.ndarray | None:
    """The CAM normalised to sum 1 (None when it is zero everywhere)."""
    total = float(cam.sum())
    return cam / total if total > 0 else None


def entropy(p: np.ndarray) -> float:
    """Shannon entropy -sum p log p in nats (0 log 0 = 0)."""
    positive = p[p > 0]
    return float(-(positive * np.log(positive)).sum())


def sparsity(p: np.ndarray, mass: float = MASS) -> float:
    """Fraction of pixels needed, largest p first, to reach ``mass`` of the total."""
    cumulative = np.cumsum(np.sort(p.ravel())[::-1])
    needed = min(int(np.searchsorted(cumulative, mass * cumulative[-1], side="left")) + 1, p.size)
    return needed / p.size


def region_fraction(p: np.ndarray, mask: np.ndarray, class_ids: Sequence[int]) -> float:
    """Share of the CAM mass on pixels whose mask class is in ``class_ids``."""
    return float(p[np.isin(mask, list(class_ids))].sum())


def region_ids(
    regions: Mapping[str, Sequence[str]], mask_classes: Sequence[str]
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Finding -> mask class ids of its regions, and finding -> why its region is unavailable (a region that
    is not one of the dataset's mask classes, so no mask can show it)."""
    ids, unavailable = {}, {}
    for finding, names in regions.items():
        unknown = [n for n in names if n not in mask_classes]
        if unknown:
            unavailable[finding] = (
                f"classifier.focus.regions['{finding}'] = {list(names)}: {unknown} not in "
                f"dataset.mask_classes {list(mask_classes)}"
            )
        else:
            ids[finding] = [mask_classes.index(n) for n in names]
    return ids, unavailable


def select_cases(test: pd.DataFrame, labels: Sequence[str], images: int, seed: int) -> list[tuple[int, str]]:
    """(row position, finding) pairs: up to ``images`` seeded test rows, each with its positive findings."""
    positive = test[[label_column(name) for name in labels]].to_numpy(float) == 1
    candidates = np.flatnonzero(positive.any(axis=1))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, size=min(images, len(candidates)), replace=False))
    return [(int(row), labels[j]) for row in chosen for j in np.flatnonzero(positive[row])]


def grad_cams(model: networks.Classifier, images: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps ``(B, H, W)`` in [0, 1] of logit ``targets[b]`` for image ``b``."""
    with GradCAM(model=model, target_layers=[networks.cam_layer(model)]) as explainer:
        return explainer(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])


def _summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [c[key] for c in cases if c[key] is not None]
        return float(np.mean(values)) if values else None

    paired = np.array([(c["confidence"], c["entropy"]) for c in cases if c["entropy"] is not None]).reshape(
        -1, 2
    )
    constant = len(paired) < 3 or np.ptp(paired[:, 0]) == 0 or np.ptp(paired[:, 1]) == 0
    return {
        "cams": len(cases),
        "mean_entropy": mean("entropy"),
        "mean_sparsity_85": mean("sparsity_85"),
        "mean_region_fraction": mean("region_fraction"),
        "confidence_variance": float(np.var([c["confidence"] for c in cases])) if cases else None,
        "pearson_confidence_entropy": None
        if constant
        else float(pearsonr(paired[:, 0], paired[:, 1]).statistic),
    }


def focus(
    model: networks.Classifier,
    spec: networks.ModelSpec,
    test: pd.DataFrame,
    settings: FocusSettings,
) -> tuple[dict[str, Any], list[tuple[np.ndarray, str]]]:
    """Focus report of the cases and the RGB overlays (with titles) of the first ``settings.overlays``."""
    regions, unavailable = region_ids(settings.regions, settings.mask_classes)
    for reason in unavailable.values():
        log.warning("%s: no region fraction for it", reason)
    cases = select_cases(test, spec.labels, settings.images, settings.seed)
    if not cases:
        empty = {"cases": [], "overall": _summary([]), "labels": {}, "note": "no test image has a finding"}
        return empty | {"regions_unavailable": unavailable}, []
    size = spec.image_size
    batch = torch.stack([image_tensor(str(test["image"].iloc[row]), spec) for row, _ in cases])
    targets = [spec.labels.index(name) for _, name in cases]
    maps = grad_cams(model, batch, targets)
    with torch.no_grad():
        confidence = torch.sigmoid(model(batch)).numpy()[np.arange(len(cases)), targets]
    records, overlays = [], []
    for k, ((row, name), cam) in enumerate(zip(cases, maps, strict=True)):
        mask_path = test["mask"].iloc[row] if "mask" in test else None
        p = distribution(cam)
        has_region = p is not None and name in regions and not pd.isna(mask_path)
        mask = load_gray(str(mask_path), size, Image.Resampling.NEAREST) if has_region else None
        record = {
            "image_id": str(test["image_id"].iloc[row]),
            "label": name,
            "confidence": float(confidence[k]),
            "entropy": None if p is None else entropy(p),
            "sparsity_85": None if p is None else sparsity(p),
            "region": settings.regions.get(name),
            "region_fraction": None if mask is None else region_fraction(p, mask, regions[name]),
        }
        records.append(record | ({"note": "CAM is zero everywhere"} if p is None else {}))
        if k < settings.overlays:
            rgb = batch[k].expand(3, -1, -1).permute(1, 2, 0).numpy()
            overlays.append((show_cam_on_image(rgb, cam, use_rgb=True), f"{name} p={confidence[k]:.2f}"))
    explained = dict.fromkeys(name for _, name in cases)
    per_label = {name: _summary([r for r in records if r["label"] == name]) for name in explained}
    report = {"overall": _summary(records), "labels": per_label, "cases": records}
    report |= {"regions_unavailable": unavailable, "entropy_max": float(np.log(size * size))}
    return report, overlays
