"""Every preset runs the whole default DAG end to end (its dataset laid out in the preset's format, tiny
overrides), and at full size plans the jobs and GPU requests its study needs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from configs import validated
from dataset_layouts import LAYOUTS
from test_mask_text import TINY as TINY_MASK_TEXT
from test_workflow_data import snakemake

from workflow.diffusion.generators import (
    generator_names,
    names_of_kind,
    trained_mask_guided,
    volume_generators,
)

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "resources" / "presets").glob("*.yaml"))
PHANTOMS = {"n_patients": 40, "image_size": 48, "seed": 11, "volumes": 12}
PHANTOM_VOLUME_LABELS = ["Pleural Effusion", "Consolidation"]
# What makes a preset run in a minute on two CPU cores: tiny stand-ins for the hub models, 32 px, a few steps,
# no GPU. Everything else (prompt strategies, method, regimes, samplers, label policies...) is the preset's.
TINY: dict[str, Any] = {
    "preprocess": {"resolution": 32, "shards": 1},
    # phantoms are not H&E tissue: MEP's histology outlier rule would remove every one of them
    "prompts": {
        "mep": {"model": "tiny", "k": 2, "shards": 1, "outliers": {"enabled": False}},
        "balance": {"min_prompts_per_class": 1},
    },
    "diffusion": {
        "base_model": "tiny",
        "resolution": 32,
        "tiny_vae": {"gpus": 0, "steps": 2},
        "cache": {"gpus": 0},
        "train": {
            "gpus": 0,
            "max_steps": 2,
            "batch_size": 2,
            "gradient_accumulation_steps": 1,
            "mixed_precision": "no",
            "checkpoint_steps": 2,
            "validation_inference_steps": 1,
        },
        "sample": {
            "gpus": 0,
            "max_prompts": 4,  # MEP-LDM's 4 tiny prompts all: its synthetic classifier needs both classes
            "images_per_prompt": 2,
            "shards": 1,
            "steps": 1,
            "dtype": "float32",
            "batch_size": 2,
            "design": {"images": 4},
        },
        "mask_guided": {
            "train": {
                "gpus": 0,
                "resolution": 16,
                "batch_size": 2,
                "steps": 2,
                "warmup_steps": 1,
                "timesteps": 50,
                "channels": [8, 8],
                "attention_levels": [False, False],
                "num_res_blocks": 1,
                "norm_num_groups": 8,
                "checkpoint_steps": 2,
            },
            "sample": {"gpus": 0, "steps": 1, "shards": 2},
        },
        "mask_text": {  # 3D (DGM-VLC's preset): the 32-voxel phantom volumes resampled to 16, 8-voxel patches
            "train": TINY_MASK_TEXT
            | {"gpus": 0, "resolution": 16, "volume_shape": [16, 16, 16], "patch_size": [8, 8, 8]},
            "sample": {"gpus": 0, "steps": 1, "shards": 2},
            "differences": {"gpus": 0, "sources": 2},
        },
    },
    "classifier": {
        "gpus": 0,
        "training": {"backbone": "small-cnn", "weights": "random", "image_size": 32, "epochs": 1},
        "evaluation": {"bootstrap_resamples": 10},
        "focus": {"images": 2, "overlays": 2},
    },
    "evaluation": {
        "extractor": "tiny",
        "also": [],
        "gpus": 0,
        "min_images": 2,
        "mask_faithfulness": {"gpus": 0, "resolution": 16, "steps": 2, "batch_size": 2, "channels": [4, 8]},
    },
    "editing": {
        "max_images": 1,
        "steps": 2,
        "gpus": 0,
        "shards": 1,
        "null_text": {"inner_steps": 2},
        "clip": {"model": "tiny"},
    },
}
GPU_RULES = {
    "embed_images",
    "cache_latents",
    "finetune_sd",
    "sample_images",
    "train_classifier",
    "evaluate_classifier",
    "image_metrics",
    "conditional_fidelity",
    "train_mask_guided",
    "sample_mask_guided",
    "train_mask_text",
    "sample_mask_text",
    "difference_maps",
    "train_segmenter",
    "mask_faithfulness",
    "edit_images",
    "counterfactual_soundness",
}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, section by section."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def preset_study(preset: Path, workdir: Path, data: Path, *, tiny: bool) -> dict[str, Any]:
    """The preset with its dataset paths pointing at phantoms in its format (and the tiny overrides); a file
    the preset does not name (e.g. CheXpert's demographics file) is not added to it. A classifier checkpoint
    the preset names becomes an empty stand-in file (a dry run only checks that it exists)."""
    config = yaml.safe_load(preset.read_text())
    adapter = config["dataset"]["adapter"]
    paths = LAYOUTS[adapter](data, PHANTOMS)
    section = config["dataset"][adapter]
    section |= {key: path for key, path in paths.items() if key in section}  # the files the preset reads
    if adapter == "volumes":  # the CT phantoms' findings stand for the study's own labels
        section.pop("label_columns", None)
        config["dataset"]["labels"] = PHANTOM_VOLUME_LABELS
        for change in config["diffusion"].get("mask_text", {}).get("differences", {}).get("changes", []):
            if change["field"] == "smoking_status":  # the phantoms' values: never, former, current
                change["value"] = "current"
    training = config.get("classifier", {}).get("training", {})
    if training.get("weights") not in (None, "random", "imagenet"):  # the user's checkpoint file
        stand_in = data / Path(training["weights"]).name
        stand_in.touch()
        training["weights"] = str(stand_in)
    if tiny:
        config = merged(config, TINY)
        for arm in (config["diffusion"].get("generators") or {}).values():
            arm.pop("images_per_prompt", None)  # the tiny sample size of TINY for every arm
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


@pytest.mark.integration
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_runs_the_whole_study_end_to_end(preset, tmp_path):
    preset_study(preset, tmp_path / "study", tmp_path / "data", tiny=True)
    snakemake(tmp_path / "study")
    assert "Nothing to be done" in snakemake(tmp_path / "study", "--dry-run").stdout
    focus = (tmp_path / "study" / "results/classifier/real/focus.json").read_text()
    assert '"regions_unavailable"' in focus
    fid = json.loads((tmp_path / "study/results/fid.json").read_text())
    assert set(fid["conditional_fidelity"]) == set(fid["generators"])
    PAPER_CHECKS.get(preset.stem, lambda results: None)(tmp_path / "study" / "results")


def lora_fairness_study(results: Path) -> None:
    """Race joined from CheXpert's demographics file; the demographic design: one drawn finding per image,
    captioned with the drawn person."""
    assert pd.read_parquet(results / "data/dataset.parquet")["race"].notna().any()
    samples = pd.read_parquet(results / "samples/sd-lora/manifest.parquet")
    labels = samples[[c for c in samples if c.startswith("label_")]]
    assert (labels.sum(axis=1) == 1).all() and samples["prompt"].str.startswith("Chest X-ray of a").all()
    assert set(json.loads((results / "fid.json").read_text())["generators"]) == {"sd-lora"}


def mep_ldm_study(results: Path) -> None:
    """Both arms of the comparison, trained on the same images; only the morphology arm's captions have a
    morphology type."""
    assert set(json.loads((results / "fid.json").read_text())["generators"]) == {"sd-morphology", "sd-class"}
    arms = {
        g: pd.read_parquet(results / f"samples/{g}/manifest.parquet") for g in ("sd-morphology", "sd-class")
    }
    assert arms["sd-morphology"]["prompt"].str.contains("morphology type").all()
    assert not arms["sd-class"]["prompt"].str.contains("morphology").any()
    study = pd.read_parquet(results / "prompts/train.parquet")
    variant = pd.read_parquet(results / "prompts/variants/labels/train.parquet")
    assert variant["selected"].tolist() == study["selected"].tolist()


def segguided_study(results: Path) -> None:
    """One image per real training mask, in two shards, and the mask faithfulness of the generator (Dice per
    mask class) in its section of fid.json."""
    samples = pd.read_parquet(results / "samples/segguided/manifest.parquet")
    dataset = pd.read_parquet(results / "data/dataset.parquet")
    train = dataset[(dataset["split"] == "train") & dataset["mask"].notna()]
    assert sorted(samples["source_image_id"]) == sorted(train["image_id"])
    section = json.loads((results / "fid.json").read_text())["generators"]["segguided"]
    faithfulness = section["mask_faithfulness"]
    assert list(faithfulness["classes"]) == ["background", "lungs", "heart", "devices"]
    assert faithfulness["images"] == len(samples)


def dgm_vlc_study(results: Path) -> None:
    """One generated volume per real training volume, as NIfTI on the resampled grid of its real volume (same
    extent and orientation: the affine follows the resampling), its slices standing for the real slices, and
    the volumes' MS-SSIM with their real volumes in fid.json."""
    samples = pd.read_parquet(results / "samples/dgm-vlc/manifest.parquet")
    dataset = pd.read_parquet(results / "data/dataset.parquet").set_index("image_id")
    train = dataset[dataset["split"] == "train"]
    assert sorted(samples["source_image_id"]) == sorted(train.index)
    volumes = samples.drop_duplicates("path")
    assert len(volumes) == train["volume_id"].nunique()
    for row in volumes.itertuples():
        generated = nib.load(results.parent / row.path)
        real = nib.load(dataset.loc[row.source_image_id, "path"])
        assert generated.shape == (16, 16, 16)  # TINY's volume_shape
        spacing = nib.affines.voxel_sizes(real.affine) * np.asarray(real.shape) / 16
        assert np.allclose(nib.affines.voxel_sizes(generated.affine), spacing)
        assert nib.aff2axcodes(generated.affine) == nib.aff2axcodes(nib.as_closest_canonical(real).affine)
    section = json.loads((results / "fid.json").read_text())["generators"]["dgm-vlc"]
    assert section["volume_similarity"]["volumes"] == len(volumes)
    summary = pd.read_csv(results / "differences/dgm-vlc/summary.csv")  # TINY: 2 test volumes x 2 changes
    test_volumes = dataset.loc[dataset["split"] == "test", "volume_id"].unique()
    assert len(summary) == 2 * min(2, len(test_volumes)) and set(summary["field"]) == {
        "age",
        "smoking_status",
    }
    for row in summary.itertuples():
        assert nib.load(results / "differences/dgm-vlc" / Path(row.map).name).shape == (16, 16, 16)
    assert section["mask_faithfulness"]["images"] == len(samples)


PAPER_CHECKS = {
    "dgm-vlc": dgm_vlc_study,
    "lora-fairness": lora_fairness_study,
    "mep-ldm": mep_ldm_study,
    "segguided": segguided_study,
}
"""Preset -> what its end-to-end run must show of the paper's design, beyond every output being built."""


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_at_full_size_plans_the_expected_jobs_and_gpus(preset, tmp_path):
    """A dry run of the preset as users run it: every stage's jobs, one preprocessing job per shard, one
    sampling job per shard, and GPU rules asking for the GPUs the preset gives them."""
    config = preset_study(preset, tmp_path / "study", tmp_path / "data", tiny=False)
    plan = snakemake(tmp_path / "study", "--dry-run").stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.split("Job stats:", 1)[1].split("total", 1)[0], re.M))
    study = validated(config)
    diffusion = study["diffusion"]
    sd, masked = len(names_of_kind(study, "sd")), len(names_of_kind(study, "mask-guided"))
    texted = len(names_of_kind(study, "mask-text"))
    assert sd + masked + texted == len(generator_names(study))
    assert int(counts["preprocess_shard"]) == config["preprocess"]["shards"]
    assert int(counts.get("finetune_sd", 0)) == sd
    assert int(counts.get("sample_images", 0)) == diffusion["sample"]["shards"] * sd
    assert int(counts.get("train_mask_guided", 0)) == len(trained_mask_guided(study))
    assert int(counts.get("sample_mask_guided", 0)) == diffusion["mask_guided"]["sample"]["shards"] * masked
    assert int(counts.get("train_mask_text", 0)) == texted
    assert int(counts.get("sample_mask_text", 0)) == diffusion["mask_text"]["sample"]["shards"] * texted
    assert int(counts.get("mask_faithfulness", 0)) == masked + texted
    assert int(counts.get("volume_similarity", 0)) == len(volume_generators(study))
    assert {"train_classifier", "image_metrics", "report_tables"} <= set(counts)
    jobs = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", plan, re.M)
    gpus = {rule: int(m.group(1)) for rule, body in jobs if (m := re.search(r"gpu=(\d+)", body))}
    assert set(gpus) == GPU_RULES & set(counts)
    if sd:
        assert gpus["finetune_sd"] == diffusion["train"]["gpus"]
    if texted:
        assert gpus["train_mask_text"] == diffusion["mask_text"]["train"]["gpus"]
        assert gpus["sample_mask_text"] == diffusion["mask_text"]["sample"]["gpus"]
    if masked:
        assert gpus["train_mask_guided"] == diffusion["mask_guided"]["train"]["gpus"]
        assert gpus["train_segmenter"] == study["evaluation"]["mask_faithfulness"]["gpus"]
