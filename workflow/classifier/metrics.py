"""Per-finding classification metrics with bootstrap confidence intervals.

One finding at a time, rows whose label is missing (NaN) left out:

- **AUROC** (sklearn ``roc_auc_score``) and **AUPRC** as average precision (sklearn
  ``average_precision_score``: the step-wise sum of precision times recall increments, not the trapezoid);
- an **operating point** chosen on the *validation* split (:func:`choose_thresholds`): Youden's J (Youden
  1950; the threshold maximising TPR - FPR on the validation ROC curve), the threshold maximising F1 on the
  validation precision-recall curve, or a fixed value. A score at or above the threshold is a positive. At it,
  on test: **F1** (sklearn ``f1_score``), **TPR** = TP / (TP + FN) and **FPR** = FP / (FP + TN);
- the **Brier score** (Brier 1950; sklearn ``brier_score_loss``), which the LoRA-fairness code called "ECE";
- the binned **expected calibration error** (:func:`expected_calibration_error`);
- **percentile bootstrap** CIs (Efron & Tibshirani 1993) of AUROC and AUPRC and of their macro means: the test
  images are resampled with replacement ``resamples`` times from ``numpy.random.default_rng(seed)`` (one index
  matrix shared by all findings, so the macro CI resamples images jointly); a resample in which a finding has
  a single class is undefined for it and dropped (the count is recorded). Images of one patient are not
  resampled as a cluster.

A metric that is undefined (e.g. AUROC when the test split has only positives) is ``None`` (JSON null) and
its reason is written next to it, under ``undefined``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

THRESHOLD_METHODS = ("youden", "max_f1", "fixed")
BOOTSTRAPPED = ("auroc", "auprc")
_CHUNK_CELLS = 4_000_000  # resamples x rows evaluated at once, to bound memory on large test sets

# The per-finding metrics that are also averaged over findings ("macro"), in report order.
MACRO_METRICS = ("auroc", "auprc", "f1", "tpr", "fpr", "brier", "ece")


def class_problem(y: np.ndarray) -> str | None:
    """Why a two-class metric is undefined on labels ``y`` (no NaN), or None when it is defined."""
    if len(y) == 0:
        return "no image with a known label"
    if not (y == 1).any():
        return "only negatives (no positive image)"
    if not (y == 0).any():
        return "only positives (no negative image)"
    return None


def auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC (sklearn) over the rows with a known label; None when it is undefined."""
    known = ~np.isnan(y)
    y, score = y[known], score[known]
    return None if class_problem(y) else float(roc_auc_score(y, score))


