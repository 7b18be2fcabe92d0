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
- for a generator of kind ``mask-guided``, ``results/models/<generator>/`` holds ``model/`` (MONAI UNet
  weights and the card with its architecture), ``train_report.json`` and ``loss.png``
  (:func:`train_mask_guided`), and ``results/samples/<generator>/`` the images sampled once per real mask,
  ``shards/<k>.parquet`` and ``images/masks<k>/`` (:func:`sample_mask_guided`) and ``manifest.parquet``
  (:func:`collect_mask_guided`), see :mod:`workflow.diffusion.mask_guided`;
- for a generator of kind ``mask-text`` (DGM-VLC), the same files from :func:`train_mask_text` and
  :func:`sample_mask_text` (one image per captioned real mask), see :mod:`workflow.diffusion.mask_text`.

torch and diffusers are imported only by the steps that run a model: planning and collecting start in a
second.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.common.files import atomic_output, read_parquet_meta, write_parquet
from workflow.common.model_card import read_card, weights_label, write_card
from workflow.common.provenance import config_hash, provenance
from workflow.diffusion import sampling
from workflow.diffusion.latent_cache import training_rows
from workflow.diffusion.settings import (
    CacheSettings,
    MaskGuidedSampleSettings,
    MaskGuidedTrainSettings,
    MaskTextSampleSettings,
    MaskTextTrainSettings,
    SampleSettings,
    TinyVaeSettings,
    TrainSettings,
)
from workflow.prompts.settings import CaptionSettings

if TYPE_CHECKING:
    import torch

MASK_COLUMNS = ["source_image_id", "dropped_classes"]
"""Columns of a mask-guided generator's samples beyond the SD ones: the real image whose mask conditioned
each image, and the classes its conditioning left out."""


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
    write_collected(parts, result, samples)


def write_collected(parts: Sequence[str], result: pd.DataFrame, samples: str) -> None:
    """The merged shard tables ``result`` as the generator's manifest ``samples``, validated, with the
    provenance of its shards (the weights as the first shard names them)."""
    manifest.validate(result, samples)
    weights = read_parquet_meta(parts[0]).get("weights", "unknown")
    meta = provenance(
        {"shards": len(parts)}, inputs={f"shard{i}": p for i, p in enumerate(parts)}, weights=weights
    )
    write_parquet(samples, result, meta | {"images": len(result)})


def masked_rows(dataset: str, split: str) -> pd.DataFrame:
    """The rows of ``split`` in the preprocessed ``dataset`` that have a mask (column ``mask``).

    Raises:
        InputError: when there are none.
    """
    rows = pd.read_parquet(dataset)
    rows = rows[(rows["split"] == split) & rows["mask"].notna()].reset_index(drop=True)
    if rows.empty:
        raise InputError(
            f"{dataset}: split '{split}' has no images with masks; a mask-guided generator needs the "
            "dataset's segmentation masks (manifest column mask_path, classes in dataset.mask_classes)"
        )
    return rows


@dataclass(frozen=True)
class Trained:
    """A pixel-diffusion network trained by :func:`train_mask_guided` or :func:`train_mask_text`: the network,
    its architecture (for the card), the loss of every step, this attempt's seconds, the training images and
    the weights' description."""

    network: Any
    architecture: dict[str, Any]
    losses: list[float]
    seconds: float
    images: int
    weights: str


def write_trained(trained: Trained, meta: dict[str, Any], paths: dict[str, str], title: str) -> None:
    """The trained network as the folder ``paths["model"]`` (weights and card with its architecture), the
    training report ``paths["report"]`` and the loss curve ``paths["loss"]``."""
    from workflow.common.figures import loss_curve
    from workflow.common.files import write_json
    from workflow.diffusion import mask_guided

    losses = trained.losses
    with atomic_output(paths["model"]) as tmp:
        tmp.mkdir()
        mask_guided.save_model(trained.network, tmp)
        card = {"weights": trained.weights, "architecture": trained.architecture, "provenance": meta}
        write_card(tmp, card)
    write_json(
        paths["report"],
        {
            "images": trained.images,
            "steps": len(losses),
            "loss_first_10": sum(losses[:10]) / len(losses[:10]),
            "loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
            "seconds_this_attempt": round(trained.seconds, 1),
            "provenance": meta | {"weights": trained.weights},
        },
    )
    loss_curve(losses, paths["loss"], f"{title}: training loss")


