"""Subgroup performance and disparity on the test split, computed with fairlearn.

**Attributes** (``classifier.fairness.attributes``): the manifest columns ``sex``, ``race`` and ``site``, and
``age_group``: age cut at ``classifier.fairness.age_bins`` (upper edges, inclusive; the default 30, 50, 70
gives the LoRA-fairness groups <=30, 31-50, 51-70, 71+, names that assume whole-year ages).

**Missing values**: with ``missing: unknown`` rows without the attribute form the group ``unknown``, whose
metrics are reported but which takes no part in the disparities below (it is the images whose attribute was
not recorded, not a demographic group); with ``missing: exclude`` they are left out of that attribute.
Either way their number is recorded.

**Groups** are the values the attribute takes anywhere in the real dataset (all splits) and every age group,
so a group without test images (an empty subgroup) is listed with ``n`` = 0 and a note rather than vanishing.

**Per finding and group** (fairlearn ``MetricFrame``; rows with a missing label left out): ``n``, positives,
AUROC with its percentile-bootstrap CI (:mod:`workflow.classifier.metrics`), and TPR and FPR at the finding's
validation threshold. Undefined values (e.g. AUROC of a group without positives) are null with the reason.

**Disparity** (the LoRA-fairness figures show a "disparity" without defining it; here):

- ``gaps``: largest minus smallest value over the groups where it is defined (what
  ``MetricFrame.difference`` computes, taken from ``MetricFrame.by_group`` here so that the groups at
  either end are named) for AUROC, TPR and FPR;
- ``equalized_odds_difference`` (Hardt et al., NeurIPS 2016; fairlearn ``equalized_odds_difference``): the
  larger of the TPR and FPR gaps, over the groups that have positives and negatives only, because fairlearn
  counts an undefined rate as 0; the groups left out are listed;
- ``underdiagnosis`` (Seyyed-Kalantari et al., Nature Medicine 2021): per group, the fraction of images with a
  finding (No Finding = 0) that the classifier calls "No Finding" (score at or above its threshold), i.e.
  the FPR of the No Finding label; and its gap.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count, equalized_odds_difference
from fairlearn.metrics import false_positive_rate as fairlearn_fpr
from fairlearn.metrics import true_positive_rate as fairlearn_tpr

from workflow.classifier import metrics
from workflow.classifier.settings import FairnessSettings

UNKNOWN = "unknown"
DEFINITIONS = {
    "gap": "largest minus smallest value over the groups where it is defined (not 'unknown')",
    "equalized_odds_difference": (
        "max(TPR gap, FPR gap) over the groups with both classes, not 'unknown' (Hardt 2016)"
    ),
    "underdiagnosis": "per group: P(predicted No Finding | No Finding = 0), the FPR of No Finding",
}


def age_group_names(edges: Sequence[int]) -> list[str]:
    """Names of the age groups cut at ``edges``: ``<=30``, ``31-50``, ``51-70``, ``71+`` for 30, 50, 70."""
    inner = [f"{low + 1}-{high}" for low, high in itertools.pairwise(edges)]
    return [f"<={edges[0]}", *inner, f"{edges[-1] + 1}+"]


def attribute_values(frame: pd.DataFrame, attribute: str, age_bins: Sequence[int]) -> pd.Series:
    """The group of every row for ``attribute`` (missing as ``<NA>``)."""
    if attribute == "age_group":
        bins = [-np.inf, *age_bins, np.inf]
        groups = pd.cut(frame["age"].astype(float), bins=bins, right=True, labels=age_group_names(age_bins))
        return groups.astype("string")
    return frame[attribute].astype("string")


def expected_groups(
    dataset: pd.DataFrame, attribute: str, age_bins: Sequence[int], missing: str
) -> list[str]:
    """Every group of ``attribute``: its values in the whole dataset (and all age groups), sorted."""
    values = attribute_values(dataset, attribute, age_bins)
    groups = age_group_names(age_bins) if attribute == "age_group" else sorted(values.dropna().unique())
    return [*groups, UNKNOWN] if missing == UNKNOWN and values.isna().any() else list(groups)


def _rate(y: np.ndarray, score: np.ndarray, threshold: float, rate: str) -> float:
    """TPR or FPR at ``threshold`` with fairlearn; NaN (not fairlearn's 0) when the rate is undefined."""
    y, predicted = np.asarray(y, float), (np.asarray(score, float) >= threshold).astype(int)
    if rate == "tpr":
        return float(fairlearn_tpr(y, predicted)) if (y == 1).any() else np.nan
    return float(fairlearn_fpr(y, predicted)) if (y == 0).any() else np.nan


def _group_metrics(threshold: float, resamples: int, confidence: float, seed: int) -> dict[str, Any]:
    def auroc(y: np.ndarray, score: np.ndarray) -> float:
        value = metrics.auroc(np.asarray(y, float), np.asarray(score, float))
        return np.nan if value is None else value

    def auroc_ci(y: np.ndarray, score: np.ndarray) -> list[float] | None:
        y, score = np.asarray(y, float), np.asarray(score, float)
        if metrics.class_problem(y):  # AUROC undefined: every resample would be too
            return None
        draws = metrics.bootstrap(y, score, "auroc", metrics.resample_indices(len(y), resamples, seed))
        return metrics.percentile_ci(draws, confidence)["ci"]

    return {
        "n": count,
        "positives": lambda y, score: int((np.asarray(y) == 1).sum()),
        "auroc": auroc,
        "auroc_ci": auroc_ci,
        "tpr": lambda y, score: _rate(y, score, threshold, "tpr"),
        "fpr": lambda y, score: _rate(y, score, threshold, "fpr"),
    }


def _group_record(row: pd.Series, y: np.ndarray) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name, value in row.items():
        undefined = value is None or (isinstance(value, float) and np.isnan(value))
        record[str(name)] = None if undefined else (int(value) if name in ("n", "positives") else value)
    reasons = {"auroc": metrics.class_problem(y), "tpr": "no positive image", "fpr": "no negative image"}
    undefined = {name: reasons[name] for name in reasons if record.get(name) is None}
    return record | ({"undefined": undefined} if undefined else {})


def _gap(values: pd.Series) -> dict[str, Any]:
    defined = values.dropna()
    if len(defined) < 2:
        return {"value": None, "reason": f"defined in {len(defined)} group(s); a gap needs two"}
    high, low = defined.idxmax(), defined.idxmin()
    return {
        "value": float(defined[high] - defined[low]),
        "max": [str(high), float(defined[high])],
        "min": [str(low), float(defined[low])],
    }


def _equalized_odds(y: np.ndarray, score: np.ndarray, groups: pd.Series, threshold: float) -> dict[str, Any]:
    frame = pd.DataFrame({"y": y, "group": groups.to_numpy()})
    both = frame.groupby("group")["y"].agg(lambda v: (v == 1).any() and (v == 0).any())
    eligible = sorted(g for g in both.index[both.astype(bool)] if g != UNKNOWN)
    excluded = {
        str(g): "attribute not recorded: not a group" if g == UNKNOWN else "only one class in this group"
        for g in both.index
        if g not in eligible
    }
    if len(eligible) < 2:
        return {
            "value": None,
            "reason": "fewer than two groups with positives and negatives",
            "excluded": excluded,
        }
    keep = frame["group"].isin(eligible).to_numpy()
    value = equalized_odds_difference(
        y[keep], (score[keep] >= threshold).astype(int), sensitive_features=frame["group"][keep]
    )
    return {"value": float(value), "groups": [str(g) for g in eligible]} | (
        {"excluded": excluded} if excluded else {}
    )


def label_by_group(
    y: np.ndarray,
    score: np.ndarray,
    groups: pd.Series,
    expected: Sequence[str],
    threshold: float,
    boot: Mapping,
) -> dict[str, Any]:
    """One finding's subgroup metrics, gaps and equalized-odds difference (rows with a NaN label dropped)."""
    known = ~np.isnan(y)
    y, score, groups = y[known], score[known], groups[known].reset_index(drop=True)
    frame = MetricFrame(
        metrics=_group_metrics(threshold, boot["resamples"], boot["confidence"], boot["seed"]),
        y_true=y,
        y_pred=score,
        sensitive_features=groups.rename("group"),
    )
    by_group = {
        str(g): _group_record(frame.by_group.loc[g], y[(groups == g).to_numpy()])
        for g in frame.by_group.index
    }
    for g in expected:
        by_group.setdefault(g, {"n": 0, "note": "no test image in this group"})
    scalar = frame.by_group[["auroc", "tpr", "fpr"]].astype(float).drop(index=UNKNOWN, errors="ignore")
    return {
        "threshold": threshold,
        "by_group": {g: by_group[g] for g in [*expected, *sorted(set(by_group) - set(expected))]},
        "gaps": {name: _gap(scalar[name]) for name in scalar.columns},
        "equalized_odds_difference": _equalized_odds(y, score, groups, threshold),
    }


def assess(
    test: pd.DataFrame,
    truth: pd.DataFrame,
    scores: pd.DataFrame,
    thresholds: Mapping[str, Mapping[str, Any]],
    dataset: pd.DataFrame,
    settings: FairnessSettings,
    boot: Mapping[str, Any],
) -> dict[str, Any]:
    """Fairness report of every attribute in ``settings`` (``classifier.fairness``) on the test rows.

    ``test``, ``truth`` and ``scores`` are row-aligned; ``dataset`` (all splits) fixes the expected groups;
    ``boot`` has the bootstrap ``resamples``, ``confidence`` and ``seed``.
    """
    bins, policy, no_finding = settings.age_bins, settings.missing, settings.no_finding_label
    report: dict[str, Any] = {}
    for attribute in settings.attributes:
        values = attribute_values(test, attribute, bins).reset_index(drop=True)
        missing = values.isna().to_numpy()
        keep = np.ones(len(values), bool) if policy == UNKNOWN else ~missing
        groups = values.fillna(UNKNOWN)[keep].reset_index(drop=True)
        expected = expected_groups(dataset, attribute, bins, policy)
        labels = {
            name: label_by_group(
                truth[name].to_numpy(float)[keep],
                scores[name].to_numpy(float)[keep],
                groups,
                expected,
                thresholds[name]["value"],
                boot,
            )
            for name in scores.columns
        }
        if no_finding in labels:
            fpr = {g: r.get("fpr") for g, r in labels[no_finding]["by_group"].items()}
            underdiagnosis = {"label": no_finding, "by_group": fpr, "gap": labels[no_finding]["gaps"]["fpr"]}
        else:
            underdiagnosis = {
                "value": None,
                "reason": f"'{no_finding}' is not one of the classifier's findings",
            }
        report[attribute] = {
            "groups": expected,
            "missing": {"policy": policy, "rows": int(missing.sum())},
            "labels": labels,
            "underdiagnosis": underdiagnosis,
        }
    return {"attributes": report, "definitions": DEFINITIONS}
