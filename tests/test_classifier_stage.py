"""The classifier stage file to file: split hygiene, bad input written in the JSON, the run table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from classifier_data import EVALUATION, FAIRNESS, FOCUS, LABELS, fabricate, training_settings

from workflow.classifier import metrics, stage, training
from workflow.common.files import read_parquet_meta
from workflow.common.manifest import label_column

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Train, evaluate and explain one regime on fabricated data with awkward test rows; spy on what the
    training and threshold code receive."""
    root = tmp_path_factory.mktemp("stage")
    dataset = fabricate(root / "images", n=60)
    test = dataset["split"] == "test"
    dataset.loc[test, label_column("B")] = 1.0  # all-one label in test: AUROC undefined
    dataset.loc[dataset.index[test][:2], "sex"] = None  # attribute missing for some rows
    dataset.to_parquet(root / "dataset.parquet")
    seen: dict[str, set] = {}
    fit, choose = training.fit, metrics.choose_thresholds

    def spy_fit(data, *args, **kwargs):
        seen["fit"] = set(data.train["image_id"]) | set(data.val["image_id"])
        return fit(data, *args, **kwargs)

    def spy_thresholds(truth, scores, *args):
        seen["thresholds"] = set(truth.index) | set(scores.index)
        return choose(truth, scores, *args)

    patch = pytest.MonkeyPatch()
    patch.setattr(training, "fit", spy_fit)
    patch.setattr(metrics, "choose_thresholds", spy_thresholds)
    out = root / "real"
    paths = {
        name: str(out / name) for name in ("metrics.json", "fairness.json", "focus.json", "training.json")
    }
    dataset_path, model = str(root / "dataset.parquet"), str(out / "model.pt")
    stage.train_classifier(
        "real", dataset_path, {}, LABELS, training_settings(log_with="tensorboard"), 1.0, model,
        paths["training.json"], str(out / "checkpoints"), 0, 1, str(out / "logs"),
    )  # fmt: skip
    assert list((out / "logs" / "train_classifier").glob("events.out.tfevents.*"))  # the curves
    stage.evaluate_classifier(
        dataset_path,
        model,
        paths["training.json"],
        EVALUATION,
        FAIRNESS,
        metrics_report=paths["metrics.json"],
        fairness_report=paths["fairness.json"],
        predictions=str(out / "test.parquet"),
        roc=str(out / "roc.png"),
        subgroups=str(out / "subgroups.png"),
        gpus=0,
        threads=1,
    )
    stage.classifier_focus(dataset_path, model, FOCUS, paths["focus.json"], str(out / "cam.png"), 1)
    patch.undo()
    reports = {name: json.loads(Path(path).read_text()) for name, path in paths.items()}
    return {"root": root, "out": out, "dataset": dataset, "seen": seen, "reports": reports, "paths": paths}


def test_test_split_never_reaches_training_or_threshold_selection(trained):
    dataset = trained["dataset"]
    test_ids = set(dataset.loc[dataset["split"] == "test", "image_id"])
    val_ids = set(dataset.loc[dataset["split"] == "val", "image_id"])
    assert trained["seen"]["fit"] and not trained["seen"]["fit"] & test_ids
    assert trained["seen"]["thresholds"] == val_ids
    assert trained["reports"]["metrics.json"]["evaluated_on"] == "test"
    assert trained["reports"]["metrics.json"]["test_images"] == len(test_ids)


def test_training_report_skips_labels_and_removes_checkpoints(trained):
    training = trained["reports"]["training.json"]
    assert training["labels"] == ["A", "B"]
    assert training["skipped_labels"] == {"C": "no positive training image"}
    assert training["provenance"]["weights"] == "random-init (demo)"
    assert training["provenance"]["seeds"] == {"training": 5}
    assert len(training["history"]) == 2 and training["device"] == "cpu"
    assert not (trained["out"] / "checkpoints").exists()


def test_bad_input_is_written_in_the_json(trained):
    scores = trained["reports"]["metrics.json"]
    b = scores["labels"]["B"]
    assert b["auroc"] is None and b["undefined"]["auroc"] == "only positives (no negative image)"
    assert scores["macro"]["excluded"]["auroc"] == ["B"]
    assert scores["macro"]["auroc"] == scores["labels"]["A"]["auroc"]
    fair = trained["reports"]["fairness.json"]["attributes"]
    assert fair["sex"]["missing"] == {"policy": "unknown", "rows": 2}
    assert fair["sex"]["labels"]["A"]["by_group"]["unknown"]["n"] == 2
    ages = fair["age_group"]["labels"]["A"]["by_group"]
    assert {g for g, r in ages.items() if r["n"] == 0} and all(
        r["note"] == "no test image in this group" for r in ages.values() if r["n"] == 0
    )
    assert fair["site"]["labels"]["A"]["gaps"]["auroc"]["value"] is None  # one site only
    assert fair["sex"]["underdiagnosis"]["value"] is None  # no "No Finding" finding here


