"""Integration: real Snakemake runs of the classifier stage on a small phantom set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_workflow_data import snakemake, write_config

pytestmark = pytest.mark.integration

COMPARISON = "results/classifier/comparison.csv"
EXTERNAL = "external/synthetic.parquet"  # a manifest no rule makes
CLASSIFIER = {
    "training": {"backbone": "small-cnn", "image_size": 32, "epochs": 2, "batch_size": 16, "seed": 1},
    "evaluation": {"bootstrap_resamples": 20, "seed": 2},
    "focus": {"images": 4, "overlays": 4},
}


def configure(workdir: Path, regimes: list[str]) -> None:
    write_config(workdir, classifier=CLASSIFIER | {"regimes": regimes})


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("classifier")
    configure(workdir, ["real"])
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
    assert table["regime"].tolist() == ["real"]
    assert not (out / "checkpoints").exists()
    assert "Nothing to be done" in snakemake(real, COMPARISON, "--dry-run").stdout


def test_synthetic_regimes_wait_for_the_sampling_stage_or_name_a_missing_manifest(tmp_path):
    configure(tmp_path, ["real", "synthetic"])
    plan = snakemake(tmp_path, COMPARISON, "--dry-run").stdout
    assert "collect_samples" in plan and "regime=synthetic" in plan
    write_config(tmp_path, classifier=CLASSIFIER | {"regimes": ["mixed"], "sources": {"synthetic": EXTERNAL}})
    done = snakemake(tmp_path, COMPARISON, "--dry-run", check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "MissingInputException" in output and EXTERNAL in output


def test_mixed_regime_is_planned_once_its_manifest_exists(real, tmp_path):
    """Only the new regime's jobs and the table are planned (tests/test_downstream.py runs it)."""
    workdir = tmp_path / "mixed"
    shutil.copytree(real / "results", workdir / "results")  # keeps modification times
    regimes = {"regimes": ["real", "mixed"], "sources": {"synthetic": EXTERNAL}}
    write_config(workdir, classifier=CLASSIFIER | regimes)
    dataset = pd.read_parquet(workdir / "results/data/dataset.parquet")
    (workdir / EXTERNAL).parent.mkdir()
    dataset.assign(image_id="synthetic/" + dataset["image_id"]).to_parquet(workdir / EXTERNAL)
    plan = snakemake(workdir, COMPARISON, "--dry-run").stdout
    assert "regime=mixed" in plan and "regime=real" not in plan and "compare_classifiers" in plan
