"""The classifier stage, file to file: does training on synthetic images help a classifier of real ones?

Each function is what one rule of ``rules/classifier.smk`` does (``scripts/classifier.py`` parses the
arguments); every file is written atomically with provenance:

- :func:`train` (``train_classifier``, one job per regime): ``results/classifier/{regime}/model.pt`` (best
  weights, spec, provenance) and ``training.json`` (training rows, skipped findings, notes, history);
- :func:`evaluate` (``evaluate_classifier``): on the real *test* split, with thresholds chosen on the real
  *val* split: ``metrics.json`` (:mod:`workflow.metrics`), ``fairness.json`` (:mod:`workflow.fairness`),
  ``test_predictions.parquet``, ``roc.png`` and ``subgroup_auroc.png``;
- :func:`focus` (``classifier_focus``): ``focus.json`` and ``cam_examples.png`` (:mod:`workflow.cam`).

The comparison across regimes is :mod:`workflow.comparison`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from workflow.classifier import fairness, metrics, regimes
from workflow.classifier import figures as plots
from workflow.classifier import networks as models
from workflow.classifier import training as classifier
from workflow.common.devices import pick_device
from workflow.common.manifest import label_column
from workflow.common.provenance import config_hash, provenance, write_json, write_parquet

DEMOGRAPHICS = ["image_id", "patient_id", "sex", "age", "race", "site"]


def _trained_weights(spec_provenance: Mapping[str, Any], model_path: str) -> str:
    return f"{model_path}, trained from {spec_provenance['weights']}"


def train(
    regime: str,
    dataset_path: str,
    sources: Mapping[str, str],
    labels: Sequence[str],
    settings: Mapping[str, Any],
    synthetic_per_real: float,
    model_out: str,
    report_out: str,
    work_dir: str,
    threads: int,
) -> None:
    """Train the classifier of ``regime``; checkpoints go to ``work_dir`` and are removed at the end."""
    torch.set_num_threads(threads)
    params = classifier.TrainSettings.from_dict(dict(settings))
    notes: list[str] = []
    extras = {name: regimes.read_extra(path, labels, notes) for name, path in sources.items()}
    data = regimes.training_data(
        regime, pd.read_parquet(dataset_path), extras, synthetic_per_real, params.seed
    )
    kept, skipped = classifier.trainable_labels(data.train, labels)
    spec = models.ModelSpec(params.backbone, params.channels, tuple(kept), params.image_size)
    step = dict(settings) | {
        "regime": regime,
        "labels": list(labels),
        "synthetic_per_real": synthetic_per_real,
    }
    meta = provenance(
        step,
        seeds={"training": params.seed},
        inputs={"dataset": dataset_path, **sources},
        weights=models.describe_weights(params.weights),
    )
    fingerprint = config_hash({k: meta[k] for k in ("config_hash", "inputs", "weights")})
    where = pick_device()
    result = classifier.fit(data, spec, params, work_dir, fingerprint, where)
    models.save(model_out, result.model, spec, meta)
    write_json(
        report_out,
        {
            "provenance": meta,
            "regime": regime,
            "device": str(where),
            "labels": kept,
            "skipped_labels": skipped,
            "training_rows": data.counts,
            "validation_rows": len(data.val),
            "notes": notes + data.notes,
            "selection": result.selection,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "history": result.history,
        },
    )
    shutil.rmtree(work_dir, ignore_errors=True)


def _truth(frame: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    truth = frame[[label_column(n) for n in labels]].set_axis(list(labels), axis=1)
    return truth.set_axis(pd.Index(frame["image_id"], name="image_id"), axis=0)


def evaluate(
    dataset_path: str,
    model_path: str,
    training_path: str,
    settings: Mapping[str, Any],
    fairness_settings: Mapping[str, Any],
    outputs: Mapping[str, str],
    threads: int,
) -> None:
    """Test metrics, fairness, predictions and figures of one trained classifier.

    ``outputs`` names the files: ``metrics``, ``fairness``, ``predictions``, ``roc``, ``subgroups``.
    """
    torch.set_num_threads(threads)
    model, spec, trained = models.load(model_path)
    training = json.loads(Path(training_path).read_text())
    dataset = pd.read_parquet(dataset_path)
    splits = regimes.real_splits(dataset, dataset_path)
    where = pick_device()
    model.to(where)
    truth = {name: _truth(splits[name], spec.labels) for name in ("val", "test")}
    scores = {
        name: classifier.predict(model, splits[name], spec, settings["batch_size"], where) for name in truth
    }
    thresholds = metrics.choose_thresholds(
        truth["val"], scores["val"], settings["threshold"], settings["fixed_threshold"]
    )
    boot = {"resamples": settings["bootstrap_resamples"], "confidence": settings["confidence"]}
    boot["seed"] = settings["seed"]
    report = metrics.evaluate(truth["test"], scores["test"], thresholds, settings["ece_bins"], **boot)
    fair = fairness.assess(
        splits["test"], truth["test"], scores["test"], thresholds, dataset, fairness_settings, boot
    )
    meta = provenance(
        {"evaluation": dict(settings), "fairness": dict(fairness_settings)},
        seeds={"bootstrap": settings["seed"]},
        inputs={"dataset": dataset_path, "model": model_path, "training": training_path},
        weights=_trained_weights(trained, model_path),
    )
    regime = training["regime"]
    summary = {
        k: training[k] for k in ("training_rows", "skipped_labels", "notes", "best_epoch", "selection")
    }
    head = {"provenance": meta, "regime": regime, "evaluated_on": "test", "test_images": len(splits["test"])}
    write_json(outputs["metrics"], head | {"training": summary} | report)
    write_json(outputs["fairness"], head | {"settings": dict(fairness_settings)} | fair)
    table = splits["test"][DEMOGRAPHICS].copy()
    for name in spec.labels:
        table[f"score_{name}"] = scores["test"][name].to_numpy()
        table[label_column(name)] = truth["test"][name].to_numpy()
    write_parquet(outputs["predictions"], table, meta)
    plots.roc_curves(truth["test"], scores["test"], report, outputs["roc"], f"{regime}: test ROC")
    plots.subgroup_auroc(fair, outputs["subgroups"], f"{regime}: test AUROC by subgroup (95% CI)")


def focus(
    dataset_path: str,
    model_path: str,
    settings: Mapping[str, Any],
    mask_classes: Sequence[str],
    seed: int,
    focus_out: str,
    overlays_out: str,
    threads: int,
) -> None:
    """Grad-CAM focus metrics of one trained classifier on test images, and example overlays."""
    from workflow.classifier import cam  # grad-cam takes seconds to import; only this step needs it

    torch.set_num_threads(threads)
    model, spec, trained = models.load(model_path)
    test = regimes.real_splits(pd.read_parquet(dataset_path), dataset_path)["test"]
    report, overlays = cam.focus(model, spec, test, settings, mask_classes, seed)
    meta = provenance(
        dict(settings) | {"mask_classes": list(mask_classes)},
        seeds={"cases": seed},
        inputs={"dataset": dataset_path, "model": model_path},
        weights=_trained_weights(trained, model_path),
    )
    write_json(focus_out, {"provenance": meta, "evaluated_on": "test", "mass": cam.MASS} | report)
    plots.image_grid(overlays, overlays_out, "Grad-CAM on test images (finding, predicted probability)")