def test_every_output_has_provenance_and_the_weights_used(trained):
    for name in ("metrics.json", "fairness.json", "focus.json"):
        meta = trained["reports"][name]["provenance"]
        assert meta["weights"].endswith("trained from random-init (demo)")
        assert meta["inputs"]["model"]["sha256_16"] and meta["config_hash"]
    assert trained["reports"]["metrics.json"]["provenance"]["seeds"] == {"bootstrap": 9}
    predictions = pd.read_parquet(trained["out"] / "test.parquet")
    assert list(predictions.filter(like="score_").columns) == ["score_A", "score_B"]
    assert read_parquet_meta(trained["out"] / "test.parquet")["inputs"]["model"]
    for figure in ("roc.png", "subgroups.png", "cam.png"):
        assert (trained["out"] / figure).stat().st_size > 1000


def test_comparison_table_has_one_row_per_run(trained, tmp_path):
    paths = trained["paths"]
    csv, out = tmp_path / "comparison.csv", tmp_path / "comparison.json"
    args = [[paths[name]] * 2 for name in ("metrics.json", "fairness.json", "focus.json")]
    stage.compare_classifiers(["real", "again"], *args, str(csv), str(out))
    table = pd.read_csv(csv)
    assert table["run"].tolist() == ["real", "again"]
    assert table["regime"].tolist() == ["real", "real"]
    assert table.loc[0, "macro_auroc"] == pytest.approx(trained["reports"]["metrics.json"]["macro"]["auroc"])
    assert pd.isna(table.loc[0, "auroc[B]"]) and "sex_max_eod" in table
    rows = json.loads(out.read_text())
    assert rows["rows"][0]["auroc[B]"] is None and "metrics[real]" in rows["provenance"]["inputs"]
    assert table["findings"].tolist() == [1, 1] and rows["shared_findings"] == ["A"]


def test_runs_are_compared_on_the_findings_they_share():
    """A synthetic regime whose prompts never name a rare finding cannot train on it, and its own macro
    AUROC averages the easier rest: macro_auroc_shared averages the findings every run has, and each row
    says how many its own macro covers (its macro stood beside the real run's without a word before)."""
    from workflow.classifier import comparison

    rows = [
        {"run": "real", "findings": 2, "auroc[A]": 0.9, "auroc[B]": 0.6},
        {"run": "synthetic", "findings": 1, "auroc[A]": 0.95, "auroc[B]": None},
    ]
    shared, names = comparison.with_shared_macro(rows)
    assert names == ["A"]
    assert [row["macro_auroc_shared"] for row in shared] == [0.9, 0.95]
    none_shared, names = comparison.with_shared_macro([rows[1], rows[1] | {"auroc[A]": None}])
    assert names == [] and none_shared[0]["macro_auroc_shared"] is None


def test_script_trains_the_mixed_regime_from_a_synthetic_manifest(trained, tmp_path):
    """Phantom-like images relabelled as synthetic stand in for the sampling stage's manifest."""
    synthetic = fabricate(tmp_path / "synthetic", n=20, seed=4, prefix="synthetic/", split="train")
    synthetic.to_parquet(tmp_path / "manifest.parquet")
    report = tmp_path / "training.json"
    command = [
        sys.executable, "-m", "scripts.classifier", "train_classifier", "--run", "mixed/sd-test",
        "--dataset", str(trained["root"] / "dataset.parquet"),
        "--sources", json.dumps({"synthetic": str(tmp_path / "manifest.parquet")}),
        "--labels", json.dumps(LABELS), "--settings", training_settings(epochs=1).to_json(),
        "--synthetic-per-real", "0.5", "--model", str(tmp_path / "model.pt"), "--report", str(report),
        "--work-dir", str(tmp_path / "checkpoints"), "--gpus", "0", "--threads", "1",
        "--logs", str(tmp_path / "logs"),
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    training = json.loads(report.read_text())
    assert training["training_rows"] == {"real": 36, "synthetic": 18}
    assert (training["run"], training["regime"]) == ("mixed/sd-test", "mixed")
    assert training["provenance"]["inputs"]["synthetic"]["path"] == str(tmp_path / "manifest.parquet")
