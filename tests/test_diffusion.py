"""Diffusion stage library: seeds, sampling plan and labels, base-model errors, LoRA round trip, resume."""

from __future__ import annotations

import copy
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from configs import validated
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from workflow.common import checkpoints
from workflow.common.errors import InputError
from workflow.common.interruption import Stopped
from workflow.common.seeding import derive_seed, text_key
from workflow.diffusion import base_models, latent_cache, sampling, saving, stage, training, validation
from workflow.diffusion.generators import cache_file, generators, prompt_variants
from workflow.diffusion.settings import CacheSettings, SampleSettings, TrainSettings
from workflow.prompts.settings import CaptionSettings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "resources" / "config.schema.yaml")
RESOLUTION = 32


def defaults() -> dict:
    """The diffusion section of a config with every default filled in."""
    return validated({})["diffusion"]


def train_settings(**changes) -> TrainSettings:
    """LoRA fine-tuning at test size, then ``changes``."""
    config = {"diffusion": {"method": "lora", "train": {"learning_rate": 1e-2, "validation_prompts": 2}}}
    settings = TrainSettings.of(validated(config)).to_dict()
    settings |= {"validation_inference_steps": 2, "batch_size": 4, "caption_dropout": 0.2} | changes
    return TrainSettings.from_dict(settings)


