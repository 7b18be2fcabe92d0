"""The demo's tiny SD can learn: a tokenizer that keeps every demo prompt whole, a VAE trained on the
training images, and a generator that, trained briefly on phantoms, makes images carrying the finding it is
asked for."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from configs import validated
from PIL import Image
from sklearn.metrics import roc_auc_score

from workflow.common.errors import InputError
from workflow.data import phantoms
from workflow.diffusion import base_models, stage
from workflow.diffusion.settings import CacheSettings, SampleSettings, TinyVaeSettings, TrainSettings
from workflow.prompts import strategies
from workflow.prompts.settings import PromptSettings

ROOT = Path(__file__).resolve().parents[1]
DEMO = validated(yaml.safe_load((ROOT / "config.yaml").read_text()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "sd"
    base_models.build_tiny(out, seed=0)
    return out


def phantom_prompts() -> pd.Series:
    """Every prompt the demo's strategies can write on the phantoms, and the other strategies' too: every
    combination of the findings the phantoms report, every morphology cluster, people of every age, sex and
    race the phantoms draw, with and without their clinical fields."""
    reported = [*phantoms.RENDERED, "Enlarged Cardiomediastinum", "No Finding"]
    clusters = range(DEMO["prompts"]["mep"]["k"])
    rows = []
    for values, cluster in itertools.product(itertools.product([0.0, 1.0], repeat=len(reported)), clusters):
        rows.append({f"label_{name}": value for name, value in zip(reported, values, strict=True)})
        rows[-1]["cluster"] = cluster
    frame = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    defaults = phantoms.PhantomSettings()
    frame["age"] = rng.integers(defaults.min_age, defaults.max_age + 1, len(frame)).astype(float)
    frame["sex"] = rng.choice(["Female", "Male"], len(frame))
    frame["race"] = rng.choice(list(defaults.races), len(frame))
    frame["tab_smoking_status"] = rng.choice([*phantoms.SMOKING, None], len(frame))
    frame["tab_pack_years"] = rng.choice(["12.5", "40.0", None], len(frame))
    frame["class_name"] = None
    labels = DEMO["dataset"]["labels"]
    for column in {f"label_{name}" for name in labels} - set(frame):
        frame[column] = 0.0
    texts = [
        strategies.build(frame, labels, PromptSettings.of(DEMO, variant))
        for variant in (None, ["labels"], ["demographics"], ["tabular"], ["demographics", "tabular", "mep"])
    ]
    return pd.concat(texts, ignore_index=True).drop_duplicates()


def test_every_demo_prompt_fits_the_tiny_tokenizer_whole(tiny):
    """The character-level tokenizer cut 27 of the demo's 82 prompts at 77 characters, so the model trained on
    captions that lost findings; the word-level one keeps every prompt, word for word."""
    tokenizer = base_models.load_pipeline(str(tiny)).tokenizer  # as saved and loaded by diffusers
    prompts = phantom_prompts()
    assert len(prompts) > 2000 and prompts.str.len().max() > 2 * base_models.MAX_TOKENS
    for prompt in prompts:
        ids = tokenizer(prompt, truncation=False).input_ids
        assert len(ids) <= tokenizer.model_max_length == base_models.MAX_TOKENS, prompt
        assert tokenizer.unk_token_id not in ids, prompt
        assert tokenizer.decode(ids, skip_special_tokens=True) == prompt


def test_an_unknown_word_becomes_the_unknown_token(tiny):
    pipe = base_models.load_pipeline(str(tiny))
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("Chest X-ray showing a zebra").input_ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert tokens.count("<|unk|>") == 1 and "\u2581showing" in tokens
    embeddings = base_models.encode_prompts(pipe, ["Chest X-ray showing a zebra", "Chest X-ray"])
    assert embeddings.shape == (2, base_models.MAX_TOKENS, pipe.text_encoder.config.hidden_size)
    assert not torch.equal(embeddings[0], embeddings[1])


def phantom_dataset(root: Path, size: int, n_patients: int) -> Path:
    """Phantoms in which only cardiomegaly varies (half the patients), as a dataset table: every fifth image
    in the val split, the rest in train."""
    prevalence = dict.fromkeys(phantoms.RENDERED, 0.0) | {"Cardiomegaly": 0.5}
    settings = phantoms.PhantomSettings.from_dict(
        {"n_patients": n_patients, "image_size": size, "seed": 5, "prevalence": prevalence, "max_studies": 2}
    )
    phantoms.generate(settings, root / "phantoms")
    truth = pd.read_csv(root / "phantoms" / phantoms.DATASET / "truth.csv")
    dataset = pd.DataFrame(
        {"image_id": truth["Path"], "image": [str(root / "phantoms" / p) for p in truth["Path"]]}
    )
    dataset["label_Cardiomegaly"] = truth["Cardiomegaly"].astype(float)
    dataset["split"] = np.where(np.arange(len(dataset)) % 5 == 0, "val", "train")
    dataset["age"] = 60.0
    for column in ("sex", "race", "site", "view", "projection"):
        dataset[column] = "x"
    dataset.to_parquet(root / "dataset.parquet")
    return root / "dataset.parquet"


def test_tiny_vae_is_trained_scaled_and_described(tiny, tmp_path):
    dataset = phantom_dataset(tmp_path, 32, 12)
    config = validated({"diffusion": {"resolution": 32, "tiny_vae": {"steps": 20, "batch_size": 8}}})
    settings = TinyVaeSettings.of(config)
    stage.train_tiny_vae(str(dataset), str(tiny), settings, 0, str(tmp_path / "trained"))
    card = json.loads((tmp_path / "trained" / "synthmed_model.json").read_text())
    assert card["vae"]["steps"] == 20 and card["vae"]["loss_last_10"] < card["vae"]["loss_first_10"]
    assert (
        "VAE trained on" in card["weights"] and f"PSNR {card['vae']['val_psnr_db']:.1f} dB" in card["weights"]
    )
    pipe = base_models.load_pipeline(str(tmp_path / "trained"))
    assert pipe.vae.config.scaling_factor == pytest.approx(card["vae"]["scaling_factor"])
    untrained = base_models.load_pipeline(str(tiny))
    assert not torch.equal(pipe.vae.encoder.conv_in.weight, untrained.vae.encoder.conv_in.weight)
    assert torch.equal(pipe.unet.conv_in.weight, untrained.unet.conv_in.weight)
    empty = pd.read_parquet(dataset).assign(split="train")
    empty.to_parquet(tmp_path / "no_val.parquet")
    with pytest.raises(InputError, match="split 'val' has no images"):
        stage.train_tiny_vae(str(tmp_path / "no_val.parquet"), str(tiny), settings, 0, str(tmp_path / "x"))


CARDIOMEGALY, NORMAL = "Chest X-ray showing Cardiomegaly", "Normal chest X-ray with no significant findings"
SIZE = 32  # 8x8x4 latents: the phantoms' cardiomegaly is learnt in about a minute on 2 CPU cores


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny) -> Path:
    """The whole tiny generator, each step through its stage function, trained briefly on cardiomegaly
    phantoms: VAE, latent cache, full UNet fine-tuning, then 16 samples per prompt (DDIM, guidance 7)."""
    root = tmp_path_factory.mktemp("learned")
    dataset = phantom_dataset(root, SIZE, 100)
    rows = pd.read_parquet(dataset).query("split == 'train'")
    prompts = rows[["image_id"]].assign(
        prompt=np.where(rows["label_Cardiomegaly"] == 1, CARDIOMEGALY, NORMAL)
    )
    prompts = prompts.assign(prompt_id=(prompts["prompt"] == CARDIOMEGALY).astype(int), selected=True)
    prompts.to_parquet(root / "prompts.parquet")
    train = {
        "max_steps": 250,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "caption_dropout": 0.1,
        "snr_gamma": 5.0,
    }
    sample = {"images_per_prompt": 16, "shards": 1, "steps": 25, "guidance_scale": 7.0, "batch_size": 16}
    diffusion = {
        "method": "full",
        "resolution": SIZE,
        "tiny_vae": {"steps": 80},
        "train": train,
        "sample": sample,
    }
    config = validated({"diffusion": diffusion})
    files = {"trained": "trained", "cache": "cache.safetensors", "model": "model", "plan": "plan.parquet"}
    files |= {"images": "images", "table": "samples.parquet"}
    paths = {key: str(root / name) for key, name in files.items()}
    stage.train_tiny_vae(str(dataset), str(tiny), TinyVaeSettings.of(config), 0, paths["trained"])
    stage.cache_latents(
        str(dataset),
        str(root / "prompts.parquet"),
        paths["trained"],
        CacheSettings.of(config),
        0,
        paths["cache"],
    )
    names = ("report.json", "loss.png", "grid.png", "checkpoints", "grids", "logs")
    outputs = [str(root / name) for name in names]
    stage.finetune_sd(paths["cache"], paths["trained"], TrainSettings.of(config), 0, paths["model"], *outputs)
    samples = SampleSettings.of(config)
    stage.plan_samples(str(root / "prompts.parquet"), str(dataset), samples, None, paths["plan"])
    stage.sample_images(paths["plan"], paths["model"], samples, 0, 0, paths["images"], paths["table"])
    return root


def test_fine_tuning_loss_falls_well_below_its_start(learned):
    report = json.loads((learned / "report.json").read_text())
    assert report["steps"] == 250
    assert report["loss_last_10"] < 0.35 * report["loss_first_10"]


def gray(paths: pd.Series) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("L"), dtype=float) / 255 for p in paths])


def test_samples_show_the_finding_their_prompt_asks_for(learned):
    """Where the enlarged heart lies (the pixels real cardiomegaly brightens most) separates the samples of
    the two prompts as it separates real images; a broken loss, noise schedule or sampler does not (a loss
    with the wrong target gave AUROC 0.0 and a loss ratio of 0.38)."""
    dataset = pd.read_parquet(learned / "dataset.parquet")
    real, train = gray(dataset["image"]), (dataset["split"] == "train").to_numpy()
    label = dataset["label_Cardiomegaly"].to_numpy()
    difference = real[train & (label == 1)].mean(axis=0) - real[train & (label == 0)].mean(axis=0)
    heart = difference > np.quantile(difference, 0.95)
    assert roc_auc_score(label[~train], real[~train][:, heart].mean(axis=1)) > 0.9
    samples = pd.read_parquet(learned / "samples.parquet")
    assert (samples["prompt"] == CARDIOMEGALY).sum() == (samples["prompt"] == NORMAL).sum() == 16
    synthetic = gray(samples["image"])
    assert synthetic.shape[1:] == (SIZE, SIZE)
    assert roc_auc_score(samples["label_Cardiomegaly"], synthetic[:, heart].mean(axis=1)) > 0.85
