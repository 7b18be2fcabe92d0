"""Metric functions against hand-computed values, and the bootstrap's reproducibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from workflow.classifier import metrics

Y = np.array([0.0, 0.0, 1.0, 1.0])
S = np.array([0.1, 0.4, 0.35, 0.8])


def test_auroc_and_auprc_by_hand():
    # AUROC: of the 4 (positive, negative) pairs, 3 are ordered right. AP: P=1 at R=0.5, P=2/3 at R=1.
    assert metrics.auroc(Y, S) == pytest.approx(0.75)
    assert metrics.auroc_batch(Y[None], S[None])[0] == pytest.approx(0.75)
    assert metrics.average_precision_batch(Y[None], S[None])[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_ties_count_half_and_form_one_threshold():
    y, s = np.array([[0.0, 1.0, 0.0, 1.0]]), np.array([[0.5, 0.5, 0.2, 0.9]])
    assert metrics.auroc_batch(y, s)[0] == pytest.approx(3.5 / 4)
    assert metrics.average_precision_batch(y, s)[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_batch_versions_equal_sklearn_with_ties_and_missing_labels():
    rng = np.random.default_rng(0)
    y = (rng.random((30, 25)) < 0.4).astype(float)
    s = np.round(rng.random((30, 25)), 1)  # many ties
    y[:, :3] = np.nan
    for b in range(len(y)):
        known = ~np.isnan(y[b])
        if len(set(y[b, known])) < 2:
            continue
        assert metrics.auroc_batch(y[b : b + 1], s[b : b + 1])[0] == pytest.approx(
            roc_auc_score(y[b, known], s[b, known])
        )
        assert metrics.average_precision_batch(y[b : b + 1], s[b : b + 1])[0] == pytest.approx(
            average_precision_score(y[b, known], s[b, known])
        )


def test_undefined_resamples_are_nan():
    y = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    s = np.array([[0.2, 0.3, 0.4]] * 2)
    assert np.isnan(metrics.auroc_batch(y, s)).all()
    assert metrics.average_precision_batch(y, s)[0] == pytest.approx(1.0)
    assert np.isnan(metrics.average_precision_batch(y, s)[1])


def test_ece_is_binned_calibration_not_brier():
    y, p = np.array([0.0, 1.0, 1.0, 0.0]), np.array([0.05, 0.15, 0.95, 0.85])
    # Two bins, each: mean p 0.1 (0.9), fraction positive 0.5 -> |0.5 - 0.1| = 0.4, weight 1/2 each.
    assert metrics.expected_calibration_error(y, p, bins=2) == pytest.approx(0.4)
    report = metrics.label_report(y, p, threshold=0.5, ece_bins=2)
    assert report["ece"] == pytest.approx(0.4)
    assert report["brier"] == pytest.approx((0.05**2 + 0.85**2 + 0.05**2 + 0.85**2) / 4)
    # p = 1 falls into the last (closed) bin; a perfectly calibrated extreme prediction has ECE 0.
    assert metrics.expected_calibration_error(np.array([1.0, 0.0]), np.array([1.0, 0.0]), bins=10) == 0.0


def test_thresholds_youden_max_f1_fixed_and_fallback():
    # Youden's J = TPR - FPR is 0.5 at 0.8 and at 0.35: the first (higher) threshold is taken.
    assert metrics.choose_threshold(Y, S, "youden", 0.5)["value"] == pytest.approx(0.8)
    # F1: 2/3 at 0.8, 0.5 at 0.4, 0.8 at 0.35.
    assert metrics.choose_threshold(Y, S, "max_f1", 0.5)["value"] == pytest.approx(0.35)
    assert metrics.choose_threshold(Y, S, "fixed", 0.3)["value"] == 0.3
    fallback = metrics.choose_threshold(np.zeros(4), S, "youden", 0.5)
    assert fallback["value"] == 0.5 and fallback["method"] == "fixed"
    assert "only negatives" in fallback["note"]


def test_operating_point_metrics_by_hand():
    report = metrics.label_report(Y, S, threshold=0.35, ece_bins=10)
    # predicted positive: 0.4, 0.35, 0.8 -> TP 2, FP 1, TN 1, FN 0
    assert report["tpr"] == 1.0 and report["fpr"] == 0.5
    assert report["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))


def test_all_one_label_is_null_with_a_reason():
    report = metrics.label_report(np.ones(5), np.linspace(0.1, 0.9, 5), threshold=0.5, ece_bins=10)
    assert report["auroc"] is None and report["fpr"] is None
    assert report["undefined"]["auroc"] == "only positives (no negative image)"
    assert report["undefined"]["fpr"] == "no negative image"
    assert report["auprc"] == pytest.approx(1.0) and report["tpr"] == pytest.approx(0.6)


def test_missing_labels_are_left_out_and_counted():
    y = np.array([0.0, np.nan, 1.0, 1.0, 0.0])
    report = metrics.label_report(y, np.array([0.1, 0.9, 0.8, 0.7, 0.2]), threshold=0.5, ece_bins=10)
    assert report["n"] == 4 and report["missing"] == 1 and report["auroc"] == 1.0


def _frames(n: int = 60, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    truth = pd.DataFrame({"A": (rng.random(n) < 0.4).astype(float), "B": np.ones(n)})
    scores = pd.DataFrame({"A": np.clip(truth["A"] * 0.4 + rng.random(n) * 0.6, 0, 1), "B": rng.random(n)})
    return truth, scores


def test_bootstrap_is_seeded_and_macro_leaves_out_undefined_findings():
    truth, scores = _frames()
    thresholds = {name: {"value": 0.5, "method": "fixed", "chosen_on": "val"} for name in truth}
    first = metrics.evaluate(truth, scores, thresholds, 10, resamples=200, confidence=0.9, seed=3)
    again = metrics.evaluate(truth, scores, thresholds, 10, resamples=200, confidence=0.9, seed=3)
    other = metrics.evaluate(truth, scores, thresholds, 10, resamples=200, confidence=0.9, seed=4)
    assert first["labels"]["A"]["auroc_ci"] == again["labels"]["A"]["auroc_ci"]
    assert first["labels"]["A"]["auroc_ci"] != other["labels"]["A"]["auroc_ci"]
    low, high = first["labels"]["A"]["auroc_ci"]
    assert low < first["labels"]["A"]["auroc"] < high
    assert first["macro"]["auroc"] == first["labels"]["A"]["auroc"]  # B (all positive) has no AUROC
    assert first["macro"]["excluded"]["auroc"] == ["B"]
    assert first["macro"]["auroc_ci"] == first["labels"]["A"]["auroc_ci"]
    assert "auroc_ci" not in first["labels"]["B"]


def test_percentile_ci_by_hand():
    values = np.array([*np.arange(1.0, 101.0), np.nan])
    interval = metrics.percentile_ci(values, confidence=0.9)
    assert interval["ci"] == pytest.approx(np.percentile(np.arange(1.0, 101.0), [5, 95]).tolist())
    assert interval["dropped"] == 1
