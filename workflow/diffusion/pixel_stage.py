"""The rules of the pixel-diffusion generators, file to file (re-exported by :mod:`workflow.diffusion.stage`,
whose functions the scripts call): segmentation-guided diffusion (kind ``mask-guided``,
:mod:`workflow.diffusion.mask_guided`) and DGM-VLC (kind ``mask-text``, :mod:`workflow.diffusion.mask_text`).

Files written (atomically, with provenance), per generator:

- ``results/models/<generator>/``: ``model/`` (MONAI UNet weights and the card with its architecture),
  ``train_report.json`` and ``loss.png`` (:func:`train_mask_guided`, :func:`train_mask_text`);
- ``results/samples/<generator>/``: the images sampled once per real mask of a split, ``shards/<k>.parquet``
  and ``images/masks<k>/`` (:func:`sample_mask_guided`, :func:`sample_mask_text`: with its caption), and
  ``manifest.parquet`` (:func:`collect_mask_guided`).

A mask-text generator's difference maps (``results/differences/<generator>/``) are
:mod:`workflow.diffusion.differences`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.common.files import atomic_output, write_parquet
from workflow.common.model_card import read_card, write_card
from workflow.common.provenance import config_hash, provenance
from workflow.diffusion import sampling
from workflow.diffusion.settings import (
    MaskGuidedSampleSettings,
    MaskGuidedTrainSettings,
    MaskTextSampleSettings,
    MaskTextTrainSettings,
)

if TYPE_CHECKING:
    import torch

    from workflow.diffusion import mask_guided

MASK_COLUMNS = ["source_image_id", "dropped_classes"]
"""Columns of a mask-guided generator's samples beyond the SD ones: the real image whose mask conditioned
each image, and the classes its conditioning left out."""


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
    import torch

    from workflow.common.devices import pick_device
    from workflow.diffusion import mask_guided

    card = checked_card(model, settings.mask_classes)
    architecture = card["architecture"]
    rows, numbers = shard_rows(
        masked_rows(dataset, settings.split), shard, settings.shards, "diffusion.mask_guided.sample.shards"
    )
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
    sampling.write_collected(parts, frame, samples)


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


def captioned_volumes(dataset: str, prompts: str, split: str) -> pd.DataFrame:
    """One row per volume of ``split`` (volumes adapter: column ``volume_id``) with a label volume and a
    captioned slice (:func:`captioned_masks`), in the dataset's order: its first captioned slice's row, whose
    ``path`` is the volume, ``mask_path`` the label volume, ``window_low``/``window_high`` its intensity
    window and ``prompt`` the caption (a volume's tabular fields, and so its tabular caption, are the same on
    every slice).

    Raises:
        InputError: naming the dataset when it has no volumes (spatial_dims 3 needs the volumes adapter).
    """
    rows = captioned_masks(dataset, prompts, split)
    if "volume_id" not in rows or rows["volume_id"].isna().any() or rows["mask_path"].isna().any():
        raise InputError(
            f"{dataset}: diffusion.mask_text.train.spatial_dims 3 needs volumes and label volumes "
            "(dataset.adapter volumes with a label_volume column); use spatial_dims 2 for 2D images"
        )
    return rows.drop_duplicates("volume_id").reset_index(drop=True)


def read_volumes(
    volumes: pd.DataFrame, classes: int, shape: Sequence[int] | None, reader: str
) -> tuple[mask_guided.Pairs, list[Any]]:
    """The volumes and label volumes of ``volumes`` (rows of :func:`captioned_volumes`) in memory, read with
    ``reader`` (``dataset.volumes.reader``), windowed and resampled to ``shape``
    (:func:`workflow.diffusion.mask_text.read_volume_pair`), and their affines.

    Raises:
        InputError: naming ``diffusion.mask_text.train.volume_shape`` when the volumes' grids differ and no
            shape is set.
    """
    import torch

    from workflow.diffusion import mask_text
    from workflow.diffusion.mask_guided import Pairs

    read = [
        mask_text.read_volume_pair(
            row.path, row.mask_path, classes, (row.window_low, row.window_high), shape, reader
        )
        for row in volumes.itertuples()
    ]
    shapes = {tuple(mask.shape) for _, mask, _ in read}
    if len(shapes) > 1:
        raise InputError(
            f"the volumes have different grids {sorted(shapes)}; set diffusion.mask_text.train.volume_shape "
            "to resample them onto one"
        )
    images, masks, affines = zip(*read, strict=True)
    return Pairs(torch.stack(images), torch.stack(masks)), list(affines)


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
    the training split's captions in ``prompts`` (the generator's prompt variant) and its 2D images and masks
    or, with ``spatial_dims`` 3, its volumes and label volumes (:func:`captioned_volumes`), resuming from the
    newest checkpoint in ``checkpoints``; a SIGTERM saves one and stops.

    Args:
        gpus: GPUs of the job (``resources.gpu``); 0 trains on the CPU.
    """
    import time

    from workflow.common.devices import pick_device
    from workflow.common.interruption import attempt_log, stop_on_signal
    from workflow.diffusion import mask_guided, mask_text

    with attempt_log(checkpoints):
        classes = len(settings.mask_classes)
        if settings.spatial_dims == 3:
            rows = captioned_volumes(dataset, prompts, "train")
            pairs, _ = read_volumes(rows, classes, settings.volume_shape, settings.volume_reader)
            size = "x".join(map(str, pairs.masks.shape[1:])) + " voxels"
        else:
            rows = captioned_masks(dataset, prompts, "train")
            pairs = mask_guided.read_pairs(
                rows["image"].tolist(), rows["mask"].tolist(), classes, settings.resolution
            )
            size = f"{settings.resolution} px"
        device = pick_device(gpus)
        texts = mask_text.encode_captions(
            [*rows["prompt"], ""], settings.text_encoder, settings.seed, settings.max_tokens, device
        )
        architecture = mask_text.architecture(settings, settings.spatial_dims, texts.shape[-1])
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
        what = "volumes, label volumes" if settings.spatial_dims == 3 else "images, masks"
        weights = (
            f"mask- and text-conditioned diffusion (DGM-VLC) trained from random init on {len(rows)} {what} "
            f"and captions ({settings.steps} steps at {size}; frozen text encoder {settings.text_encoder})"
        )
        trained = Trained(network, architecture, losses, time.perf_counter() - started, len(rows), weights)
        write_trained(trained, meta, {"model": model, "report": report, "loss": loss}, "mask-text diffusion")


