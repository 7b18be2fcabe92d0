"""Charts for people to look at: the fine-tuning loss curve, and the classifier stage's test ROC curves,
subgroup AUROC bars with CIs and Grad-CAM overlays.

Drawn with matplotlib's object API (``Figure``, no pyplot state, no display needed) and written atomically.
The numbers behind every figure are in the stage's JSON files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from workflow.common.provenance import atomic_path


def _save(figure: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def loss_curve(losses: Sequence[float], path: str | Path, title: str) -> None:
    """The loss per optimizer step (grey) and its trailing mean over 5% of the steps (black)."""
    figure = Figure(figsize=(6.4, 3.6), layout="constrained")
    axes = figure.subplots()
    steps = np.arange(1, len(losses) + 1)
    smooth = pd.Series(losses, dtype=float).rolling(max(len(losses) // 20, 1), min_periods=1).mean()
    axes.plot(steps, losses, color="0.7", linewidth=0.8, label="loss")
    axes.plot(steps, smooth, color="black", linewidth=1.5, label="moving average")
    axes.set(xlabel="optimizer step", ylabel="loss", title=title)
    axes.legend(fontsize="small")
    _save(figure, path)


def roc_curves(
    truth: pd.DataFrame, scores: pd.DataFrame, report: Mapping[str, Any], path: str, title: str
) -> None:
    """One test ROC curve per finding whose AUROC is defined, AUROC in the legend."""
    figure = Figure(figsize=(6, 5.5), layout="constrained")
    axes = figure.subplots()
    for name in scores.columns:
        value = report["labels"][name]["auroc"]
        if value is None:
            continue
        y, p = truth[name].to_numpy(float), scores[name].to_numpy(float)
        known = ~np.isnan(y)
        fpr, tpr, _ = roc_curve(y[known], p[known])
        axes.plot(fpr, tpr, label=f"{name} ({value:.2f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axes.set(
        xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01)
    )
    axes.legend(fontsize="small", loc="lower right", title="finding (AUROC)")
    _save(figure, path)


def subgroup_auroc(fairness: Mapping[str, Any], path: str, title: str) -> None:
    """Per attribute, AUROC bars per finding and group with their bootstrap CIs (missing bars: undefined)."""
    attributes = fairness["attributes"]
    figure = Figure(figsize=(10, 2.8 * max(len(attributes), 1)), layout="constrained")
    figure.suptitle(title)
    panels = np.atleast_1d(figure.subplots(max(len(attributes), 1), 1))[: len(attributes)]
    for axes, (attribute, block) in zip(panels, attributes.items(), strict=True):
        findings, groups = list(block["labels"]), block["groups"]
        width = 0.8 / max(len(groups), 1)
        for k, group in enumerate(groups):
            records = [block["labels"][name]["by_group"].get(group, {}) for name in findings]
            values = np.array([r.get("auroc") if r.get("auroc") is not None else np.nan for r in records])
            cis = [r.get("auroc_ci") or [v, v] for r, v in zip(records, values, strict=True)]
            errors = np.abs(np.array(cis, dtype=float).reshape(-1, 2).T - values)
            x = np.arange(len(findings)) + (k - (len(groups) - 1) / 2) * width
            axes.bar(x, values, width, yerr=np.nan_to_num(errors), capsize=2, label=group)
        axes.set_xticks(np.arange(len(findings)), findings, rotation=20, ha="right", fontsize="small")
        axes.set(ylabel="AUROC", ylim=(0, 1.05), title=attribute)
        axes.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        axes.legend(fontsize="x-small", ncols=min(len(groups), 6), loc="lower left")
    _save(figure, path)


def image_grid(
    images: Sequence[tuple[np.ndarray, str] | None],
    path: str,
    title: str,
    columns: int = 4,
    empty: str = "no test image with a finding",
) -> None:
    """RGB images with their titles in a grid, row by row; a None cell stays blank, and ``empty`` is
    written instead when there is no image at all."""
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
    _save(figure, path)
