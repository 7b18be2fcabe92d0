"""Integration: `snakemake results/fid.json` on tiny phantoms, tiny SD and the tiny random-init extractor."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_workflow_data import from_data_stage, snakemake, write_config

from workflow.common.provenance import file_hash

pytestmark = pytest.mark.integration

# Rules results/fid.json does not need without conditional fidelity: the classifier stage, the diffusers image
# folder, MEP clusters.
NOT_NEEDED = {
    "train_classifier",
    "evaluate_classifier",
    "classifier_focus",
    "compare_classifiers",
    "export_imagefolder",
    "embed_images",
    "cluster_embeddings",
}
SAMPLES = "results/samples/sd-full/manifest.parquet"


def rules_run(output: str) -> set[str]:
    return set(re.findall(r"^(?:local)?rule (\w+):", output, re.M))


def set_config(workdir: Path, min_images: int) -> None:
    evaluation = {"min_images": min_images, "extractor": "tiny", "conditional_fidelity": {"enabled": False}}
    config = write_config(workdir, prompts={"strategies": ["labels"]}, evaluation=evaluation)
    config["diffusion"]["train"].update(max_steps=1, checkpoint_steps=1)
    config["diffusion"]["sample"].update(images_per_prompt=2, shards=1, steps=1)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def run(data_stage, tmp_path_factory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("evaluation")
    from_data_stage(data_stage, workdir)
    set_config(workdir, min_images=2)
    done = snakemake(workdir, "results/fid.json")
    return workdir, done.stdout + done.stderr


def test_fid_json_builds_only_what_it_needs(run):
    workdir, output = run
    ran = rules_run(output)
    assert {"collect_samples", "build_tiny_model", "image_metrics", "collect_image_metrics"} <= ran
    assert not ran & NOT_NEEDED
    assert set(re.findall(r"wildcards: name=(\w+)", output)) == {"sd", "dinov2"}  # no tiny ViT
    assert not (workdir / "results/classifier").exists()


def test_report_describes_extractor_inputs_and_groups(run):
    workdir, _ = run
    fid = json.loads((workdir / "results/fid.json").read_text())
    assert list(fid["generators"]) == ["sd-full"]
    report = fid["generators"]["sd-full"]
    assert report == json.loads((workdir / "results/evaluation/sd-full/image_metrics.json").read_text())
    samples = pd.read_parquet(workdir / SAMPLES)
    dataset = pd.read_parquet(workdir / "results/data/dataset.parquet")
    assert report["extractor"]["weights"] == "random-init tiny DINOv2 (demo)"
    assert report["extractor"]["location"] == "results/models/tiny/dinov2"
    inputs = report["provenance"]["inputs"]
    assert inputs["samples"]["sha256_16"] == file_hash(workdir / SAMPLES)
    assert report["reference"]["images"] == int((dataset["split"] == "train").sum())
    assert report["synthetic"]["images"] == len(samples)
    assert report["resize_policy"]["size"] == 32
    assert report["metrics"]["fid"] is not None
    assert set(report["per_prompt"]) == {str(p) for p in samples["prompt_id"].unique()}
    assert any(row["fid"] is not None for row in report["per_prompt"].values())
    table = pd.read_csv(workdir / "results/fid_per_class.csv")
    assert len(table) == 1 + len(report["per_label"]) + len(report["per_prompt"])
    assert set(table["generator"]) == {"sd-full"}


def test_rerun_is_a_no_op_and_a_setting_change_reuses_cached_features(run):
    workdir, _ = run
    assert "Nothing to be done" in snakemake(workdir, "results/fid.json", "--dry-run").stdout
    before = json.loads((workdir / "results/fid.json").read_text())["generators"]["sd-full"]
    set_config(workdir, min_images=3)
    done = snakemake(workdir, "results/fid.json")
    assert rules_run(done.stdout + done.stderr) == {"image_metrics", "collect_image_metrics"}
    after = json.loads((workdir / "results/fid.json").read_text())["generators"]["sd-full"]
    assert after["feature_cache"] == before["feature_cache"]
    assert after["metrics"]["fid"] == before["metrics"]["fid"]
    log = (workdir / "logs/evaluation/image_metrics/sd-full.log").read_text()
    assert log.count("cached features") == 2 and "extracting" not in log


def test_counterfactuals_are_edited_and_scored_against_the_true_ones(run, tmp_path):
    """On the fixture's fine-tuned model (copied): sdedit on a few test phantoms, the plan's refused edits,
    signed float difference maps, target labels and the soundness JSON with the error against the true
    counterfactuals. No classifier is trained here (its effectiveness: tests/test_editing.py)."""
    workdir = tmp_path / "editing"
    shutil.copytree(run[0] / "results", workdir / "results")  # keeps modification times: nothing reruns
    set_config(workdir, min_images=2)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["classifier"]["regimes"] = ["synthetic"]  # no real-data classifier
    edits = [
        {"kind": k, "finding": f} for f in ("Cardiomegaly", "Pleural Effusion") for k in ("remove", "add")
    ]
    config["editing"] |= {"edits": [*edits, {"kind": "set", "field": "sex", "value": "female"}], "steps": 2}
    config["editing"] |= {"max_images": 3}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(workdir, "results/counterfactuals/sdedit/soundness.json")
    assert rules_run(done.stdout + done.stderr) == {
        "plan_edits", "edit_images", "collect_edits", "counterfactual_soundness"
    }  # fmt: skip
    out = workdir / "results/counterfactuals/sdedit"
    edited = pd.read_parquet(out / "manifest.parquet")
    plan = pd.read_parquet(workdir / "results/counterfactuals/plan.parquet")
    assert len(plan) == 3 * 5 and len(edited) == (plan["status"] == "edited").sum() > 0
    # the labels strategy cannot say "female": refused, never run
    assert set(plan.loc[plan["edit_kind"] == "set", "status"]) == {"skipped"}
    assert (
        edited["patient_id"] == edited["source_image_id"].str.split("/").str[-3]
    ).all()  # the leak guard's key
    for row in edited.itertuples():
        assert row.edit_kind in ("add", "remove")
        wanted = 1.0 if row.edit_kind == "add" else 0.0
        assert edited.loc[row.Index, f"label_{row.edit_target}"] == wanted
        assert edited.loc[row.Index, f"source_label_{row.edit_target}"] == 1 - wanted
    assert (workdir / edited["difference_map"].iloc[0]).with_name("cross_fade.gif").is_file()
    diff = np.load(workdir / edited["difference_map"].iloc[0])
    assert diff.dtype == np.float32 and diff.shape == (32, 32) and diff.min() < 0 < diff.max()
    report = json.loads((out / "soundness.json").read_text())
    assert report["edited"] == len(edited) and len(report["skipped"]) == len(plan) - len(edited)
    assert report["weights"]["editor"].startswith("fine-tuned (full)") and report["classifier"] is None
    assert "effectiveness not measured" in report["notes"][0]
    assert set(report["per_edit"]) == set(edited["edit"])
    truth = edited["true_counterfactual"].notna()
    assert report["ground_truth_edits"] == int(truth.sum())
    if truth.any():
        overall = report["overall"]
        assert overall["truth_source_mae_outside"] < overall["truth_source_mae_inside"]
        assert overall["truth_edited_mae_inside"] is not None
    assert (out / "examples.png").is_file()
    assert "data:image/gif;base64," in (out / "cross_fades.html").read_text()