def sample_settings(**changes) -> SampleSettings:
    settings = SampleSettings.of(validated({"diffusion": {"resolution": RESOLUTION}})).to_dict()
    settings |= {"steps": 3, "images_per_prompt": 3, "batch_size": 2} | changes
    return SampleSettings.from_dict(settings)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "sd"
    base_models.build_tiny(out, seed=0)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny) -> Path:
    """A dataset of 12 random images, a prompts table with 3 prompts, and their latent cache."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        path = root / f"img{i}.png"
        from PIL import Image

        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(path)
        rows.append({"image_id": f"p{i}/s1/v1", "image": str(path), "sex": ["female", "male"][i % 2]})
    dataset = pd.DataFrame(rows)
    dataset["age"] = 40.0 + np.arange(12)
    dataset["label_A"] = [1.0, 1.0, 0.0, 1.0] * 3
    for column in ("race", "site", "view", "projection"):
        dataset[column] = "x"
    dataset.to_parquet(root / "dataset.parquet")
    prompts = pd.DataFrame({"image_id": dataset["image_id"], "prompt_id": [0, 0, 1, 2] * 3})
    prompts["prompt"] = prompts["prompt_id"].map({0: "chest x-ray a", 1: "chest x-ray b", 2: "chest x-ray c"})
    prompts["selected"] = True
    prompts.loc[11, "selected"] = False
    prompts.to_parquet(root / "prompts.parquet")
    settings = CacheSettings(resolution=RESOLUTION, random_flip=True, batch_size=5)
    stage.cache_latents(
        str(root / "dataset.parquet"), str(root / "prompts.parquet"), str(tiny), settings, 0,
        str(root / "cache.safetensors"),
    )  # fmt: skip
    return root


def micro_inputs(
    cache: latent_cache.LatentCache, settings: TrainSettings, micro: int, scheduler
) -> tuple[torch.Tensor, torch.Tensor, training.StepDraws]:
    """Latents, text embeddings and draws of one-process micro-step ``micro`` on the CPU, as training makes
    them."""
    cpu = torch.device("cpu")
    rows = training.batch_indices(len(cache), settings, 1, 0, micro)
    shape = (cache.latent_channels, cache.latent_size, cache.latent_size)
    steps = scheduler.config.num_train_timesteps
    draws = training.step_draws(settings, micro, settings.batch_size, shape, cache.flips, steps, cpu)
    batch = (cache.posteriors(rows), cache.prompt_index[rows])
    return *training.batch_inputs(cache, batch, draws, settings, cpu), draws


def test_seeds_are_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    seeds = {derive_seed(s, text_key(str(p)), i) for s in (0, 1) for p in range(20) for i in range(5)}
    assert len(seeds) == 200
    assert text_key("7") == int.from_bytes(__import__("hashlib").sha256(b"7").digest()[:8], "little")


def test_consensus_labels_agree_majority_or_missing():
    assert sampling.majority_label(pd.Series([1.0, 1.0, np.nan])) == 1.0
    assert sampling.majority_label(pd.Series([1.0, 0.0, 0.0])) == 0.0
    assert np.isnan(sampling.majority_label(pd.Series([1.0, 0.0])))
    assert sampling.majority_text(pd.Series(["male", "male", "female"])) == "male"
    assert sampling.majority_text(pd.Series(["male", "female"])) is pd.NA


def test_plan_labels_ids_and_shards(study):
    table = sampling.prompt_table(str(study / "prompts.parquet"), str(study / "dataset.parquet"))
    assert table["prompt_id"].tolist() == [0, 1, 2]
    assert table["source_images"].tolist() == [6, 3, 2]  # image 11 (prompt 2) is not selected
    assert table["label_A"].tolist() == [1.0, 0.0, 1.0]
    three = sampling.plan(table, sample_settings(shards=3))
    one = sampling.plan(table, sample_settings(shards=1))
    assert three["image_id"].iloc[0] == "synthetic/0/0" and (three["patient_id"] == three["image_id"]).all()
    assert three["seed"].tolist() == one["seed"].tolist()
    assert three["batch"].tolist() == one["batch"].tolist()
    assert three["shard"].is_monotonic_increasing and set(three["shard"]) == {0, 1, 2}
    assert sampling.plan(table, sample_settings(max_prompts=1))["prompt_id"].unique().tolist() == [0]


def test_demographic_design_draws_findings_and_people_as_the_study_does():
    settings = sample_settings(
        design={"kind": "demographic", "images": 300, "findings": None, "sexes": ["female", "male"],
                "races": ["white", "black", "asian"], "ages": [10, 69]},
    )  # fmt: skip
    labels = ["No Finding", "Cardiomegaly", "Edema"]
    captions = CaptionSettings.from_dict(validated({})["prompts"]["demographics"])
    items = sampling.demographic_design(labels, captions, settings)
    assert len(items) == 300 and items["image_id"].is_unique
    one_hot = items[[f"label_{n}" for n in labels]].to_numpy()
    assert (one_hot.sum(axis=1) == 1).all() and (one_hot.sum(axis=0) > 70).all()  # one finding, ~uniform
    assert items["age"].between(10, 69).all() and set(items["race"]) == {"white", "black", "asian"}
    row = items.iloc[0]
    finding = "no significant findings" if row["label_No Finding"] else None
    finding = finding or next(n.lower() for n in labels[1:] if row[f"label_{n}"] == 1)
    expected = (
        f"Chest X-ray of a {int(row['age'])}-year-old {row['race']} {row['sex']} patient showing {finding}"
    )
    assert row["prompt"] == expected
    again = sampling.demographic_design(labels, captions, settings)
    pd.testing.assert_frame_equal(items, again)
    other = sampling.demographic_design(labels, captions, replace(settings, seed=1))
    assert other["prompt"].tolist() != items["prompt"].tolist()
    only = replace(settings, design=replace(settings.design, findings=("Edema",)))
    assert (sampling.demographic_design(labels, captions, only)["label_Edema"] == 1).all()
    with pytest.raises(InputError, match=r"design\.findings: \['Pneumonia'\] are not in dataset\.labels"):
        sampling.demographic_design(
            labels, captions, replace(only, design=replace(only.design, findings=("Pneumonia",)))
        )


def test_generators_default_arms_and_shared_caches():
    assert list(generators(validated({"diffusion": {"method": "full"}}))) == ["sd-full"]
    config = validated(
        {
            "prompts": {"strategies": ["labels", "mep"]},
            "diffusion": {
                "method": "lora",
                "generators": {
                    "morphology": {"strategies": ["mep", "labels"]},
                    "classes": {"strategies": ["labels"], "method": "full"},
                    "morphology-lora": {},
                },
            },
        }
    )
    arms = generators(config)
    assert [(g.method, g.variant) for g in arms.values()] == [
        ("lora", "labels+mep"), ("full", "labels"), ("lora", "labels+mep"),
    ]  # fmt: skip
    assert prompt_variants(config) == ["labels+mep", "labels"]  # equal strategy sets share one cache
    assert cache_file("labels") == "results/models/cache/labels/train.safetensors"
    assert TrainSettings.of(config, "full").learning_rate == 1e-5
    config["diffusion"]["generators"]["classes"]["strategies"] = ["tabular"]
    with pytest.raises(InputError, match=r"diffusion\.generators\.classes\.strategies: \['tabular'\]"):
        generators(config)


def test_cache_holds_both_flips_and_the_empty_prompt(study):
    cache = latent_cache.LatentCache(str(study / "cache.safetensors"))
    assert len(cache) == 11 and cache.flips == 2 and cache.latent_size == RESOLUTION // 4
    assert cache.prompts == ["chest x-ray a", "chest x-ray b", "chest x-ray c"]
    assert cache.posteriors(torch.tensor([3, 0])).shape == (2, 2, 8, 8, 8)
    assert "random-init tiny SD" in cache.provenance["weights"]


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("/nonexistent/sd-1.5", "is neither an existing diffusers folder nor a hub id"),
        ("tiny", "is neither an existing diffusers folder nor a hub id"),
        (".", "has no model_index.json"),
    ],
)
def test_unknown_base_model_names_the_key(base, message):
    with pytest.raises(InputError, match=f"diffusion.base_model.*{message}"):
        base_models.resolve_base(base)


def test_hub_ids_and_folders_resolve(tiny):
    assert base_models.resolve_base("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert base_models.resolve_base(str(tiny)) == str(tiny)


@pytest.mark.parametrize(
    ("edit", "names"),
    [
        (lambda d: d.update(lora={"rank": 0}), r"(?s)0 is less than the minimum of 1.*\['lora'\]\['rank'\]"),
        (lambda d: d.update(resolution=36), r"(?s)36 is not a multiple of 8.*\['resolution'\]"),
        (lambda d: d["sample"].update(scheduler="euler"), r"(?s)'euler' is not one of.*\['scheduler'\]"),
        (lambda d: d["train"].update(mixed_precision="fp8"), "fp8"),
    ],
)
def test_invalid_diffusion_config_names_the_key(edit, names):
    config = copy.deepcopy(yaml.safe_load((ROOT / "config.yaml").read_text()))
    edit(config["diffusion"])
    with pytest.raises(WorkflowError, match=names):
        validate(config, SCHEMA)


def test_ema_is_refused_for_lora():
    with pytest.raises(InputError, match=r"diffusion\.train\.ema"):
        train_settings(ema=True)


def test_lora_save_and_reload_give_identical_samples(tiny, study, tmp_path):
    """The adapters are saved in the Kohya format with alpha per module (the wider ecosystem's format) and
    load back at the trained scale alpha / rank: an alpha-free file (what loaders that ignore peft's
    metadata saw before) gives other images."""
    lora = defaults()["lora"] | {"target_modules": ["to_q", "to_k", "to_v", "conv_out"]}  # linear and conv
    settings = train_settings(max_steps=3, lora=lora, channels_last=False)  # the reloaded UNet's layout
    cache = latent_cache.LatentCache(str(study / "cache.safetensors"))
    unet = training.build_unet(str(tiny), settings, torch.float32)
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-2)
    scheduler = base_models.load_pipeline(str(tiny)).scheduler
    for micro in range(3):
        latents, text, draws = micro_inputs(cache, settings, micro, scheduler)
        training.diffusion_loss(unet, latents, text, scheduler, settings, draws).backward()
        optimizer.step()
        optimizer.zero_grad()
    saving.save_trained(unet, None, "lora", str(tiny), str(tmp_path / "lora"), "random-init tiny SD")
    weights = load_file(tmp_path / "lora" / saving.LORA_WEIGHTS)
    assert all(key.startswith("lora_unet_") for key in weights)
    alphas = {key: float(value) for key, value in weights.items() if key.endswith(".alpha")}
    assert len(alphas) == len(weights) // 3 and set(alphas.values()) == {16.0}
    assert any("conv_out" in key for key in alphas)
    unet.eval()
    in_memory = base_models.load_pipeline(str(tiny), unet=unet)
    reloaded = saving.load_trained(str(tmp_path / "lora"))
    base = base_models.load_pipeline(str(tiny))
    without_alpha = tmp_path / "no_alpha"
    without_alpha.mkdir()
    save_file({k: v for k, v in weights.items() if k not in alphas}, without_alpha / saving.LORA_WEIGHTS)
    unscaled = base_models.load_pipeline(str(tiny))
    unscaled.load_lora_weights(str(without_alpha))
    prompts, seeds, options = ["chest x-ray a", "chest x-ray c"], [1, 2], sample_settings(grayscale=False)
    first, second, untrained, alpha_free = (
        np.stack(sampling.generate(p, prompts, seeds, options)) for p in (in_memory, reloaded, base, unscaled)
    )
    assert np.array_equal(first, second)
    assert not np.array_equal(first, untrained) and not np.array_equal(first, alpha_free)
    # the sampling fast path: LoRA fused into the weights, channels-last UNet and VAE; the same images
    fast, plain = (
        sampling.load_sampler(str(tmp_path / "lora"), options_, torch.device("cpu"))
        for options_ in (options, replace(options, fuse_lora=False, channels_last=False))
    )
    assert not any("lora" in name for name, _ in fast.unet.named_parameters())
    assert any("lora" in name for name, _ in plain.unet.named_parameters())
    fused, unfused = (
        np.stack(sampling.generate(p, prompts, seeds, options)).astype(int) for p in (fast, plain)
    )
    assert np.abs(fused - unfused).max() <= 2 and np.abs(fused - unfused).mean() < 0.1
    assert not np.array_equal(fused, np.stack(sampling.generate(base, prompts, seeds, options)))


def test_sampling_dtype_auto_is_float32_on_a_cpu_and_float16_needs_a_gpu():
    assert sampling.sampling_dtype(sample_settings(), torch.device("cpu")) == torch.float32
    assert sampling.sampling_dtype(sample_settings(), torch.device("cuda")) == torch.float16
    with pytest.raises(InputError, match=r"diffusion\.sample\.dtype"):
        sampling.sampling_dtype(sample_settings(dtype="float16"), torch.device("cpu"))


def test_fast_path_gives_the_same_training_steps_on_the_cpu(tiny, study):
    """Fused AdamW, the foreach EMA update and a channels-last UNet (and TF32, a no-op on a CPU) change the
    arithmetic at rounding level only: the losses and EMA weights of a few steps match those without them,
    and a checkpoint of one resumes the other. The batched cache read returns the rows themselves."""
    cache_path = str(study / "cache.safetensors")
    cache = latent_cache.LatentCache(cache_path)
    rows = torch.tensor([7, 0, 3, 3])
    with safe_open(cache_path, framework="pt") as file:
        assert torch.equal(cache.posteriors(rows), file.get_tensor("posteriors")[rows].float())
    raw = TrainSettings.of(validated({"diffusion": {"method": "full"}})).to_dict()
    raw |= {"batch_size": 2, "ema": True, "ema_decay": 0.9, "learning_rate": 1e-3}
    fast = TrainSettings.from_dict(raw | {"tf32": True, "fused_adam": True, "foreach_ema": True})
    slow = replace(fast, tf32=False, fused_adam=False, foreach_ema=False, channels_last=False)
    assert fast.channels_last
    assert training.trajectory_fingerprint(fast, "c", "b") == training.trajectory_fingerprint(slow, "c", "b")
    scheduler = base_models.load_pipeline(str(tiny)).scheduler
    results = []
    for settings in (fast, slow):
        unet = training.build_unet(str(tiny), settings, torch.float32)
        optimizer = training.adamw([p for p in unet.parameters() if p.requires_grad], settings)
        ema, losses = training.weight_average(unet, settings), []
        for micro in range(3):
            latents, text, draws = micro_inputs(cache, settings, micro, scheduler)
            loss = training.diffusion_loss(unet, latents, text, scheduler, settings, draws)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            ema.step(unet.parameters())
            losses.append(loss.item())
        results.append((losses, [p.clone() for p in ema.shadow_params]))
    (fast_losses, fast_ema), (slow_losses, slow_ema) = results
    assert np.allclose(fast_losses, slow_losses, rtol=1e-5, atol=0)
    # Adam's normalised step can turn a rounding-level change of a near-zero gradient into a weight change
    # of up to the learning rate; every other weight agrees to float32 rounding
    difference = torch.cat([(a - b).abs().flatten() for a, b in zip(fast_ema, slow_ema, strict=True)])
    assert difference.max() < fast.learning_rate / 4 and (difference > 1e-6).float().mean() < 1e-3


def test_checkpoints_keep_the_newest_and_set_others_aside(tmp_path):
    for step in (5, 10, 15):
        checkpoints.save(tmp_path, {"step": step, "fingerprint": "aaaa", "w": torch.ones(2) * step}, keep=2)
    checkpoints.save(tmp_path, {"step": 20, "fingerprint": "bbbb"}, keep=2)
    (tmp_path / ".checkpoint-00000025-aaaa.pt.x.tmp").write_bytes(b"half")
    assert checkpoints.newest(tmp_path, "aaaa")["step"] == 15
    moved = checkpoints.set_aside(tmp_path, "aaaa")
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.pt"))
    assert names == ["checkpoint-00000010-aaaa.pt", "checkpoint-00000015-aaaa.pt"]
    assert moved == [tmp_path / "set-aside" / "checkpoint-00000020-bbbb.pt"] and moved[0].is_file()
    assert not list(tmp_path.glob(".*.tmp"))
    assert checkpoints.newest(tmp_path, "cccc") is None


def test_fingerprint_ignores_how_often_a_run_checkpoints_or_validates():
    """Changing checkpoint_steps or the validation settings used to throw the run's checkpoints away; the
    logging and fast-path settings do not change the trajectory either."""
    settings = train_settings()
    same = training.trajectory_fingerprint(settings, "cache", "base")
    for key in training.TRAJECTORY_FREE:
        value = getattr(settings, key)
        other = (
            not value if isinstance(value, bool) else "none" if isinstance(value, str) else (value or 1) + 1
        )
        changed = replace(settings, **{key: other})
        assert training.trajectory_fingerprint(changed, "cache", "base") == same, key
    other = replace(settings, learning_rate=settings.learning_rate * 2)
    assert training.trajectory_fingerprint(other, "cache", "base") != same
    assert training.trajectory_fingerprint(settings, "other cache", "base") != same


def run_training(
    study: Path, tiny: Path, out: Path, settings: TrainSettings, processes: int = 0
) -> subprocess.Popen:
    """Start `scripts.diffusion finetune_sd` (as the rule does, one CPU process) in the background; with
    ``processes``, under `accelerate launch` with that many CPU processes (gloo)."""
    paths = {
        name: str(out / name)
        for name in ("model", "report", "loss", "grid", "checkpoints", "validation", "logs")
    }
    paths["report"] += ".json"
    paths["loss"] += ".png"
    paths["grid"] += ".png"
    command = [
        sys.executable, "-m", "scripts.diffusion", "finetune_sd", "--cache", str(study / "cache.safetensors"),
        "--base-model", str(tiny), "--settings", settings.to_json(), "--gpus", "0",
        *[arg for name, path in paths.items() for arg in (f"--{name}", path)],
    ]  # fmt: skip
    if processes:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        # --multi_gpu picks accelerate's torchrun launcher; on a CPU (--gpus 0) the processes use gloo
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
        launcher += ["--num_processes", str(processes), "--main_process_port", port]
        launcher += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        command = [*launcher, *command[1:]]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def test_killed_training_resumes_to_the_same_weights(tiny, study, tmp_path):
    """SIGKILL after the first checkpoint, then start again with other checkpoint and validation settings:
    the result equals an uninterrupted run, bitwise on the CPU (losses, EMA weights)."""
    raw = TrainSettings.of(validated({"diffusion": {"method": "full"}})).to_dict()
    raw |= {"max_steps": 20, "batch_size": 2, "ema": True}
    raw |= {"ema_decay": 0.9, "learning_rate": 1e-3, "checkpoint_steps": 5, "snr_gamma": 5.0}
    raw |= {"noise_offset": 0.05, "caption_dropout": 0.2, "validation_inference_steps": 2}
    raw = TrainSettings.from_dict(raw)
    whole = run_training(study, tiny, tmp_path / "whole", raw)
    killed = run_training(study, tiny, tmp_path / "killed", raw)
    folder = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(folder.glob("checkpoint-*.pt")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (
        list(folder.glob("checkpoint-00000005-*.pt")) and not (tmp_path / "killed" / "report.json").exists()
    )
    # checkpointing and validation settings may change between the runs: they do not change the weights
    resumed = run_training(
        study, tiny, tmp_path / "killed", replace(raw, checkpoint_steps=7, validation_inference_steps=3)
    )
    assert resumed.wait() == 0, resumed.stderr.read()
    assert whole.wait() == 0, whole.stderr.read()
    report = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert report["resumed_from_step"] >= 5 and report["steps"] == 20 and report["images_seen"] == 40
    reference = json.loads((tmp_path / "whole" / "report.json").read_text())
    assert report["losses"] == reference["losses"]
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = (
        load_file(tmp_path / "whole" / "model" / weights),
        load_file(tmp_path / "killed" / "model" / weights),
    )
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not list((tmp_path / "killed" / "checkpoints").glob("checkpoint-*.pt"))


def test_sigterm_saves_a_checkpoint_and_the_next_attempt_resumes_from_it(
    tiny, study, tmp_path, monkeypatch, capsys
):
    """Slurm's time limit sends SIGTERM: training finishes the step, saves it although no checkpoint is due
    and exits with 143; the next attempt resumes there, says so in its report, and its log starts with the
    earlier attempt's (Snakemake deletes a job's log before each attempt)."""
    settings = train_settings(max_steps=5, checkpoint_steps=100, validation_prompts=1)
    paths = {name: str(tmp_path / name) for name in ("model", "checkpoints", "validation", "logs")}
    paths |= {"report": str(tmp_path / "report.json"), "loss": str(tmp_path / "loss.png")}
    paths["grid"] = str(tmp_path / "grid.png")
    real_loss, calls = training.diffusion_loss, []

    def loss_then_signal(*args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*args)

    monkeypatch.setattr(training, "diffusion_loss", loss_then_signal)
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    handler = signal.getsignal(signal.SIGTERM)
    cache = str(study / "cache.safetensors")
    with pytest.raises(Stopped) as stopped:
        training.train(cache, str(tiny), settings, 0, paths)
    assert stopped.value.code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) == handler
    folder = tmp_path / "checkpoints"
    assert [p.name[:19] for p in folder.glob("checkpoint-*.pt")] == ["checkpoint-00000003"]
    assert "SIGTERM received: stopped after step 3" in (folder / "attempts.log").read_text()
    capsys.readouterr()
    training.train(cache, str(tiny), settings, 0, paths)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["resumed_from_step"] == 3 and report["steps"] == 5 and len(calls) == 5
    assert report["stopped_by_signal"] == [{"step": 3, "signal": "SIGTERM", "slurm_job_id": "41"}]
    log = capsys.readouterr().err
    assert "earlier attempts" in log and "SIGTERM received: stopped after step 3" in log
    assert not list(folder.iterdir())  # checkpoints and the attempts' log are gone once the model is saved
    assert settings.log_with == "tensorboard" and list((tmp_path / "logs").rglob("events.out.tfevents.*"))


SCHEDULES = yaml.safe_load(Path(SCHEMA).read_text())["properties"]["diffusion"]["properties"]["train"][
    "properties"
]["lr_scheduler"]["enum"]


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_learning_rate_schedule_warms_up_then_follows_its_shape(name):
    """Each schema choice builds (linear, cosine, cosine_with_restarts and polynomial used to crash), warms
    up over lr_warmup_steps only (constant_with_warmup used to warm up over the whole run) and then keeps
    or lowers the rate."""
    settings = train_settings(lr_scheduler=name, lr_warmup_steps=4, learning_rate=1e-3)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=settings.learning_rate)
    schedule = training.learning_rate_schedule(optimizer, settings, steps=20)
    rates = []
    for _ in range(20):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    if name == "constant":
        assert rates == [pytest.approx(1e-3)] * 20
        return
    assert rates[0] == 0 and rates[2] == pytest.approx(0.5e-3) and rates[4] == pytest.approx(1e-3)
    after = rates[4:]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(after))
    if name == "constant_with_warmup":
        assert after == [pytest.approx(1e-3)] * len(after)
    else:
        assert after[-1] < 0.2e-3


def test_schedule_does_not_advance_on_steps_the_grad_scaler_skipped():
    steps: list[int] = []
    schedule = SimpleNamespace(step=lambda: steps.append(1))
    training.step_schedule(schedule, SimpleNamespace(optimizer_step_was_skipped=True))
    assert steps == []
    training.step_schedule(schedule, SimpleNamespace(optimizer_step_was_skipped=False))
    assert steps == [1]


def test_validation_runs_in_the_training_precision(tiny, study, monkeypatch):
    """bf16 training validates in bf16: torch.autocast without a dtype ran fp16 on a GPU."""
    cache = latent_cache.LatentCache(str(study / "cache.safetensors"))
    validator = validation.Validator(str(tiny), cache, 1, 1, 0, torch.bfloat16, torch.device("cpu"))
    seen = []
    real_autocast = torch.autocast

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dtype"))
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(validation.torch, "autocast", spy)
    unet = base_models.load_pipeline(str(tiny)).unet.to(torch.bfloat16)
    images = validator.images(unet, None)
    assert seen == [torch.bfloat16] and len(images) == 1


@pytest.mark.parametrize(
    ("method", "given", "expected"), [("full", None, 1e-5), ("lora", None, 1e-4), ("lora", 5e-5, 5e-5)]
)
def test_learning_rate_defaults_per_method(method, given, expected):
    """LoRA used to train at full fine-tuning's 1e-5; diffusers' LoRA example uses 1e-4."""
    config = validated({"diffusion": {"method": method, "train": {"learning_rate": given}}})
    assert TrainSettings.of(config).learning_rate == expected


def test_restored_ema_weights_are_on_the_training_device():
    """Resuming with EMA on a GPU failed: the checkpoint's EMA tensors (read on the CPU) stayed there. The
    "meta" device stands in for a GPU."""
    from diffusers.training_utils import EMAModel

    model = torch.nn.Linear(3, 2)
    ema = EMAModel(model.parameters(), decay=0.9)
    state = {
        "trainable": {},
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
        "lr_scheduler": {},
        "ema": ema.state_dict(),
        "scaler": None,
    }
    accelerator = SimpleNamespace(device=torch.device("meta"), scaler=None, unwrap_model=lambda m: m)
    schedule = SimpleNamespace(load_state_dict=lambda state: None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    training.TrainingState(accelerator, model, optimizer, schedule, ema).restore(state)
    assert {p.device.type for p in ema.shadow_params} == {"meta"}


def test_two_processes_train_the_same_weights_as_one_with_the_global_batch(tiny, study, tmp_path):
    """`accelerate launch --num_processes 2` (gloo on the CPU) at batch 2 trains the weights of one process at
    batch 4: each process takes its slice of the global batch and of the step's random draws (latent
    samples, noise, offsets, timesteps, caption dropout, flip views), and DDP averages the gradients. They
    agree to float32 rounding: the losses to 1e-4 relative, the weights to a quarter of the learning rate
    (Adam's normalised step can turn a rounding-level change of a near-zero gradient into a step of up to
    the learning rate), all but 0.1 % of them to 1e-6."""
    raw = TrainSettings.of(validated({"diffusion": {"method": "full"}})).to_dict()
    raw |= {"max_steps": 3, "learning_rate": 1e-3, "snr_gamma": 5.0, "noise_offset": 0.05}
    raw |= {"caption_dropout": 0.3, "validation_prompts": 1, "validation_inference_steps": 1}
    raw |= {"log_with": "none", "log_steps": 1}
    single = TrainSettings.from_dict(raw | {"batch_size": 4})
    two_processes = run_training(study, tiny, tmp_path / "two", replace(single, batch_size=2), processes=2)
    paths = {name: str(tmp_path / "one" / name) for name in ("model", "checkpoints", "validation", "logs")}
    paths |= {name: str(tmp_path / "one" / name) for name in ("report.json", "loss.png", "grid.png")}
    paths = {name.split(".")[0]: path for name, path in paths.items()}
    training.train(str(study / "cache.safetensors"), str(tiny), single, 0, paths)  # one process, here
    assert two_processes.wait(timeout=240) == 0, two_processes.stderr.read()
    runs = ("one", "two")
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in runs)
    assert (one["processes"], two["processes"]) == (1, 2) and one["images_seen"] == two["images_seen"] == 12
    assert np.allclose(one["losses"], two["losses"], rtol=1e-4, atol=0)
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = (load_file(tmp_path / name / "model" / weights) for name in runs)
    difference = torch.cat([(a[key] - b[key]).abs().flatten() for key in a])
    assert difference.max() < single.learning_rate / 4 and (difference > 1e-6).float().mean() < 1e-3
    base = load_file(tiny / weights)
    assert max((a[key] - base[key]).abs().max() for key in a) > 1e-4  # it trained


def test_step_draws_are_the_global_batch_sliced_per_process():
    """Process r's draws are the r-th slice of the one-process draws of the global batch."""
    settings = train_settings(noise_offset=0.1, caption_dropout=0.5)
    cpu = torch.device("cpu")
    whole = training.step_draws(settings, 7, 6, (4, 3, 3), 2, 1000, cpu)
    parts = [training.step_draws(settings, 7, 6, (4, 3, 3), 2, 1000, cpu).part(r, 3) for r in (0, 1)]
    for name in ("view", "dropped", "latent", "noise", "timesteps"):
        assert torch.equal(torch.cat([getattr(p, name) for p in parts]), getattr(whole, name)), name
    other = training.step_draws(settings, 8, 6, (4, 3, 3), 2, 1000, cpu)
    assert not torch.equal(other.noise, whole.noise)