def auroc_batch(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUROC of every row of ``(B, n)`` arrays at once (NaN labels left out; NaN where undefined).

    Mann-Whitney form: (sum of the positives' ranks - n+(n+ + 1)/2) / (n+ n-), with tied scores given
    their average rank, which equals sklearn's ``roc_auc_score``. Hand-written because the bootstrap needs
    thousands of AUROCs per finding and subgroup, and one sklearn call costs about a millisecond. Rows with an
    unknown label get the score +inf: they rank above every known row and so leave its rank unchanged.
    """
    known = ~np.isnan(y)
    positive = known & (y == 1)
    n_pos = positive.sum(axis=1)
    n_neg = (known & (y == 0)).sum(axis=1)
    ranks = rankdata(np.where(known, score, np.inf), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), value, np.nan)


def average_precision_batch(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Average precision of every row of ``(B, n)`` arrays at once (NaN labels left out; NaN without
    positives).

    AP = sum over distinct thresholds (scores, descending) of precision x recall increment, exactly as
    sklearn's ``average_precision_score`` (tied scores form one threshold). Hand-written for speed, like
    :func:`auroc_batch`. Rows with an unknown label become negatives with score -inf: they come last, after
    every positive, and so change no term of the sum.
    """
    known = ~np.isnan(y)
    truth = np.where(known, y, 0.0)
    order = np.argsort(-np.where(known, score, -np.inf), axis=1, kind="stable")
    truth = np.take_along_axis(truth, order, axis=1)
    ordered = np.take_along_axis(np.where(known, score, -np.inf), order, axis=1)
    hits = np.cumsum(truth, axis=1)
    last_of_tie = np.ones_like(ordered, dtype=bool)
    last_of_tie[:, :-1] = ordered[:, :-1] != ordered[:, 1:]
    at_ends = np.where(last_of_tie, hits, 0.0)
    before = np.concatenate(
        [np.zeros((len(hits), 1)), np.maximum.accumulate(at_ends, axis=1)[:, :-1]], axis=1
    )
    precision = hits / np.arange(1, hits.shape[1] + 1)
    gained = np.where(last_of_tie, hits - before, 0.0)
    n_pos = truth.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_pos > 0, (precision * gained).sum(axis=1) / n_pos, np.nan)


BATCH = {"auroc": auroc_batch, "auprc": average_precision_batch}


def expected_calibration_error(y: np.ndarray, probability: np.ndarray, bins: int) -> float:
    """Binned expected calibration error of one binary finding (Naeini et al., AAAI 2015; Guo et al., ICML
    2017).

    [0, 1] is cut into ``bins`` equal-width bins [k/bins, (k+1)/bins) (the last one closed); with n_b
    images in bin b, y_b their fraction of positives and p_b their mean predicted probability,
    ECE = sum_b (n_b / N) |y_b - p_b|; empty bins add nothing. Hand-written: sklearn's ``calibration_curve``
    drops empty bins without returning bin counts, and torchmetrics (same formula) is not a dependency.
    """
    which = np.minimum((probability * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    positives = np.bincount(which, weights=y, minlength=bins)
    mass = np.bincount(which, weights=probability, minlength=bins)
    return float(np.abs(positives - mass)[count > 0].sum() / len(y))


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n)`` row indices drawn with replacement from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap(y: np.ndarray, score: np.ndarray, statistic: str, indices: np.ndarray) -> np.ndarray:
    """``statistic`` (``auroc`` or ``auprc``) on every resample ``indices[b]`` (NaN where undefined)."""
    step = max(1, _CHUNK_CELLS // max(indices.shape[1], 1))
    parts = [
        BATCH[statistic](y[rows], score[rows])
        for rows in np.array_split(indices, range(step, len(indices), step))
    ]
    return np.concatenate(parts) if parts else np.empty(0)


def percentile_ci(values: np.ndarray, confidence: float) -> dict[str, Any]:
    """Percentile interval of the defined bootstrap values: ``{"ci": [low, high] | None, "dropped": k}``."""
    defined = values[~np.isnan(values)]
    dropped = int(len(values) - len(defined))
    if len(defined) == 0:
        return {"ci": None, "dropped": dropped}
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return {"ci": [float(low), float(high)], "dropped": dropped}


def choose_threshold(y: np.ndarray, score: np.ndarray, method: str, fixed: float) -> dict[str, Any]:
    """The operating point of one finding from validation labels and scores (see the module docstring)."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method '{method}' is not one of {THRESHOLD_METHODS}")
    known = ~np.isnan(y)
    y, score = y[known], score[known]
    problem = class_problem(y)
    if method == "fixed" or problem:
        note = {"note": f"validation split: {problem}; fixed threshold used"} if method != "fixed" else {}
        return {"value": float(fixed), "method": "fixed", "chosen_on": "val"} | note
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(y, score)
        best = 1 + int(np.argmax((tpr - fpr)[1:]))  # thresholds[0] is +inf (nothing positive)
    else:
        precision, recall, thresholds = precision_recall_curve(y, score)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
        best = int(np.argmax(f1))
    return {"value": float(thresholds[best]), "method": method, "chosen_on": "val"}


def choose_thresholds(
    val_truth: pd.DataFrame, val_scores: pd.DataFrame, method: str, fixed: float
) -> dict[str, dict[str, Any]]:
    """Operating points of every finding (columns) from *validation* labels and scores (indexed by image)."""
    return {
        name: choose_threshold(
            val_truth[name].to_numpy(float), val_scores[name].to_numpy(float), method, fixed
        )
        for name in val_scores.columns
    }


def label_report(y: np.ndarray, probability: np.ndarray, threshold: float, ece_bins: int) -> dict[str, Any]:
    """Test metrics of one finding at its validation threshold; undefined ones are None with a reason."""
    known = ~np.isnan(y)
    y, probability = y[known], probability[known]
    problem = class_problem(y)
    out: dict[str, Any] = {"n": len(y), "positives": int((y == 1).sum()), "missing": int((~known).sum())}
    undefined: dict[str, str] = {}
    predicted = (probability >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel() if len(y) else (0, 0, 0, 0)
    values = {
        "auroc": None if problem else roc_auc_score(y, probability),
        "auprc": average_precision_score(y, probability) if tp + fn else None,
        "f1": f1_score(y, predicted, zero_division=np.nan) if len(y) else None,
        "tpr": tp / (tp + fn) if tp + fn else None,
        "fpr": fp / (fp + tn) if fp + tn else None,
        "brier": brier_score_loss(y, probability) if len(y) else None,
        "ece": expected_calibration_error(y, probability, ece_bins) if len(y) else None,
    }
    reasons = {
        "auroc": problem,
        "auprc": "no positive image",
        "f1": "no image is positive or predicted positive",
        "tpr": "no positive image",
        "fpr": "no negative image",
    }
    for name, value in values.items():
        if value is None or np.isnan(value):
            out[name] = None
            undefined[name] = reasons[name] if len(y) else "no image with a known label"
        else:
            out[name] = float(value)
    return out | ({"undefined": undefined} if undefined else {})


def evaluate(
    truth: pd.DataFrame,
    scores: pd.DataFrame,
    thresholds: Mapping[str, Mapping[str, Any]],
    ece_bins: int,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Per-finding and macro test metrics with bootstrap CIs (``truth``, ``scores``: a column per finding)."""
    indices = resample_indices(len(scores), resamples, seed)
    labels: dict[str, Any] = {}
    draws: dict[str, dict[str, np.ndarray]] = {name: {} for name in BOOTSTRAPPED}
    for name in scores.columns:
        y, p = truth[name].to_numpy(float), scores[name].to_numpy(float)
        report = label_report(y, p, thresholds[name]["value"], ece_bins)
        report["threshold"] = dict(thresholds[name])
        for statistic in BOOTSTRAPPED:
            if report[statistic] is not None:
                draws[statistic][name] = bootstrap(y, p, statistic, indices)
                interval = percentile_ci(draws[statistic][name], confidence)
                report[f"{statistic}_ci"] = interval["ci"]
                report[f"{statistic}_resamples_dropped"] = interval["dropped"]
        labels[name] = report
    macro: dict[str, Any] = {}
    for metric in MACRO_METRICS:
        included = [n for n, r in labels.items() if r[metric] is not None]
        macro[metric] = float(np.mean([labels[n][metric] for n in included])) if included else None
        if len(included) < len(labels):
            macro.setdefault("excluded", {})[metric] = sorted(set(labels) - set(included))
    for statistic, per_label in draws.items():
        if per_label:
            interval = percentile_ci(np.mean(np.stack(list(per_label.values())), axis=0), confidence)
            macro[f"{statistic}_ci"] = interval["ci"]
            macro[f"{statistic}_resamples_dropped"] = interval["dropped"]
    settings = {"ece_bins": ece_bins, "bootstrap_resamples": resamples, "confidence": confidence}
    return {"labels": labels, "macro": macro, "settings": settings}
