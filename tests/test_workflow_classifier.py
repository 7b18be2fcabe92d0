"""Integration: real Snakemake runs of the classifier stage on a small phantom set."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_workflow_data import from_data_stage, snakemake, write_config

pytestmark = pytest.mark.integration

COMPARISON = "results/classifier/comparison.csv"
EXTERNAL = "external/counterfactuals.parquet"  # a manifest no rule makes
NO_EDITING = {"enabled": False}  # the study's own counterfactuals would be a counterfactual source too
CLASSIFIER = {
    "training": {"backbone": "small-cnn", "image_size": 32, "epochs": 2, "batch_size": 16, "seed": 1},
    "evaluation": {"bootstrap_resamples": 20, "seed": 2},
    "focus": {"images": 4, "overlays": 4},
}


def configure(workdir: Path, regimes: list[str]) -> None:
    write_config(workdir, classifier=CLASSIFIER | {"regimes": regimes})


@pytest.fixture(scope="module")
def real(data_stage, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("classifier")
    from_data_stage(data_stage, workdir, classifier=CLASSIFIER | {"regimes": ["real"]})
    snakemake(workdir, COMPARISON)
    return workdir


def test_real_regime_is_trained_evaluated_and_compared(real):
    out = real / "results/classifier/real"
    scores = json.loads((out / "metrics.json").read_text())
    assert scores["evaluated_on"] == "test" and scores["macro"]["auroc"] is not None
    assert scores["provenance"]["weights"].endswith("trained from random-init (demo)")
    assert "Lung Lesion" in scores["training"]["skipped_labels"]  # phantoms never render it
    fair = json.loads((out / "fairness.json").read_text())
    assert set(fair["attributes"]) == {"sex", "age_group", "race", "site"}
    focus = json.loads((out / "focus.json").read_text())
    assert focus["overall"]["cams"] >= 4 and focus["provenance"]["inputs"]["model"]
    for figure in ("roc.png", "subgroup_auroc.png", "cam_examples.png"):
        assert (out / figure).is_file()
    table = pd.read_csv(real / COMPARISON)
    assert table["run"].tolist() == table["regime"].tolist() == ["real"]
    assert not (out / "checkpoints").exists()
    assert "Nothing to be done" in snakemake(real, COMPARISON, "--dry-run").stdout


def test_synthetic_regimes_run_per_generator_and_wait_for_its_samples(tmp_path):
    configure(tmp_path, ["real", "synthetic", "mixed"])
    plan = snakemake(tmp_path, COMPARISON, "--dry-run").stdout
    assert "collect_samples" in plan and "generator=sd-full" in plan
    runs = set(re.findall(r"^\s+wildcards: run=(\S+)$", plan, re.M))
    assert runs == {"real", "synthetic/sd-full", "mixed/sd-full"}


def test_counterfactual_regime_names_its_missing_manifest_or_key(tmp_path):
    write_config(tmp_path, classifier=CLASSIFIER | {"regimes": ["real+counterfactual"]}, editing=NO_EDITING)
    done = snakemake(tmp_path, COMPARISON, "--dry-run", check=False)
    assert done.returncode != 0 and "set classifier.counterfactuals" in done.stdout + done.stderr
    counterfactual = {"regimes": ["real+counterfactual"], "counterfactuals": EXTERNAL}
    write_config(tmp_path, classifier=CLASSIFIER | counterfactual, editing=NO_EDITING)
    done = snakemake(tmp_path, COMPARISON, "--dry-run", check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "MissingInputException" in output and EXTERNAL in output


def test_counterfactual_regime_is_planned_once_its_manifest_exists(real, tmp_path):
    """Only the new run's jobs and the table are planned (tests/test_classifier_stage.py trains one)."""
    workdir = tmp_path / "counterfactual"
    shutil.copytree(real / "results", workdir / "results")  # keeps modification times
    regimes = {"regimes": ["real", "real+counterfactual"], "counterfactuals": EXTERNAL}
    write_config(workdir, classifier=CLASSIFIER | regimes, editing=NO_EDITING)
    dataset = pd.read_parquet(workdir / "results/data/dataset.parquet")
    (workdir / EXTERNAL).parent.mkdir()
    dataset.assign(image_id="counterfactual/" + dataset["image_id"]).to_parquet(workdir / EXTERNAL)
    plan = snakemake(workdir, COMPARISON, "--dry-run").stdout
    runs = set(re.findall(r"^\s+wildcards: run=(\S+)$", plan, re.M))
    assert runs == {"real+counterfactual/external"} and "compare_classifiers" in plan
