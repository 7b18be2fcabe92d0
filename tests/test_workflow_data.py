"""Integration: real Snakemake runs of the data stage on a small phantom set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_adapters_other import write_mimic

from workflow.common.files import read_parquet_meta

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"n_patients": 40, "image_size": 48, "seed": 3}
# The data stage's end products: these tests build only them, not the whole default DAG.
DATA_TARGETS = ("results/data/dataset.parquet", "results/data/data_report.json")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run Snakemake on the repository's Snakefile in ``workdir`` with its config.yaml."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"),
        "--cores", "2",
        "--show-failed-logs",
        *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{done.stdout}\n{done.stderr}")
    return done


def write_config(workdir: Path, **changes: dict) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["phantom"]["settings"] = dict(SMALL)
    config["preprocess"]["resolution"] = 32
    # the tiny SD at the images' 32 px, its VAE and UNet trained a few steps, a few prompts sampled in a few
    # steps, one classifier regime, two test images edited in two steps without the CLIP filter (the PRISM
    # preset's run has it): plumbing, not quality (the demo's learning: tests/test_tiny_generator.py)
    config["diffusion"]["resolution"] = 32
    config["diffusion"]["tiny_vae"] |= {"steps": 2, "gpus": 0}
    config["diffusion"]["train"] |= {"max_steps": 20, "checkpoint_steps": 10}
    config["diffusion"]["sample"] |= {"max_prompts": 6, "steps": 2}
    config["classifier"]["regimes"] = ["real"]
    # the SD arm alone (the demo's mask-guided arm runs in tests/test_mask_guided.py and the segguided
    # preset) and both editing methods of the PRISM study (the demo edits with ddim-p2p only)
    config["diffusion"]["generators"] = None
    config["classifier"]["generators"] = None
    config["editing"] |= {
        "max_images": 2,
        "steps": 2,
        "clip": {"model": None},
        "methods": ["sdedit", "ddim-p2p"],
    }
    for section, values in changes.items():
        config[section].update(values)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


def from_data_stage(data_stage: Path, workdir: Path, **changes: dict) -> dict:
    """``workdir`` with a copy of ``data_stage`` (the session's finished data stage, tests/conftest.py) and
    the config of ``write_config(workdir, **changes)``: a whole-DAG fixture whose changes leave the data
    stage's sections alone starts from the same phantoms and dataset (Snakemake finds them up to date, its
    metadata is copied too) instead of rebuilding them, about a minute each."""
    shutil.copytree(data_stage, workdir, symlinks=True, dirs_exist_ok=True)
    return write_config(workdir, **changes)


def test_dataset_is_complete_split_by_patient_and_documented(data_stage):
    data = data_stage / "results" / "data"
    dataset = pd.read_parquet(data / "dataset.parquet")
    source = pd.read_csv(data_stage / "results/phantoms/CheXpert-v1.0-phantom/train.csv")
    rejected = pd.read_parquet(data / "rejected.parquet")
    assert len(dataset) + len(rejected) == len(source)
    assert (dataset.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(dataset["split"]) == {"train", "val", "test"}
    first = dataset.iloc[0]
    assert Path(data_stage / first["image"]).is_file() and Path(data_stage / first["mask"]).is_file()
    report = json.loads((data / "data_report.json").read_text())
    assert report["images"] == len(dataset)
    assert report["patients"] == SMALL["n_patients"]
    split_report = json.loads((data / "split_report.json").read_text())
    assert split_report["provenance"]["seeds"] == {"split": 20250301}
    assert read_parquet_meta(data / "manifest.parquet")["rows"] == len(source)


def test_rerun_does_nothing_and_one_target_builds_only_its_inputs(data_stage, tmp_path):
    assert "Nothing to be done" in snakemake(data_stage, "--dry-run", *DATA_TARGETS).stdout
    write_config(tmp_path)
    done = snakemake(tmp_path, "results/data/split_report.json")
    assert (tmp_path / "results/data/split.parquet").is_file()
    assert not (tmp_path / "results/data/shards").exists()
    assert "preprocess_shard" not in done.stdout + done.stderr


def test_same_config_gives_the_same_dataset(data_stage, tmp_path):
    write_config(tmp_path)
    snakemake(tmp_path, *DATA_TARGETS)
    first = json.loads((data_stage / "results/data/data_report.json").read_text())
    second = json.loads((tmp_path / "results/data/data_report.json").read_text())
    assert first["provenance"]["dataset_sha256_16"] == second["provenance"]["dataset_sha256_16"]
    assert first["splits"] == second["splits"]


def test_bad_images_are_listed_and_fail_the_run_beyond_the_bound(tmp_path):
    write_config(tmp_path, dataset={"max_rejected_fraction": 0.0})
    snakemake(tmp_path, "results/phantoms/CheXpert-v1.0-phantom/train.csv")
    csv = tmp_path / "results/phantoms/CheXpert-v1.0-phantom/train.csv"
    table = pd.read_csv(csv)
    corrupt = tmp_path / "results/phantoms" / table.loc[0, "Path"]
    corrupt.write_bytes(b"truncated")
    (tmp_path / "results/phantoms" / table.loc[1, "Path"]).unlink()
    done = snakemake(tmp_path, *DATA_TARGETS, check=False)
    assert done.returncode != 0
    assert "more than dataset.max_rejected_fraction = 0.0" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    rejected = pd.read_parquet(tmp_path / "results/data/rejected_adapter.parquet")
    assert rejected["reason"].tolist() == ["image file not found"]
    assert rejected["row"].tolist() == [3]


def test_corrupt_image_is_rejected_by_preprocessing(tmp_path):
    write_config(tmp_path, dataset={"max_rejected_fraction": 0.05})
    snakemake(tmp_path, "results/phantoms/CheXpert-v1.0-phantom/train.csv")
    table = pd.read_csv(tmp_path / "results/phantoms/CheXpert-v1.0-phantom/train.csv")
    (tmp_path / "results/phantoms" / table.loc[0, "Path"]).write_bytes(b"truncated")
    snakemake(tmp_path, *DATA_TARGETS)
    rejected = pd.read_parquet(tmp_path / "results/data/rejected.parquet")
    assert rejected["stage"].tolist() == ["preprocess"]
    assert rejected["reason"].iloc[0].startswith("unreadable image")
    dataset = pd.read_parquet(tmp_path / "results/data/dataset.parquet")
    assert len(dataset) == len(table) - 1


def test_leakage_is_refused(data_stage, tmp_path):
    workdir = tmp_path / "leak"
    subprocess.run(["cp", "-r", str(data_stage), str(workdir)], check=True)
    shard_path = workdir / "results/data/shards/0.parquet"
    shard = pd.read_parquet(shard_path)
    patient = shard["patient_id"].value_counts().index[0]
    rows = shard.index[shard["patient_id"] == patient]
    shard.loc[rows[0], "split"] = "test" if shard.loc[rows[1], "split"] != "test" else "train"
    shard.to_parquet(shard_path)
    done = snakemake(workdir, *DATA_TARGETS, check=False)
    assert done.returncode != 0
    assert "patient leakage" in done.stdout + done.stderr


def test_invalid_config_names_the_key(tmp_path):
    write_config(tmp_path, preprocess={"fit": "stretch"})
    done = snakemake(tmp_path, "--dry-run", check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "'stretch' is not one of ['crop', 'pad']" in output
    assert "On instance['preprocess']['fit']" in output


def test_lint_is_clean(data_stage):
    done = snakemake(data_stage, "--lint", check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_editing_any_table_an_adapter_reads_rebuilds_the_manifest(tmp_path):
    """MIMIC-CXR reads three tables (metadata, labels, MIMIC-IV demographics): editing any of them makes
    build_manifest run again (the rules take workflow.data.adapters.table_files as inputs). Snakemake
    compares small files by content, so each is edited, not only touched."""
    mimic = write_mimic(tmp_path / "data")
    config = write_config(tmp_path)
    labels = ["Cardiomegaly", "Edema"]
    config["dataset"] = {"adapter": "mimic-cxr", "labels": labels, "mimic-cxr": mimic, "mask_classes": ["bg"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    manifest = "results/data/manifest.parquet"
    snakemake(tmp_path, manifest)
    assert "Nothing to be done" in snakemake(tmp_path, "--dry-run", manifest).stdout
    edits = {"metadata_csv": "Rows", "labels_csv": "Edema", "demographics_csv": "anchor_age"}
    for key, column in edits.items():
        table = pd.read_csv(mimic[key])
        table.loc[0, column] = 1
        table.to_csv(mimic[key], index=False)
        plan = snakemake(tmp_path, "--dry-run", manifest).stdout
        assert "rule build_manifest:" in plan and mimic[key] in plan, key
        snakemake(tmp_path, manifest)
