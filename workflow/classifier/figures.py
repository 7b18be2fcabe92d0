"""The classifier stage's charts: test ROC curves and subgroup AUROC bars with their CIs.

Drawn with matplotlib's object API and written atomically (:func:`workflow.common.figures.save_figure`); the
numbers behind every figure are in the stage's JSON files. Grad-CAM overlays use
:func:`workflow.common.figures.image_grid`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from workflow.common.figures import save_figure


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
    save_figure(figure, path)


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
    save_figure(figure, path)