def test_data_loader_reads_the_batches_of_the_seeded_order(study):
    """The DataLoader gives, from any micro-step on (a resumed run), the rows batch_indices names for this
    process; on CUDA it reads ahead in a worker into pinned memory."""
    cache = latent_cache.LatentCache(str(study / "cache.safetensors"))
    settings = train_settings(batch_size=2)
    micros = range(3, 9)  # crosses an epoch: 11 images, 2 processes x 2 -> 2 micro-steps per epoch
    loader = training.micro_batches(cache, settings, 2, 1, micros, torch.device("cpu"))
    batches = list(loader)
    assert len(batches) == len(micros)
    for micro, (posteriors, prompts) in zip(micros, batches, strict=True):
        rows = training.batch_indices(len(cache), settings, 2, 1, micro)
        assert torch.equal(posteriors, cache.posteriors(rows))
        assert torch.equal(prompts, cache.prompt_index[rows])
    assert loader.num_workers == 0 and not loader.pin_memory
    cuda = training.micro_batches(cache, settings, 2, 1, micros, torch.device("cuda"))
    assert cuda.num_workers == 1 and cuda.pin_memory and cuda.prefetch_factor == training.PREFETCH


def test_mixed_precision_auto_is_bf16_on_gpus_that_have_it_and_fp32_elsewhere(monkeypatch):
    """auto (the default) resolves per device; "no" (the LoRA-fairness preset's fp32) stays fp32 on a GPU."""
    assert train_settings().mixed_precision == "auto"
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training.training_precision("auto", cpu) == "no"
    capability = {"value": (8, 0)}  # A100
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability["value"])
    assert training.training_precision("auto", cuda) == "bf16"
    capability["value"] = (7, 0)  # V100 (and T4, 7.5): bf16 only emulated
    assert training.training_precision("auto", cuda) == "no"
    preset = yaml.safe_load((ROOT / "resources" / "presets" / "lora-fairness.yaml").read_text())
    assert training.training_precision(preset["diffusion"]["train"]["mixed_precision"], cuda) == "no"
    assert training.training_precision("bf16", cpu) == "bf16"
    with pytest.raises(InputError, match=r"diffusion\.train\.mixed_precision"):
        training.training_precision("fp16", cpu)


