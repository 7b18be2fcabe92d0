"""Integration: real Snakemake runs of the prompts stage (tiny random-init ViT, two embedding shards)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow.json as paj
import pytest
import yaml
from PIL import Image
from test_workflow_data import from_data_stage, snakemake

from workflow.common.files import read_parquet_meta

pytestmark = pytest.mark.integration

PROMPTS = {
    "strategies": ["labels", "mep"],
    "mep": {"model": "tiny", "template": "morphology type {cluster}", "k": 3, "shards": 2},
    "classes": {"column": "label_No Finding", "names": {"1": "normal", "0": "abnormal"}},
    "balance": {"enabled": True, "min_prompts_per_class": 2},
}
SPLITS = ("train", "val", "test")
# the prompts stage's end products (the default target also builds later stages)
TARGETS = [
    *(f"results/prompts/{s}.parquet" for s in SPLITS),
    "results/prompts/prompt_report.json",
    "results/prompts/train_imagefolder",
    "results/prompts/cluster_report.json",
    "results/prompts/montages",
]


@pytest.fixture(scope="module")
def run(data_stage, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("prompts")
    from_data_stage(data_stage, workdir, prompts=PROMPTS)
    snakemake(workdir, *TARGETS)
    return workdir


def test_one_prompt_table_per_split_covers_the_dataset(run):
    dataset = pd.read_parquet(run / "results/data/dataset.parquet")
    tables = pd.concat([pd.read_parquet(run / f"results/prompts/{s}.parquet") for s in SPLITS])
    assert sorted(tables["image_id"]) == sorted(dataset["image_id"])
    assert (tables.groupby("prompt")["prompt_id"].nunique() == 1).all()
    assert tables["prompt_id"].nunique() == tables["prompt"].nunique()
    assert set(tables["cluster"]) <= {0, 1, 2}
    assert tables["prompt"].str.match(r"^(Chest X-ray showing .+|Normal chest X-ray with no significant "
                                      r"findings), morphology type (zero|one|two)$").all()  # fmt: skip
    meta = read_parquet_meta(run / "results/prompts/train.parquet")
    assert meta["weights"] == "random-init tiny ViT (demo)"
    assert meta["seeds"] == {"balance": 18021999}


def test_embeddings_come_from_two_shards_merged_by_image_id(run):
    merged = pd.read_parquet(run / "results/prompts/embeddings.parquet")
    shards = [pd.read_parquet(run / f"results/prompts/embeddings/{k}.parquet") for k in (0, 1)]
    assert merged["image_id"].tolist() == sorted(pd.concat(shards)["image_id"])
    assert len(merged["embedding"].iloc[0]) == 32
    report = json.loads((run / "results/prompts/cluster_report.json").read_text())
    assert report["weights"] == "random-init tiny ViT (demo)"
    assert report["k_choice"]["k"] == 3
    assert sum(c["images"].get("train", 0) for c in report["clusters"]) == report["fitted_on"]["images"]
    montages = sorted(p.name for p in (run / "results/prompts/montages").glob("*.png"))
    assert montages == ["cluster_00.png", "cluster_01.png", "cluster_02.png"]


def test_training_set_is_balanced_by_prompt_and_class(run):
    train = pd.read_parquet(run / "results/prompts/train.parquet")
    chosen = train[train["selected"]]
    report = json.loads((run / "results/prompts/prompt_report.json").read_text())
    design = report["balance"]
    assert design["classes"] == ["abnormal", "normal"]
    assert set(chosen.groupby(["class_name", "prompt"]).size()) == {design["images_per_prompt"]}
    assert set(chosen.groupby("class_name").size()) == {design["images"] // 2}
    assert report["splits"]["train"]["selected"] == design["images"] == len(chosen)


def test_imagefolder_reads_like_datasets_imagefolder(run):
    """What `load_dataset("imagefolder", data_dir=...)` does, as train_text_to_image.py calls it."""
    folder = run / "results/prompts/train_imagefolder"
    table = paj.read_json(folder / "metadata.jsonl")  # the reader the imagefolder builder uses
    assert table.column_names[:2] == ["file_name", "text"]  # -> columns "image" and "text"
    assert str(table.schema.field("file_name").type) == "string"
    assert not [c for c in table.column_names[1:] if c.endswith("_file_name") or c.endswith("_file_names")]
    rows = table.to_pylist()
    train = pd.read_parquet(run / "results/prompts/train.parquet")
    assert len(rows) == int(train["selected"].sum())
    by_id = train.set_index("image_id")
    for row in rows:
        image = folder / os.path.normpath(row["file_name"])
        assert image.read_bytes() == (run / by_id.loc[row["image_id"], "image"]).read_bytes()
        Image.open(image).convert("RGB")
        assert row["text"] == by_id.loc[row["image_id"], "prompt"]
        assert row["label_No Finding"] in (0.0, 1.0)


def test_rerun_is_a_no_op(run):
    assert "Nothing to be done" in snakemake(run, "--dry-run", *TARGETS).stdout


def test_k_larger_than_the_images_fails_naming_the_key(run, tmp_path):
    workdir = tmp_path / "bad"
    subprocess.run(["cp", "-r", str(run), str(workdir)], check=True)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["prompts"]["mep"]["k"] = 500
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(workdir, *TARGETS, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "error: prompts.mep.k = 500 is larger than the number of training images" in output
    assert "Traceback" not in output