def checked_card(model: str, mask_classes: Sequence[str]) -> dict[str, Any]:
    """The model card of a pixel generator ``model``.

    Raises:
        InputError: naming the model when it was trained on another number of mask classes.
    """
    card = read_card(model)
    classes = card["architecture"]["classes"]
    if classes != len(mask_classes):
        raise InputError(
            f"{model}: trained on {classes} mask classes, dataset.mask_classes has {len(mask_classes)}; "
            "retrain the generator"
        )
    return card


def shard_rows(rows: pd.DataFrame, shard: int, shards: int, key: str) -> tuple[pd.DataFrame, Any]:
    """Shard ``shard`` of ``shards`` contiguous parts of ``rows``, and its row numbers.

    Raises:
        InputError: naming ``key`` (the shards setting) when ``shard`` is not one of them.
    """
    import numpy as np

    if not 0 <= shard < shards:
        raise InputError(f"shard {shard} is outside 0..{shards - 1} ({key})")
    numbers = np.array_split(np.arange(len(rows)), shards)[shard]
    return rows.iloc[numbers].reset_index(drop=True), numbers


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
    (:func:`mask_sample_table`; ``prompt`` is the caption). A 3D model generates once per volume instead
    (:func:`sample_volumes`): a row's ``path`` is then the generated NIfTI, while ``slice_index``,
    ``volume_shape`` and ``affine`` stay the real slice's (its place in the real volume's grid; the generated
    grid is the NIfTI's own header)."""
    from workflow.common.devices import pick_device
    from workflow.diffusion import mask_guided, mask_text

    card = checked_card(model, settings.mask_classes)
    architecture = card["architecture"]
    device = pick_device(gpus)
    network = mask_guided.load_model(model, architecture, device)
    if architecture["spatial_dims"] == 3:
        rows = captioned_volumes(dataset, prompts, settings.split)
    else:
        rows = captioned_masks(dataset, prompts, settings.split)
    rows, numbers = shard_rows(rows, shard, settings.shards, "diffusion.mask_text.sample.shards")
    texts = mask_text.encode_captions(
        [*rows["prompt"], ""],
        architecture["text_encoder"],
        architecture["text_seed"],
        architecture["max_tokens"],
        device,
    )
    contexts, null = texts[:-1], texts[-1]
    seeds = [mask_guided.image_seed(settings.seed, str(i)) for i in rows["image_id"]]
    with atomic_output(images) as tmp:
        Path(tmp).mkdir(parents=True)
        if architecture["spatial_dims"] == 3:
            slices = captioned_masks(dataset, prompts, settings.split)
            rows, paths, seeds = sample_volumes(
                network,
                rows.assign(number=numbers),
                slices,
                (contexts, null),
                seeds,
                settings,
                architecture,
                (tmp, images),
            )
        else:
            paths = [str(Path(images) / f"{i:06d}.png") for i in numbers]
            for part, masks in mask_batches(rows, architecture, settings.batch_size):
                out = mask_text.generate(
                    network, masks, contexts[part], null, seeds[part], settings, architecture
                )
                for index, image in enumerate(out, part.start):
                    mask_guided.to_png(image).save(Path(tmp) / Path(paths[index]).name)
    result = mask_sample_table(rows, paths, seeds, [""] * len(rows), rows["prompt"], rows["prompt_id"])
    if architecture["spatial_dims"] == 3:
        result["path"] = rows["generated_volume"].to_numpy()
    manifest.validate(result, table)
    meta = provenance(
        settings,
        seeds={"sample": settings.seed},
        inputs={"dataset": dataset, "prompts": prompts},
        weights=card["weights"],
    )
    write_parquet(table, result, meta | {"shard": shard, "images": len(result)})


