"""Sharded, seeded sampling of a labelled synthetic dataset (rules ``plan_samples``, ``sample_images``,
``collect_samples``).

**Which prompts.** The distinct prompts of ``results/prompts/train.parquet`` (all of them, or the
``max_prompts`` carried by the most training images), ``images_per_prompt`` images each.

**Labels.** A synthetic image gets the labels and demographics of the training images that carry its
prompt: per finding, the value of those rows when they agree, the majority otherwise, and missing (NaN,
ignored like U-Ignore) on a tie or when all are missing; per text attribute (sex, race, site, view,
projection) the most common value, missing on a tie; age is the median. ``source_images`` says how many real
images the prompt came from.

**Seeds.** Image ``index`` of prompt ``prompt_id`` starts from the latent noise of its own generator, seeded
with ``SeedSequence([seed, sha256(prompt_id)[:8], index])`` (:func:`workflow.seeding.derive_seed`). The
samplers offered (DDIM, DPM-Solver++, PNDM) are deterministic given that noise, so an image depends only on
(model, settings, seed, prompt id, index): any shard can be re-run alone and gives the same pixels.

**Shards.** Images are grouped into batches of ``batch_size`` in (prompt id, index) order, and whole
batches are dealt to ``shards`` jobs in contiguous runs, so a batch (and so every pixel, up to nothing) is the
same whatever the number of shards.

**Output.** PNGs under ``results/samples/images/shard<k>/`` and ``results/samples/manifest.parquet`` in the
manifest schema (:mod:`workflow.manifest`) plus ``image``, ``prompt``, ``prompt_id``, ``seed``, ``split``
(always ``train``) and ``source_images``. Ids never collide with real ones: ``image_id`` and ``patient_id``
are ``synthetic/<prompt_id>/<index>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.common.figures import save_png
from workflow.common.provenance import provenance, read_parquet_meta, write_parquet
from workflow.common.seeding import derive_seed, text_key
from workflow.diffusion.latent_cache import training_rows

TEXT_ATTRIBUTES = ("sex", "race", "site", "view", "projection")
EXTRA_COLUMNS = ["image", "prompt", "prompt_id", "seed", "split", "source_images"]
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}


@dataclass(frozen=True)
class SampleSettings:
    """``diffusion.sample`` plus ``diffusion.resolution`` (the config schema documents each key)."""

    seed: int
    images_per_prompt: int
    max_prompts: int | None
    shards: int
    batch_size: int
    scheduler: str
    steps: int
    guidance_scale: float
    dtype: str
    grayscale: bool
    resolution: int

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> SampleSettings:
        return cls(**settings)


def majority_label(values: pd.Series) -> float:
    """0 or 1 when the non-missing values agree or have a strict majority; NaN on a tie or none."""
    known = values.dropna()
    if known.empty or known.mean() == 0.5:
        return np.nan
    return float(known.mean() > 0.5)


def majority_text(values: pd.Series) -> Any:
    """The most common non-missing value; missing on a tie or none."""
    counts = values.dropna().value_counts()
    if counts.empty or (len(counts) > 1 and counts.iloc[0] == counts.iloc[1]):
        return pd.NA
    return counts.index[0]


def prompt_table(prompts_path: str, dataset_path: str) -> pd.DataFrame:
    """One row per distinct training prompt with its consensus labels and demographics."""
    rows = training_rows(dataset_path, prompts_path)
    labels = [manifest.label_column(n) for n in manifest.label_names(rows)]
    groups = rows.groupby("prompt_id", sort=True)
    if (groups["prompt"].nunique() > 1).any():
        bad = groups["prompt"].nunique().idxmax()
        raise InputError(f"{prompts_path}: prompt_id {bad!r} carries more than one prompt text")
    aggregations: dict[str, Any] = {"prompt": "first", "image_id": "size", "age": "median"}
    aggregations |= dict.fromkeys(TEXT_ATTRIBUTES, majority_text) | dict.fromkeys(labels, majority_label)
    table = groups.agg(aggregations).rename(columns={"image_id": "source_images"})
    return table.reset_index()


def plan(table: pd.DataFrame, settings: SampleSettings) -> pd.DataFrame:
    """One row per synthetic image: its ids, prompt, labels, seed, batch and shard."""
    if settings.max_prompts is not None:
        table = table.sort_values(["source_images", "prompt_id"], ascending=[False, True], kind="stable")
        table = table.head(settings.max_prompts).sort_values("prompt_id", kind="stable")
    index = np.tile(np.arange(settings.images_per_prompt), len(table))
    items = table.loc[table.index.repeat(settings.images_per_prompt)].reset_index(drop=True)
    items["index"] = index
    items["image_id"] = [f"synthetic/{p}/{i}" for p, i in zip(items["prompt_id"], index, strict=True)]
    items["patient_id"] = items["image_id"]
    items["seed"] = [
        derive_seed(settings.seed, text_key(str(p)), int(i))
        for p, i in zip(items["prompt_id"], index, strict=True)
    ]
    items["batch"] = np.arange(len(items)) // settings.batch_size
    n_batches = int(items["batch"].max()) + 1 if len(items) else 0
    items["shard"] = (items["batch"] * settings.shards) // max(n_batches, 1)
    return items


def write_plan(prompts_path: str, dataset_path: str, settings: SampleSettings, out: str) -> None:
    """The sampling plan of rule ``plan_samples``."""
    items = plan(prompt_table(prompts_path, dataset_path), settings)
    meta = provenance(asdict(settings), seeds={"sample": settings.seed}, inputs={"prompts": prompts_path})
    write_parquet(out, items, meta | {"images": len(items)})


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap the pipeline's sampler for ``name`` (DDIM, DPM-Solver++ or PNDM), keeping its noise schedule."""
    import diffusers

    class_name, options = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **options)