def train_mask_guided(
    dataset: str,
    settings: MaskGuidedTrainSettings,
    gpus: int,
    model: str,
    report: str,
    loss: str,
    checkpoints: str,
) -> None:
    """Train segmentation-guided diffusion on the training split's images and masks, resuming from the newest
    checkpoint in ``checkpoints`` (:func:`workflow.diffusion.mask_guided.train`); a SIGTERM saves one and
    stops (:mod:`workflow.common.interruption`).

    Args:
        gpus: GPUs of the job (``resources.gpu``); 0 trains on the CPU.
    """
    import time

    from workflow.common.devices import pick_device
    from workflow.common.interruption import attempt_log, stop_on_signal
    from workflow.diffusion import mask_guided

    with attempt_log(checkpoints):
        rows = masked_rows(dataset, "train")
        architecture = mask_guided.architecture_of(settings)
        pairs = mask_guided.read_pairs(
            rows["image"].tolist(), rows["mask"].tolist(), architecture["classes"], settings.resolution
        )
        meta = provenance(settings, seeds={"train": settings.seed}, inputs={"dataset": dataset})
        fingerprint = config_hash({"config": meta["config_hash"], "inputs": meta["inputs"]})
        started = time.perf_counter()
        with stop_on_signal() as stop:
            network, losses = mask_guided.train(
                pairs, settings, fingerprint, checkpoints, pick_device(gpus), stop
            )
        weights = (
            f"segmentation-guided diffusion (Konz et al. 2024) trained from random init on {len(rows)} "
            f"images and masks ({settings.steps} steps at {settings.resolution} px)"
        )
        trained = Trained(network, architecture, losses, time.perf_counter() - started, len(rows), weights)
        write_trained(
            trained, meta, {"model": model, "report": report, "loss": loss}, "mask-guided diffusion"
        )


