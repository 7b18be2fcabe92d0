"""The diffusion stage, file to file: cached latents -> fine-tuned generator -> sampling plan -> sharded,
seeded sampling -> the generator's labelled synthetic dataset.

One function per rule of ``rules/diffusion.smk``, named after it. Files written (atomically, with
provenance), per generator (:mod:`workflow.diffusion.generators`):

- ``results/models/tiny/sd-trained/``: with ``diffusion.base_model: tiny``, the tiny SD whose VAE was
  trained on the training images (:func:`train_tiny_vae`, :mod:`workflow.diffusion.tiny_vae`), the base
  model of every generator;
- ``results/models/cache/<variant>/train.safetensors``: VAE posteriors and text embeddings of the training
  images under a prompt variant (:func:`cache_latents`, :mod:`workflow.diffusion.latent_cache`);
- ``results/models/<generator>/``: ``model/`` (a diffusers pipeline folder, or LoRA weights),
  ``train_report.json``, ``loss.png``, ``validation.png`` (:func:`finetune_sd`,
  :mod:`workflow.diffusion.training`);
- ``results/samples/<generator>/``: ``plan.parquet`` (:func:`plan_samples`), ``shards/<k>.parquet`` and
  ``images/shard<k>/`` (:func:`sample_images`), ``manifest.parquet`` (:func:`collect_samples`), see
  :mod:`workflow.diffusion.sampling`;
- for generators of kinds ``mask-guided`` and ``mask-text`` (pixel diffusion), the functions of
  :mod:`workflow.diffusion.pixel_stage` and, for a mask-text generator's difference maps, of
  :mod:`workflow.diffusion.differences`, re-exported here.

torch and diffusers are imported only by the steps that run a model: planning and collecting start in a
second.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.common.files import atomic_output, write_parquet
from workflow.common.model_card import read_card, weights_label, write_card
from workflow.common.provenance import config_hash, provenance
from workflow.diffusion import sampling
from workflow.diffusion.differences import difference_maps  # noqa: F401 (re-exported: a rule's function)
from workflow.diffusion.latent_cache import training_rows
from workflow.diffusion.pixel_stage import (  # noqa: F401 (re-exported: the rules' functions)
    collect_mask_guided,
    sample_mask_guided,
    sample_mask_text,
    train_mask_guided,
    train_mask_text,
)
from workflow.diffusion.settings import (
    CacheSettings,
    SampleSettings,
    TinyVaeSettings,
    TrainSettings,
)
from workflow.prompts.settings import CaptionSettings


def train_tiny_vae(dataset: str, base_model: str, settings: TinyVaeSettings, gpus: int, model: str) -> None:
    """Train the tiny SD's VAE on the training split's images and save the tiny SD with it (and its latent
    scaling factor) as the folder ``model``, whose card says how far the VAE got.

    Args:
        base_model: the built tiny SD's folder (random weights).
        gpus: GPUs of the job (``resources.gpu``); 0 trains on the CPU.
    """
    import time

    from workflow.common.devices import pick_device
    from workflow.diffusion import base_models, tiny_vae

    rows = pd.read_parquet(dataset)
    paths = {split: rows.loc[rows["split"] == split, "image"].tolist() for split in ("train", "val")}
    for split, found in paths.items():
        if not found:
            raise InputError(
                f"{dataset}: split '{split}' has no images; the tiny VAE (diffusion.base_model: tiny) trains "
                "on 'train' and is measured on 'val'"
            )
    images = {split: tiny_vae.load_images(p, settings.resolution) for split, p in paths.items()}
    pipe = base_models.load_pipeline(base_models.resolve_base(base_model))
    pipe.vae.to(pick_device(gpus))
    started = time.perf_counter()
    fitted = tiny_vae.fit(pipe.vae, images["train"], images["val"], settings)
    seconds = time.perf_counter() - started
    pipe.vae.to("cpu")
    built = read_card(base_model)
    vae = {
        "steps": settings.steps,
        "train_images": len(paths["train"]),
        "resolution": settings.resolution,
        "val_psnr_db": round(fitted.psnr_db, 2),
        "scaling_factor": fitted.scaling_factor,
        "loss_first_10": sum(fitted.losses[:10]) / len(fitted.losses[:10]),
        "loss_last_10": sum(fitted.losses[-10:]) / len(fitted.losses[-10:]),
        "train_seconds": round(seconds, 1),
    }
    weights = (
        f"tiny SD (demo): VAE trained on {vae['train_images']} training images ({settings.steps} steps, "
        f"PSNR {fitted.psnr_db:.1f} dB on the val split at {settings.resolution} px); UNet and text encoder "
        "random-init"
    )
    meta = provenance(
        settings,
        seeds={"tiny_vae": settings.tiny_seed},
        inputs={"dataset": dataset},
        weights=built["weights"],
    )
    with atomic_output(model) as tmp:
        pipe.save_pretrained(tmp)
        write_card(tmp, built | {"weights": weights, "vae": vae, "provenance": meta})


def cache_latents(
    dataset: str, prompts: str, base_model: str, settings: CacheSettings, gpus: int, cache: str
) -> None:
    """Encode every training image and prompt once with the base model's frozen VAE and text encoder.

    Args:
        base_model: folder or hub id of the base model (the tiny stand-in's folder for ``tiny``).
        gpus: GPUs of the job (``resources.gpu``); 0 encodes on the CPU.
    """
    from safetensors.torch import save_file

    from workflow.common.devices import pick_device
    from workflow.diffusion import base_models, latent_cache

    location = base_models.resolve_base(base_model)
    rows = training_rows(dataset, prompts)
    device = pick_device(gpus)
    pipe = base_models.load_pipeline(location, unet=None).to(device)  # only the VAE and text encoder run
    tensors, texts = latent_cache.encode(pipe, rows, settings, device)
    meta = provenance(
        settings.to_dict() | {"base_model": base_model}, inputs={"dataset": dataset, "prompts": prompts}
    )
    meta["weights"] = weights_label(location)
    meta["cache_id"] = config_hash({"config": meta["config_hash"], "inputs": meta["inputs"]})
    header = {
        "provenance": json.dumps(meta),
        "prompts": json.dumps(texts),
        "image_ids": json.dumps(rows["image_id"].tolist()),
        "scaling_factor": str(pipe.vae.config.scaling_factor),
    }
    with atomic_output(cache) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def finetune_sd(
    cache: str,
    base_model: str,
    settings: TrainSettings,
    gpus: int,
    model: str,
    report: str,
    loss: str,
    grid: str,
    checkpoints: str,
    validation: str,
    logs: str,
) -> None:
    """Fine-tune the base model on the cache (full UNet or LoRA), resuming from the newest checkpoint; run
    under ``accelerate launch`` with one process per GPU (:func:`workflow.diffusion.training.train`); the
    training curves go to ``logs`` (``diffusion.train.log_with``)."""
    from workflow.diffusion import training

    paths = {"model": model, "report": report, "loss": loss, "grid": grid, "logs": logs}
    training.train(
        cache, base_model, settings, gpus, paths | {"checkpoints": checkpoints, "validation": validation}
    )


def plan_samples(
    prompts: str, dataset: str, settings: SampleSettings, captions: CaptionSettings | None, plan: str
) -> None:
    """Which images to generate: every planned image's prompt, labels, seed, batch and shard, under
    ``diffusion.sample.design`` (:mod:`workflow.diffusion.sampling`).

    Args:
        prompts: the generator's training prompts table (design ``training-prompts``).
        dataset: ``results/data/dataset.parquet`` (its label columns name the findings).
        captions: ``prompts.demographics`` (design ``demographic`` only).
    """
    if settings.design.kind == "demographic":
        if captions is None:
            raise InputError(
                "diffusion.sample.design.kind 'demographic' needs --captions (prompts.demographics)"
            )
        labels = manifest.label_names(pd.read_parquet(dataset))
        items = sampling.demographic_design(labels, captions, settings)
    else:
        items = sampling.plan(sampling.prompt_table(prompts, dataset), settings)
    extra = {"captions": captions.to_dict()} if captions is not None else {}
    meta = provenance(
        settings.to_dict() | extra,
        seeds={"sample": settings.seed},
        inputs={"prompts": prompts, "dataset": dataset},
    )
    write_parquet(plan, items, meta | {"images": len(items)})


def sample_images(
    plan: str, model: str, settings: SampleSettings, shard: int, gpus: int, images: str, table: str
) -> None:
    """Generate the images of one shard of the plan into ``images`` and write its table."""
    from workflow.common.devices import pick_device
    from workflow.common.figures import save_png
    from workflow.common.progress import progress

    if not 0 <= shard < settings.shards:
        raise InputError(f"shard {shard} is outside 0..{settings.shards - 1} (diffusion.sample.shards)")
    device = pick_device(gpus)
    items = pd.read_parquet(plan)
    mine = items[items["shard"] == shard].reset_index(drop=True)
    pipe = sampling.load_sampler(model, settings, device)
    Path(images).mkdir(parents=True, exist_ok=True)
    paths = [sampling.image_path(images, p, i) for p, i in zip(mine["prompt_id"], mine["index"], strict=True)]
    with progress(total=len(mine), desc=f"sample_images shard {shard}", unit="img") as bar:
        for batch in sampling.batches(mine, settings, pipe):
            generated = sampling.generate(pipe, batch["prompt"].tolist(), batch["seed"].tolist(), settings)
            for row, image in zip(batch.index, generated, strict=True):
                save_png(image, paths[row])
            bar.update(len(batch))
    mine["image"] = paths
    weights = read_card(model).get("weights", model)
    meta = provenance(settings, seeds={"sample": settings.seed}, inputs={"plan": plan}, weights=weights)
    write_parquet(table, mine, meta | {"shard": shard})


def collect_samples(parts: Sequence[str], samples: str) -> None:
    """Merge the shard tables into the generator's synthetic dataset, in the manifest schema."""
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    frame = frame.sort_values(["prompt_id", "index"], kind="stable").reset_index(drop=True)
    frame["path"] = frame["image"]
    frame["split"] = "train"
    result = pd.concat(
        [manifest.normalise(frame, manifest.label_names(frame)), frame[sampling.EXTRA_COLUMNS]], axis=1
    )
    sampling.write_collected(parts, result, samples)
