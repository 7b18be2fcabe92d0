"""Integration: real Snakemake runs of the diffusion stage on the tiny SD at 32 px (VAE trained 2 steps).

One working folder: LoRA first, then full fine-tuning on the same data, prompts and latent cache.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_workflow_data import from_data_stage, snakemake, write_config

from workflow.common import manifest
from workflow.common.files import read_parquet_meta
from workflow.diffusion.generators import cache_file
from workflow.prompts.variants import variant_name

pytestmark = pytest.mark.integration

TRAIN = {
    "gpus": 0,
    "max_steps": 40,
    "batch_size": 4,
    "learning_rate": 1e-2,
    "caption_dropout": 0.1,
    "snr_gamma": 5.0,
    "noise_offset": 0.05,
    "checkpoint_steps": 20,
    "validation_steps": 20,
    "validation_prompts": 2,
    "validation_inference_steps": 2,
}
DIFFUSION = {
    "base_model": "tiny",
    "resolution": 32,
    "cache": {"gpus": 0},
    "train": TRAIN,
    # On random weights, adapters on the attention projections alone barely move the loss in 40 steps; the
    # ResNet convolutions are adapted too (target_modules is configurable).
    "lora": {
        "rank": 4,
        "alpha": 16,
        "dropout": 0.1,
        "target_modules": ["to_q", "to_k", "to_v", "conv1", "conv2"],
    },
    "sample": {"gpus": 0, "images_per_prompt": 2, "max_prompts": 4, "shards": 2, "steps": 3, "batch_size": 3},
}
LABELS_ONLY = {"strategies": ["labels"]}


def targets(method: str) -> list[str]:
    run = f"results/models/sd-{method}"
    return [
        f"{run}/train_report.json",
        f"{run}/loss.png",
        f"{run}/validation.png",
        f"results/samples/sd-{method}/manifest.parquet",
    ]


def configure(workdir: Path, **diffusion) -> None:
    write_config(workdir, prompts=LABELS_ONLY, diffusion=DIFFUSION | diffusion)


def image_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


@pytest.fixture(scope="module")
def lora(data_stage, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("diffusion")
    from_data_stage(data_stage, workdir, prompts=LABELS_ONLY, diffusion=DIFFUSION | {"method": "lora"})
    snakemake(workdir, *targets("lora"))
    return workdir


@pytest.fixture(scope="module")
def full(lora) -> pd.DataFrame:
    """Switch the folder to full fine-tuning (with EMA; the cache is reused); returns the LoRA samples."""
    lora_samples = pd.read_parquet(lora / "results/samples/sd-lora/manifest.parquet")
    configure(lora, method="full", train=TRAIN | {"learning_rate": 1e-3, "ema": True, "ema_decay": 0.95})
    done = snakemake(lora, *targets("full"))
    assert "cache_latents" not in done.stdout + done.stderr
    return lora_samples


def report(workdir: Path, method: str) -> dict:
    import json

    return json.loads((workdir / f"results/models/sd-{method}/train_report.json").read_text())


def test_lora_training_lowers_the_loss_and_saves_adapters(lora):
    result = report(lora, "lora")
    assert result["steps"] == 40 and result["processes"] == 1
    assert result["loss_last_10"] < result["loss_first_10"]
    assert "tiny SD (demo): VAE trained on" in result["provenance"]["weights"]
    model = lora / "results/models/sd-lora/model"
    assert {p.name for p in model.glob("[!.]*")} == {
        "pytorch_lora_weights.safetensors",
        "synthmed_model.json",
    }
    assert (lora / "results/models/sd-lora/grids/step-00000020.png").is_file()
    assert Image.open(lora / "results/models/sd-lora/validation.png").size == (64, 32)
    assert not list((lora / "results/models/sd-lora/checkpoints").glob("*.pt"))
    # progress you can watch: plain lines in the rule's log, curves for tensorboard
    assert list((lora / "results/models/sd-lora/logs/finetune").glob("events.out.tfevents.*"))
    log = (lora / "logs/diffusion/finetune_sd/sd-lora.log").read_text()
    lines = [line for line in log.split("\n") if "finetune_sd:" in line]
    assert lines[0].startswith("finetune_sd:   0%") and lines[-1].startswith("finetune_sd: 100%|")
    assert not any("\r" in line for line in lines) and "step 40: loss" in log


def test_synthetic_manifest_is_labelled_and_cannot_collide(lora):
    samples = pd.read_parquet(lora / "results/samples/sd-lora/manifest.parquet")
    real = pd.read_parquet(lora / "results/data/dataset.parquet")
    manifest.validate(samples)
    assert len(samples) == 8 and samples["prompt_id"].nunique() == 4
    assert samples["image_id"].str.fullmatch(r"synthetic/\d+/[01]").all()
    assert not set(samples["patient_id"]) & set(real["patient_id"])
    assert (samples["split"] == "train").all() and samples["seed"].nunique() == 8
    assert {"image", "prompt", "prompt_id", "seed", "sex", "age"} <= set(samples.columns)
    labels = [c for c in samples.columns if c.startswith("label_")]
    assert labels and samples[labels].isin([0.0, 1.0]).all().all()
    assert "Chest X-ray" in samples["prompt"].iloc[0] or "chest X-ray" in samples["prompt"].iloc[0]
    first = Image.open(lora / samples["image"].iloc[0])
    assert first.mode == "L" and first.size == (32, 32)
    assert (
        "fine-tuned (lora) from tiny SD (demo): VAE trained on"
        in read_parquet_meta(lora / "results/samples/sd-lora/manifest.parquet")["weights"]
    )


def test_rerunning_one_shard_reproduces_its_images(lora):
    assert "Nothing to be done" in snakemake(lora, "--dry-run", *targets("lora")).stdout
    shard = lora / "results/samples/sd-lora/images/shard0"
    before = image_hashes(shard)
    snakemake(lora, "--force", "results/samples/sd-lora/shards/0.parquet")
    assert before and image_hashes(shard) == before


def test_full_training_saves_a_pipeline_and_new_samples(full, lora):
    result = report(lora, "full")
    assert result["loss_last_10"] < 0.8 * result["loss_first_10"]
    model = lora / "results/models/sd-full/model"
    assert (model / "model_index.json").is_file() and (model / "unet").is_dir()
    manifest_path = lora / "results/samples/sd-full/manifest.parquet"
    samples = pd.read_parquet(manifest_path)
    assert samples["seed"].tolist() == full["seed"].tolist()
    pixels = [np.asarray(Image.open(lora / p)) for p in samples["image"]]
    assert "fine-tuned (full)" in read_parquet_meta(manifest_path)["weights"]
    assert len({p.tobytes() for p in pixels}) == len(pixels)
    # each generator keeps its own samples: the LoRA ones are still there, unchanged
    lora_samples = pd.read_parquet(lora / "results/samples/sd-lora/manifest.parquet")
    pd.testing.assert_frame_equal(lora_samples, full)


def test_unknown_base_model_stops_with_the_key(lora, tmp_path):
    workdir = tmp_path / "bad"
    shutil.copytree(lora, workdir, symlinks=True)
    configure(workdir, method="lora", base_model="/nonexistent/stable-diffusion")
    done = snakemake(workdir, cache_file(variant_name(LABELS_ONLY["strategies"])), check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "diffusion.base_model: '/nonexistent/stable-diffusion' is neither an existing" in output
    assert "Traceback" not in output