def generate(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], settings: SampleSettings) -> list[Any]:
    """Images for ``prompts`` (one per seed) with classifier-free guidance (Ho & Salimans 2022) against the
    empty prompt; each image's initial noise comes from its own seeded CPU generator.

    Prompts are encoded as in training (:func:`workflow.sd_models.encode_prompts`: truncated to the
    tokenizer's 77 tokens; the tiny model's character tokenizer keeps 75 characters).
    """
    import torch

    from workflow.diffusion.base_models import encode_prompts

    device, dtype = pipe.unet.device, pipe.unet.dtype
    embeddings = encode_prompts(pipe, list(prompts)).to(device, dtype)
    empty = encode_prompts(pipe, [""]).to(device, dtype).expand_as(embeddings)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    with torch.no_grad():
        images = pipe(
            prompt_embeds=embeddings,
            negative_prompt_embeds=empty,
            height=settings.resolution,
            width=settings.resolution,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            generator=generators,
        ).images
    return [image.convert("L") for image in images] if settings.grayscale else images


def image_path(images_dir: str, prompt_id: Any, index: int) -> str:
    """Where image ``index`` of ``prompt_id`` is written (the id made safe as a folder name)."""
    folder = re.sub(r"[^\w.-]", "_", str(prompt_id))
    return str(Path(images_dir) / folder / f"{index}.png")


def sample_shard(
    plan_path: str, model_dir: str, settings: SampleSettings, shard: int, gpus: int, images_dir: str, out: str
) -> None:
    """Generate the images of one shard of the plan and write its table (rule ``sample_images``)."""
    import torch  # torch and diffusers only here: planning and collecting need neither

    from workflow.common.devices import pick_device
    from workflow.diffusion import base_models as sd_models
    from workflow.diffusion import saving as export

    if not 0 <= shard < settings.shards:
        raise InputError(f"shard {shard} is outside 0..{settings.shards - 1} (diffusion.sample.shards)")
    device = pick_device(gpus)
    if settings.dtype == "float16" and device.type == "cpu":
        raise InputError("diffusion.sample.dtype: float16 needs a GPU; use float32 or bfloat16 on a CPU")
    items = pd.read_parquet(plan_path)
    mine = items[items["shard"] == shard].reset_index(drop=True)
    pipe = export.load_trained(model_dir, dtype=getattr(torch, settings.dtype)).to(device)
    pipe.set_progress_bar_config(disable=True)
    set_scheduler(pipe, settings.scheduler)
    Path(images_dir).mkdir(parents=True, exist_ok=True)
    paths = [image_path(images_dir, p, i) for p, i in zip(mine["prompt_id"], mine["index"], strict=True)]
    for _, batch in mine.groupby("batch", sort=True):
        images = generate(pipe, batch["prompt"].tolist(), batch["seed"].tolist(), settings)
        for row, image in zip(batch.index, images, strict=True):
            save_png(image, paths[row])
    mine["image"] = paths
    weights = sd_models.read_description(model_dir).get("weights", model_dir)
    meta = provenance(
        asdict(settings), seeds={"sample": settings.seed}, inputs={"plan": plan_path}, weights=weights
    )
    write_parquet(out, mine, meta | {"shard": shard})


def collect(parts: Sequence[str], out: str) -> None:
    """Merge the shard tables into the synthetic dataset's manifest (rule ``collect_samples``)."""
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    frame = frame.sort_values(["prompt_id", "index"], kind="stable").reset_index(drop=True)
    frame["path"] = frame["image"]
    frame["split"] = "train"
    result = pd.concat([manifest.normalise(frame, manifest.label_names(frame)), frame[EXTRA_COLUMNS]], axis=1)
    manifest.validate(result, out)
    weights = read_parquet_meta(parts[0]).get("weights", "unknown")
    meta = provenance(
        {"shards": len(parts)}, inputs={f"shard{i}": p for i, p in enumerate(parts)}, weights=weights
    )
    write_parquet(out, result, meta | {"images": len(result)})
