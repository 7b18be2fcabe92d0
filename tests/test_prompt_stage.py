"""The prompts stage file to file, in process: clusters with MEP's outlier rule, prompt tables, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_prompts import defaults, section

from workflow.common.errors import InputError
from workflow.common.files import read_parquet_meta, write_parquet
from workflow.common.manifest import label_column
from workflow.common.provenance import provenance
from workflow.prompts import outliers, stage
from workflow.prompts.settings import ClusterSettings

LABELS = ("No Finding", "Edema")


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """A 30-image dataset (3 blobs of embeddings), images on disk, and its embeddings file."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(path)
        rows.append(
            {
                "image_id": f"img{i:02d}",
                "split": ("train", "train", "val", "test", "train")[i % 5],
                "image": str(path),
                "age": 60.0,
                label_column("No Finding"): float(i % 3 == 0),
                label_column("Edema"): float(i % 3 == 1),
            }
        )
    pd.DataFrame(rows).to_parquet(tmp_path / "dataset.parquet")
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
    x = centres[np.arange(30) % 3] + rng.normal(scale=0.1, size=(30, 2)).astype(np.float32)
    table = pd.DataFrame({"image_id": [r["image_id"] for r in rows], "embedding": list(x)})
    features = {name: 1000.0 for name in outliers.FEATURES}
    table = table.assign(**features)
    table.loc[[4, 7], "std_v"] = 0.5  # two flat images: MEP outliers (a train and a val image)
    meta = provenance({}, weights="random-init tiny ViT (demo)") | {"model": "tiny"}
    write_parquet(tmp_path / "embeddings.parquet", table, meta)
    names = {"dataset": "dataset.parquet", "embeddings": "embeddings.parquet"}
    return {"dir": str(tmp_path)} | {key: str(tmp_path / name) for key, name in names.items()}


def _cluster(files: dict[str, str], **mep) -> str:
    outliers_on = {**section()["mep"]["outliers"], "enabled": True}
    settings = ClusterSettings.of(
        {"prompts": section(mep={"k": 3, "n_init": 2, "outliers": outliers_on} | mep)}
    )
    out = f"{files['dir']}/clusters.parquet"
    stage.cluster_embeddings(
        files["embeddings"], files["dataset"], settings, LABELS, out,
        f"{files['dir']}/report.json", f"{files['dir']}/montages",
    )  # fmt: skip
    return out


def _outputs(files: dict[str, str]) -> dict[str, str]:
    return {s: f"{files['dir']}/{s}.parquet" for s in ("train", "val", "test")}


def test_outliers_get_no_cluster_and_no_prompt(files):
    clusters = pd.read_parquet(_cluster(files))
    assert clusters.loc[clusters["outlier"], "image_id"].tolist() == ["img04", "img07"]
    assert clusters.loc[clusters["outlier"], "outlier_rules"].tolist() == ["min_std_v"] * 2
    assert clusters.loc[clusters["outlier"], "cluster"].isna().all()
    kept = clusters[~clusters["outlier"]]
    assert kept.groupby(kept["image_id"].str[-2:].astype(int) % 3)["cluster"].nunique().eq(1).all()
    report = json.loads(Path(files["dir"], "report.json").read_text())
    assert report["outliers"] == {"enabled": True, "removed": {"train": 1, "val": 1}}
    assert [c["words"] for c in report["clusters"]] == ["zero", "one", "two"]

    settings = defaults(strategies=["labels", "mep"], mep={"template": "morphology type {cluster}"})
    stage.build_prompts(
        files["dataset"], f"{files['dir']}/clusters.parquet", settings, LABELS, **_outputs(files),
        report=f"{files['dir']}/prompts.json",
    )  # fmt: skip
    table = pd.concat(pd.read_parquet(p) for p in _outputs(files).values()).set_index("image_id")
    assert table.loc["img04", "outlier"] and pd.isna(table.loc["img04", "prompt"])
    assert not table.loc["img04", "selected"]
    assert table.loc["img00", "prompt"].startswith("Chest X-ray showing No Finding, morphology type ")
    meta = read_parquet_meta(_outputs(files)["train"])
    assert meta["weights"] == "random-init tiny ViT (demo)"

    # MEP-LDM's comparison arm: the same selected images, captioned without the morphology part
    variant = {s: f"{files['dir']}/labels-{s}.parquet" for s in ("train", "val", "test")}
    stage.build_prompt_variant(
        list(_outputs(files).values()), files["dataset"], defaults(strategies=["labels"]), LABELS, **variant,
        report=f"{files['dir']}/labels.json",
    )  # fmt: skip
    arm = pd.concat(pd.read_parquet(p) for p in variant.values()).set_index("image_id")
    assert arm.index.tolist() == table.index.tolist()
    assert arm["selected"].tolist() == table["selected"].tolist()
    assert pd.isna(arm.loc["img04", "prompt"])  # an outlier of the study stays out of every arm
    assert arm.loc["img00", "prompt"] == "Chest X-ray showing No Finding"
    assert not arm["prompt"].str.contains("morphology").any()

    export = f"{files['dir']}/folder"
    stage.export_imagefolder(_outputs(files)["train"], files["dataset"], LABELS, export)
    lines = [json.loads(line) for line in Path(export, "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == int(table.query("split == 'train'")["selected"].sum()) == 17
    assert list(lines[0])[:2] == ["file_name", "text"] and "cluster" in lines[0]
    assert "class_name" not in lines[0]  # empty for every image: left out


def test_labels_only_needs_no_clusters(files):
    stage.build_prompts(
        files["dataset"], None, defaults(), LABELS, **_outputs(files), report=f"{files['dir']}/p.json"
    )
    train = pd.read_parquet(_outputs(files)["train"])
    assert train["cluster"].isna().all() and train["selected"].all() and not train["outlier"].any()
    assert set(train["prompt"]) == {
        "Chest X-ray showing No Finding", "Chest X-ray showing Edema",
        "Normal chest X-ray with no significant findings",
    }  # fmt: skip
    report = json.loads(Path(files["dir"], "p.json").read_text())
    assert [p["prompt_id"] for p in report["prompts"]] == [0, 1, 2]
    with pytest.raises(InputError, match="the mep strategy needs --clusters"):
        stage.build_prompts(
            files["dataset"], None, defaults(strategies=["mep"]), LABELS, **_outputs(files), report="x.json"
        )


def test_k_larger_than_the_outlier_free_training_set(files):
    with pytest.raises(InputError, match=r"prompts\.mep\.k = 20 is larger than .* \(17, after outlier"):
        _cluster(files, k=20)
