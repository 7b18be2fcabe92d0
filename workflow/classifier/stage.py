"""The classifier stage, file to file: does training on synthetic images help a classifier of real ones?

One function per rule of ``rules/classifier.smk``, named after it (``scripts/classifier.py`` parses the
arguments); every file is written atomically with provenance, under ``results/classifier/<run>/`` (a run is
a regime and the source of its extra images: :mod:`workflow.classifier.regimes`):

- :func:`train_classifier`: ``model.pt`` (best weights, spec, provenance) and ``training.json`` (training
  rows, skipped findings, notes, history);
- :func:`evaluate_classifier`: on the real *test* split, with thresholds chosen on the real *val* split:
  ``metrics.json`` (:mod:`workflow.classifier.metrics`), ``fairness.json``
  (:mod:`workflow.classifier.fairness`), ``test_predictions.parquet``, ``roc.png`` and ``subgroup_auroc.png``;
- :func:`classifier_focus`: ``focus.json`` and ``cam_examples.png`` (:mod:`workflow.classifier.cam`);
- :func:`compare_classifiers`: ``results/classifier/comparison.csv`` and ``comparison.json``, one row per run
  (:mod:`workflow.classifier.comparison`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from workflow.classifier import comparison, regimes
from workflow.classifier.settings import EvaluationSettings, FairnessSettings, FocusSettings, TrainSettings
from workflow.common.figures import image_grid
from workflow.common.files import write_csv, write_json, write_parquet
from workflow.common.interruption import attempt_log
from workflow.common.manifest import label_column
from workflow.common.provenance import config_hash, provenance
from workflow.common.tracking import Trackers

DEMOGRAPHICS = ["image_id", "patient_id", "sex", "age", "race", "site"]


def train_classifier(
    run: str,
    dataset: str,
    sources: Mapping[str, str],
    labels: Sequence[str],
    settings: TrainSettings,
    synthetic_per_real: float,
    model: str,
    report: str,
    work_dir: str,
    gpus: int,
    threads: int,
    logs: str,
) -> None:
    """Train the classifier of ``run``; checkpoints (and the log of every attempt of a job stopped and
    resubmitted, :func:`workflow.common.interruption.attempt_log`) go to ``work_dir``, removed at the end;
    the training curves to ``logs`` (``classifier.training.log_with``).

    Args:
        run: ``<regime>`` or ``<regime>/<source>`` (:func:`workflow.classifier.regimes.runs`).
        sources: the extra manifests of the run by kind (:func:`workflow.classifier.regimes.run_sources`).
        gpus: GPUs of the job (``resources.gpu``); 0 computes on the CPU.
    """
    import torch  # here, not at the top: compare_classifiers starts in a second without torch

    from workflow.classifier import networks, training
    from workflow.common.devices import pick_device

    torch.set_num_threads(threads)
    regime = run.partition("/")[0]
    notes: list[str] = []
    extras = {name: regimes.read_extra(path, labels, notes) for name, path in sources.items()}
    data = regimes.training_data(regime, pd.read_parquet(dataset), extras, synthetic_per_real, settings.seed)
    kept, skipped = training.trainable_labels(data.train, labels)
    spec = networks.ModelSpec(
        settings.backbone, settings.channels, tuple(kept), settings.image_size, settings.color
    )
    step = settings.to_dict() | {
        "regime": regime,
        "labels": list(labels),
        "synthetic_per_real": synthetic_per_real,
    }
    meta = provenance(
        step,
        seeds={"training": settings.seed},
        inputs={"dataset": dataset, **sources},
        weights=networks.describe_weights(settings.weights),
    )
    fingerprint = config_hash({k: meta[k] for k in ("config_hash", "inputs", "weights")})
    where = pick_device(gpus)
    trackers = Trackers(settings.log_with, logs, "train_classifier", step)
    with attempt_log(work_dir):
        result = training.fit(data, spec, settings, work_dir, fingerprint, where, trackers)
    trackers.finish()
    networks.save(model, result.model, spec, meta)
    write_json(
        report,
        {
            "provenance": meta,
            "run": run,
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
            "stopped_by_signal": result.stops,
        },
    )
    shutil.rmtree(work_dir, ignore_errors=True)


def _truth(frame: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    truth = frame[[label_column(n) for n in labels]].set_axis(list(labels), axis=1)
    return truth.set_axis(pd.Index(frame["image_id"], name="image_id"), axis=0)


def evaluate_classifier(
    dataset: str,
    model: str,
    training_report: str,
    settings: EvaluationSettings,
    fairness_settings: FairnessSettings,
    metrics_report: str,
    fairness_report: str,
    predictions: str,
    roc: str,
    subgroups: str,
    gpus: int,
    threads: int,
) -> None:
    """Test metrics, fairness, predictions and figures of one trained classifier (on a GPU when ``gpus``,
    the job's ``resources.gpu``, is above 0 and one is visible)."""
    import torch

    from workflow.classifier import fairness, figures, metrics, networks, training
    from workflow.common.devices import pick_device

    torch.set_num_threads(threads)
    network, spec, trained = networks.load(model)
    trained_on = json.loads(Path(training_report).read_text())
    rows = pd.read_parquet(dataset)
    splits = regimes.real_splits(rows, dataset)
    where = pick_device(gpus)
    network.to(where)
    truth = {name: _truth(splits[name], spec.labels) for name in ("val", "test")}
    scores = {
        name: training.predict(network, splits[name], spec, settings.batch_size, where) for name in truth
    }
    thresholds = metrics.choose_thresholds(
        truth["val"], scores["val"], settings.threshold, settings.fixed_threshold
    )
    boot = {"resamples": settings.bootstrap_resamples, "confidence": settings.confidence}
    boot["seed"] = settings.seed
    report = metrics.evaluate(truth["test"], scores["test"], thresholds, settings.ece_bins, **boot)
    fair = fairness.assess(
        splits["test"], truth["test"], scores["test"], thresholds, rows, fairness_settings, boot
    )
    meta = provenance(
        {"evaluation": settings, "fairness": fairness_settings},
        seeds={"bootstrap": settings.seed},
        inputs={"dataset": dataset, "model": model, "training": training_report},
        weights=networks.trained_weights(trained, model),
    )
    run = trained_on["run"]
    summary = {
        k: trained_on[k] for k in ("training_rows", "skipped_labels", "notes", "best_epoch", "selection")
    }
    head = {"provenance": meta, "run": run, "regime": trained_on["regime"], "evaluated_on": "test"}
    head["test_images"] = len(splits["test"])
    write_json(metrics_report, head | {"training": summary} | report)
    write_json(fairness_report, head | {"settings": fairness_settings.to_dict()} | fair)
    table = splits["test"][DEMOGRAPHICS].copy()
    for name in spec.labels:
        table[f"score_{name}"] = scores["test"][name].to_numpy()
        table[label_column(name)] = truth["test"][name].to_numpy()
    write_parquet(predictions, table, meta)
    figures.roc_curves(truth["test"], scores["test"], report, roc, f"{run}: test ROC")
    figures.subgroup_auroc(fair, subgroups, f"{run}: test AUROC by subgroup (95% CI)")


def classifier_focus(
    dataset: str, model: str, settings: FocusSettings, focus: str, overlays: str, threads: int
) -> None:
    """Grad-CAM focus metrics of one trained classifier on test images, and example overlays."""
    import torch

    from workflow.classifier import cam, networks  # grad-cam takes seconds to import; only this step needs it

    torch.set_num_threads(threads)
    network, spec, trained = networks.load(model)
    test = regimes.real_splits(pd.read_parquet(dataset), dataset)["test"]
    report, examples = cam.focus(network, spec, test, settings)
    meta = provenance(
        settings,
        seeds={"cases": settings.seed},
        inputs={"dataset": dataset, "model": model},
        weights=networks.trained_weights(trained, model),
    )
    write_json(focus, {"provenance": meta, "evaluated_on": "test", "mass": cam.MASS} | report)
    title = "Grad-CAM on test images (finding, predicted probability)"
    image_grid(examples, overlays, title, empty="no test image with a finding")


def compare_classifiers(
    runs: Sequence[str],
    metrics_reports: Sequence[str],
    fairness_reports: Sequence[str],
    focus_reports: Sequence[str],
    table: str,
    summary: str,
) -> None:
    """One row per run (:func:`workflow.classifier.comparison.run_row`, with the macro AUROC over the
    findings all runs share, :func:`workflow.classifier.comparison.with_shared_macro`): ``table`` (CSV) and
    the same rows with provenance and the shared findings (``summary``, JSON)."""
    paths = zip(runs, metrics_reports, fairness_reports, focus_reports, strict=True)
    rows, shared = comparison.with_shared_macro(
        [comparison.run_row(run, *(json.loads(Path(p).read_text()) for p in files)) for run, *files in paths]
    )
    frame = pd.DataFrame(rows)
    write_csv(table, frame)
    kinds = {"metrics": metrics_reports, "fairness": fairness_reports, "focus": focus_reports}
    inputs = {f"{kind}[{r}]": p for kind, files in kinds.items() for r, p in zip(runs, files, strict=True)}
    meta = provenance({"runs": list(runs)}, inputs=inputs)
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    write_json(summary, {"provenance": meta, "shared_findings": shared, "rows": records})
