"""Conditional fidelity: does a synthetic image show what its prompt asked for?

FID and KID compare distributions and cannot say whether an image prompted with "Cardiomegaly" shows an
enlarged heart. Medical synthesis papers answer it with a classifier trained on real images, run on the
synthetic set and scored against the labels the prompts asked for (e.g. the "classification accuracy" of
synthetic chest X-rays in RoentGen, Chambon et al. 2022, and the conditional AUROC of PRISM's edits). Here
the classifier is the study's own classifier of run ``real`` (:mod:`workflow.classifier.regimes`):

- per finding: AUROC (and AUPRC, sensitivity and false-positive rate at the real validation threshold, Brier,
  ECE) of the classifier's probabilities on the samples against their prompts' labels, with percentile
  bootstrap CIs over the samples (:func:`workflow.classifier.metrics.evaluate`, the same code as the
  classifier's test metrics), beside ``real_test_auroc``: the same classifier's AUROC on the real test split,
  the ceiling the samples are measured against (a finding it cannot see on real images says nothing about the
  samples);
- ``macro``: the mean over findings, and ``macro_detected``: the mean over the findings whose real test AUROC
  reaches ``min_real_auroc``.

A sample whose prompt leaves a finding unknown (NaN label) is left out of that finding's metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from workflow.classifier import metrics, networks, training
from workflow.common.manifest import label_column
from workflow.evaluation.settings import ConditionalSettings

PURPOSE = "the real-data classifier on synthetic images, scored against the labels their prompts asked for"


def prompt_labels(samples: pd.DataFrame, labels: tuple[str, ...]) -> pd.DataFrame:
    """The labels the prompts asked for, one column per finding (NaN where the manifest has none)."""
    missing = pd.Series(np.nan, index=samples.index)
    columns = {name: samples.get(label_column(name), missing) for name in labels}
    return pd.DataFrame(columns).astype(float).set_axis(pd.Index(samples["image_id"], name="image_id"))


def score(
    samples: pd.DataFrame,
    model: networks.Classifier,
    spec: networks.ModelSpec,
    real_metrics: Mapping[str, Any],
    settings: ConditionalSettings,
    where: torch.device,
) -> dict[str, Any]:
    """Conditional fidelity of one synthetic set (module docstring), at the real run's thresholds."""
    truth = prompt_labels(samples, spec.labels)
    frame = samples[["image_id", "image"]].reset_index(drop=True)
    frame[[label_column(name) for name in spec.labels]] = truth.to_numpy()
    probabilities = training.predict(model, frame, spec, settings.batch_size, where)
    real = real_metrics["labels"]
    thresholds = {name: real[name]["threshold"] for name in spec.labels}
    report = metrics.evaluate(
        truth,
        probabilities,
        thresholds,
        real_metrics["settings"]["ece_bins"],
        settings.bootstrap_resamples,
        settings.confidence,
        settings.seed,
    )
    for name, row in report["labels"].items():
        row["real_test_auroc"] = real[name]["auroc"]
        row["real_test_auroc_ci"] = real[name].get("auroc_ci")
    detected = [
        name
        for name, row in report["labels"].items()
        if row["real_test_auroc"] is not None and row["real_test_auroc"] >= settings.min_real_auroc
    ]
    scored = [name for name in detected if report["labels"][name]["auroc"] is not None]
    report["macro_detected"] = {
        "auroc": float(np.mean([report["labels"][n]["auroc"] for n in scored])) if scored else None,
        "findings": scored,
        "min_real_auroc": settings.min_real_auroc,
        "not_scored": sorted(set(detected) - set(scored)),
    }
    return {"measures": PURPOSE, "images": len(samples)} | report