def sample_volumes(
    network: torch.nn.Module,
    volumes: pd.DataFrame,
    slices: pd.DataFrame,
    texts: tuple[torch.Tensor, torch.Tensor],
    seeds: Sequence[int],
    settings: MaskTextSampleSettings,
    architecture: dict[str, Any],
    folders: tuple[str | Path, str],
) -> tuple[pd.DataFrame, list[str], list[int]]:
    """Generate one volume per row of ``volumes`` (rows of :func:`captioned_volumes`; ``texts``: their
    caption embeddings and the empty caption's) from its label volume and its seed, one volume at a time
    (its windows batched, ``window_batch_size``), into ``folders`` (the folder being written, and the name it
    will have): ``<n>.nii.gz`` (``n``: its column ``number``, the volume's place in the split) in Hounsfield
    units (or the modality's units) through the real volume's window, with its affine
    (:func:`workflow.diffusion.mask_text.save_volume`), and, for every real slice in ``slices`` of that
    volume, the generated volume's slice at the same place as a PNG made as the real one was
    (:func:`workflow.diffusion.mask_text.slice_image`).

    Returns:
        The real slice rows the images stand for (with ``generated_volume``, the NIfTI's final path), the
        images' final paths and their volumes' seeds; none for a shard without volumes.
    """
    from workflow.diffusion import mask_text

    written, final = Path(folders[0]), Path(folders[1])
    contexts, null = texts
    shape = architecture.get("volume_shape")
    rows, paths, slice_seeds = [], [], []
    for number, volume in enumerate(volumes.itertuples()):
        pairs, affines = read_volumes(
            volumes.iloc[[number]], architecture["classes"], shape, settings.volume_reader
        )
        _, masks = pairs.batch(slice(None))
        generated = mask_text.generate(
            network, masks, contexts[[number]], null, [seeds[number]], settings, architecture
        )[0, 0].numpy()
        name = f"{volume.number:06d}"
        window = (volume.window_low, volume.window_high)
        mask_text.save_volume(generated, window, affines[0], str(written / f"{name}.nii.gz"))
        own = slices[slices["volume_id"] == volume.volume_id]
        for row in own.itertuples():
            image = mask_text.slice_image(generated, row, settings.resolution, settings.fit)
            path = f"{name}_slice{int(row.slice_index):04d}.png"
            image.save(written / path)
            paths.append(str(final / path))
        rows.append(own.assign(generated_volume=str(final / f"{name}.nii.gz")))
        slice_seeds += [seeds[number]] * len(own)
    if not rows:  # more shards than volumes
        return slices.iloc[:0].assign(generated_volume=pd.Series(dtype="string")), [], []
    return pd.concat(rows, ignore_index=True), paths, slice_seeds