def mask_batches(
    rows: pd.DataFrame, architecture: dict[str, Any], batch_size: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """The masks of ``rows`` (columns ``image``, ``mask``) in chunks of ``batch_size``, read and resized as
    the model of ``architecture`` was trained (:func:`workflow.diffusion.mask_guided.read_pairs`: class ids
    checked), each with the slice of ``rows`` it holds."""
    from workflow.diffusion import mask_guided

    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        _, masks = mask_guided.read_pairs(
            rows["image"][part].tolist(),
            rows["mask"][part].tolist(),
            architecture["classes"],
            architecture["resolution"],
        ).batch(slice(None))
        yield part, masks


def sample_mask_guided(
    dataset: str,
    model: str,
    settings: MaskGuidedSampleSettings,
    gpus: int,
    shard: int,
    images: str,
    table: str,
) -> None:
    """Shard ``shard`` of the images generated once per real mask of ``settings.split`` (a contiguous part of
    its rows, ``settings.shards`` parts), seeded per image (:func:`workflow.diffusion.mask_guided.generate`),
    as a table in the manifest schema: each row carries the labels and demographics of the real image whose
    mask conditioned it, that mask as ``mask_path``, the real image's id as ``source_image_id`` and the
    classes its conditioning left out (sampling ablation, ``remove_classes``) as ``dropped_classes`` (names
    joined by ``;``); ``image_id`` is ``synthetic/<real image id>``, ``patient_id`` the real patient (the
    classifier regimes never train on samples of a val or test patient's mask)."""
    import numpy as np
    import torch

    from workflow.common.devices import pick_device
    from workflow.diffusion import mask_guided

    if not 0 <= shard < settings.shards:
        raise InputError(
            f"shard {shard} is outside 0..{settings.shards - 1} (diffusion.mask_guided.sample.shards)"
        )
    card = read_card(model)
    architecture = card["architecture"]
    if architecture["classes"] != len(settings.mask_classes):
        raise InputError(
            f"{model}: trained on {architecture['classes']} mask classes, dataset.mask_classes has "
            f"{len(settings.mask_classes)}; retrain the generator"
        )
    rows = masked_rows(dataset, settings.split)
    numbers = np.array_split(np.arange(len(rows)), settings.shards)[shard]
    rows = rows.iloc[numbers].reset_index(drop=True)
    network = mask_guided.load_model(model, architecture, pick_device(gpus))
    seeds = [mask_guided.image_seed(settings.seed, str(i)) for i in rows["image_id"]]
    paths = [str(Path(images) / f"{i:06d}.png") for i in numbers]
    with atomic_output(images) as tmp:
        Path(tmp).mkdir(parents=True)
        for part, masks in mask_batches(rows, architecture, settings.batch_size):
            with torch.no_grad():
                out = mask_guided.generate(network, masks, seeds[part], settings, architecture["timesteps"])
            for index, image in enumerate(out, part.start):
                mask_guided.to_png(image).save(Path(tmp) / Path(paths[index]).name)
    _, dropped = mask_guided.draws(seeds, (1, 1), settings)
    names = [
        ";".join(name for name, hit in zip(settings.mask_classes, row, strict=True) if hit)
        for row in dropped.tolist()
    ]
    missing = pd.Series(pd.NA, index=rows.index, dtype="string")
    result = mask_sample_table(rows, paths, seeds, names, missing, missing)
    manifest.validate(result, table)
    meta = provenance(
        settings, seeds={"sample": settings.seed}, inputs={"dataset": dataset}, weights=card["weights"]
    )
    write_parquet(table, result, meta | {"shard": shard, "images": len(result)})


def mask_sample_table(
    rows: pd.DataFrame,
    paths: Sequence[str],
    seeds: Sequence[int],
    dropped: Sequence[str],
    prompts: pd.Series,
    prompt_ids: pd.Series,
) -> pd.DataFrame:
    """The samples generated from the masks of the real ``rows`` (one each: its PNG path and seed, the classes
    its conditioning left out and its caption, or NA) in the manifest schema, with :data:`MASK_COLUMNS`: each
    carries the labels and demographics of the real image whose mask conditioned it, that mask as
    ``mask_path`` and the real image's id as ``source_image_id``; ``image_id`` is ``synthetic/<real id>``,
    ``patient_id`` the real patient (the classifier regimes never train on samples of a val or test patient's
    mask)."""
    frame = rows.assign(
        image_id=[f"synthetic/{i}" for i in rows["image_id"]],
        path=list(paths),
        image=list(paths),
        mask_path=rows["mask"],
        seed=list(seeds),
        split="train",
        prompt=prompts.astype("string").set_axis(rows.index),
        prompt_id=prompt_ids.astype("string").set_axis(rows.index),
        source_images=1,
        source_image_id=rows["image_id"],
        dropped_classes=list(dropped),
    )
    frame["patient_id"] = rows["patient_id"].astype(str)  # the leak guard of the classifier regimes
    return pd.concat(
        [
            manifest.normalise(frame, manifest.label_names(frame)),
            frame[[*sampling.EXTRA_COLUMNS, *MASK_COLUMNS]],
        ],
        axis=1,
    )


def collect_mask_guided(parts: Sequence[str], samples: str) -> None:
    """Merge a mask-guided or mask-text generator's shard tables (:func:`sample_mask_guided`,
    :func:`sample_mask_text`), in shard order, into its synthetic dataset."""
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    write_collected(parts, frame, samples)


def captioned_masks(dataset: str, prompts: str, split: str) -> pd.DataFrame:
    """The rows of ``split`` with a mask (:func:`masked_rows`) and a selected caption in the generator's
    prompts table ``prompts`` (columns ``prompt``, ``prompt_id``), in the dataset's order.

    Raises:
        InputError: naming the prompts table when none of them has a caption.
    """
    rows = masked_rows(dataset, split).drop(columns=["prompt", "prompt_id"], errors="ignore")
    table = pd.read_parquet(prompts, columns=["image_id", "prompt", "prompt_id", "selected"])
    table = table[table["selected"].fillna(False) & table["prompt"].notna()].drop(columns="selected")
    found = rows.merge(table, on="image_id", how="inner", validate="one_to_one")
    if found.empty:
        raise InputError(
            f"{prompts}: no image of split '{split}' with a mask in {dataset} has a caption; a mask-text "
            "generator conditions on both (its strategies' prompts, e.g. tabular)"
        )
    return found


def train_mask_text(
    dataset: str,
    prompts: str,
    settings: MaskTextTrainSettings,
    gpus: int,
    model: str,
    report: str,
    loss: str,
    checkpoints: str,
) -> None:
    """Train DGM-VLC's mask- and text-conditioned diffusion (:func:`workflow.diffusion.mask_text.train`) on
    the training split's 2D images, masks and their captions in ``prompts`` (the generator's prompt variant),
    resuming from the newest checkpoint in ``checkpoints``; a SIGTERM saves one and stops.

    Args:
        gpus: GPUs of the job (``resources.gpu``); 0 trains on the CPU.
    """
    import time

    from workflow.common.devices import pick_device
    from workflow.common.interruption import attempt_log, stop_on_signal
    from workflow.diffusion import mask_guided, mask_text

    with attempt_log(checkpoints):
        rows = captioned_masks(dataset, prompts, "train")
        classes = len(settings.mask_classes)
        pairs = mask_guided.read_pairs(
            rows["image"].tolist(), rows["mask"].tolist(), classes, settings.resolution
        )
        device = pick_device(gpus)
        texts = mask_text.encode_captions(
            [*rows["prompt"], ""], settings.text_encoder, settings.seed, settings.max_tokens, device
        )
        architecture = mask_text.architecture(settings, 2, texts.shape[-1])
        meta = provenance(
            settings, seeds={"train": settings.seed}, inputs={"dataset": dataset, "prompts": prompts}
        )
        fingerprint = config_hash({"config": meta["config_hash"], "inputs": meta["inputs"]})
        started = time.perf_counter()
        with stop_on_signal() as stop:
            network, losses = mask_text.train(
                pairs, texts[:-1], texts[-1], architecture, settings, fingerprint, checkpoints,
                device, stop,
            )  # fmt: skip
        weights = (
            f"mask- and text-conditioned diffusion (DGM-VLC) trained from random init on {len(rows)} images, "
            f"masks and captions ({settings.steps} steps at {settings.resolution} px; frozen text encoder "
            f"{settings.text_encoder})"
        )
        trained = Trained(network, architecture, losses, time.perf_counter() - started, len(rows), weights)
        write_trained(trained, meta, {"model": model, "report": report, "loss": loss}, "mask-text diffusion")


def sample_mask_text(
    dataset: str,
    prompts: str,
    model: str,
    settings: MaskTextSampleSettings,
    gpus: int,
    shard: int,
    images: str,
    table: str,
) -> None:
    """Shard ``shard`` of the images generated once per real mask of ``settings.split`` with its own caption
    (a contiguous part of its captioned rows, ``settings.shards`` parts), seeded per image
    (:func:`workflow.diffusion.mask_text.generate`), as a table in the manifest schema
    (:func:`mask_sample_table`; ``prompt`` is the caption)."""
    import numpy as np

    from workflow.common.devices import pick_device
    from workflow.diffusion import mask_guided, mask_text

    if not 0 <= shard < settings.shards:
        raise InputError(
            f"shard {shard} is outside 0..{settings.shards - 1} (diffusion.mask_text.sample.shards)"
        )
    card = read_card(model)
    architecture = card["architecture"]
    if architecture["classes"] != len(settings.mask_classes):
        raise InputError(
            f"{model}: trained on {architecture['classes']} mask classes, dataset.mask_classes has "
            f"{len(settings.mask_classes)}; retrain the generator"
        )
    rows = captioned_masks(dataset, prompts, settings.split)
    numbers = np.array_split(np.arange(len(rows)), settings.shards)[shard]
    rows = rows.iloc[numbers].reset_index(drop=True)
    device = pick_device(gpus)
    network = mask_guided.load_model(model, architecture, device)
    texts = mask_text.encode_captions(
        [*rows["prompt"], ""],
        architecture["text_encoder"],
        architecture["text_seed"],
        architecture["max_tokens"],
        device,
    )
    contexts, null = texts[:-1], texts[-1]
    seeds = [mask_guided.image_seed(settings.seed, str(i)) for i in rows["image_id"]]
    paths = [str(Path(images) / f"{i:06d}.png") for i in numbers]
    with atomic_output(images) as tmp:
        Path(tmp).mkdir(parents=True)
        for part, masks in mask_batches(rows, architecture, settings.batch_size):
            out = mask_text.generate(
                network, masks, contexts[part], null, seeds[part], settings, architecture
            )
            for index, image in enumerate(out, part.start):
                mask_guided.to_png(image).save(Path(tmp) / Path(paths[index]).name)
    result = mask_sample_table(rows, paths, seeds, [""] * len(rows), rows["prompt"], rows["prompt_id"])
    manifest.validate(result, table)
    meta = provenance(
        settings,
        seeds={"sample": settings.seed},
        inputs={"dataset": dataset, "prompts": prompts},
        weights=card["weights"],
    )
    write_parquet(table, result, meta | {"shard": shard, "images": len(result)})