def test_sampling_batch_size_auto_follows_free_gpu_memory(monkeypatch):
    """auto: the free memory (a fake figure here) over the per-image estimate, within 1..MAX_BATCH; a fixed
    PLANNED_BATCH on a CPU; a number is kept. The shard is then sampled in runs of that size, in plan
    order, and the plan groups PLANNED_BATCH images."""
    gib = 2**30
    per_image = sampling.MEMORY_PER_IMAGE_512
    assert sampling.memory_batch_size(int(20.5 * per_image / 0.8), 512, 2) == 20
    assert sampling.memory_batch_size(int(20.5 * per_image / 0.8), 256, 2) == 64  # 82, capped
    assert sampling.memory_batch_size(int(20.5 * per_image / 0.8), 512, 4) == 10  # float32 weights
    assert sampling.memory_batch_size(gib // 10, 512, 2) == 1
    settings = sample_settings(batch_size="auto", resolution=512)
    gpu = SimpleNamespace(unet=SimpleNamespace(device=torch.device("cuda"), dtype=torch.float16))
    cpu = SimpleNamespace(unet=SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (int(5.5 * per_image / 0.8), 80 * gib))
    assert sampling.batch_size(settings, gpu) == 5
    assert sampling.batch_size(settings, cpu) == sampling.PLANNED_BATCH
    assert sampling.batch_size(replace(settings, batch_size=3), gpu) == 3
    items = pd.DataFrame({"batch": [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]})
    assert [len(b) for b in sampling.batches(items, settings, gpu)] == [5, 5, 2]
    assert [len(b) for b in sampling.batches(items, replace(settings, batch_size=4), gpu)] == [2, 3, 4, 3]
    planned = sampling.assign_seeds(pd.DataFrame({"prompt_id": [1] * 20, "index": range(20)}), settings)
    assert planned["batch"].tolist() == [0] * 8 + [1] * 8 + [2] * 4
    assert defaults()["sample"]["batch_size"] == "auto"


def test_dpm_solver_is_offered_beside_ddim_and_documented_as_a_science_setting(tiny, tmp_path):
    """DPM-Solver++ (multistep, dpmsolver++) swaps in on the same noise schedule and samples at 20 steps; the
    schema names both settings (DDIM-50, DPM-Solver++ at 20-25 steps) as science settings."""
    pipe = base_models.load_pipeline(str(tiny))
    sampling.set_scheduler(pipe, "dpm-solver++")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    original = base_models.load_pipeline(str(tiny)).scheduler.config
    assert pipe.scheduler.config.beta_schedule == original.beta_schedule
    options = sample_settings(scheduler="dpm-solver++", steps=20)
    dpm = np.stack(sampling.generate(pipe, ["chest x-ray a"], [1], options)).astype(int)
    sampling.set_scheduler(pipe, "ddim")
    ddim = np.stack(sampling.generate(pipe, ["chest x-ray a"], [1], replace(options, scheduler="ddim")))
    assert dpm.shape == ddim.shape and not np.array_equal(dpm, ddim)  # another sampler, other images
    schema = yaml.safe_load(Path(SCHEMA).read_text())["properties"]["diffusion"]["properties"]["sample"]
    text = " ".join(schema["properties"][key]["description"] for key in ("scheduler", "steps"))
    assert "dpm-solver++" in text and "20-25" in text and "50" in text and "science" in text
