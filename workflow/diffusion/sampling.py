"""Sharded, seeded sampling of a labelled synthetic dataset (rules ``plan_samples``, ``sample_images``,
``collect_samples``: :mod:`workflow.diffusion.stage`).

**Which prompts** (``diffusion.sample.design``). ``training-prompts``: the distinct prompts of the
generator's training table (all of them, or the ``max_prompts`` carried by the most training images),
``images_per_prompt`` images each. ``demographic``: the LoRA-fairness study's design (its
``synthetic_dataset_creation.py``): per image one finding, a sex, a race and an age drawn uniformly and
independently, captioned with ``prompts.demographics`` (:func:`demographic_design`).

**Labels.** Under ``training-prompts`` a synthetic image gets the labels and demographics of the training
images that carry its prompt: per finding, the value of those rows when they agree, the majority otherwise,
and missing (NaN, ignored like U-Ignore) on a tie or when all are missing; per text attribute (sex, race,
site, view, projection) the most common value, missing on a tie; age is the median. ``source_images`` says
how many real images the prompt came from. Under ``demographic`` the labels are the draw itself: the drawn
finding 1, every other finding 0, and ``source_images`` 0.

**Seeds.** Image ``index`` of prompt ``prompt_id`` starts from the latent noise of its own generator, seeded
with ``SeedSequence([seed, sha256(prompt_id)[:8], index])`` (:func:`workflow.common.seeding.derive_seed`). The
samplers offered (DDIM, DPM-Solver++, PNDM) are deterministic given that noise, so an image depends only on
(model, settings, seed, prompt id, index): any shard can be re-run alone and gives the same pixels.

**Shards.** Images are grouped into batches of ``batch_size`` in (prompt id, index) order, and whole
batches are dealt to ``shards`` jobs in contiguous runs, so a batch (and so every pixel, up to nothing) is the
same whatever the number of shards. With ``batch_size: auto`` the plan groups :data:`PLANNED_BATCH` images and
a GPU job samples its shard in runs as large as its free memory allows (:func:`batch_size`): faster, but the
pixels then depend on the GPU at rounding level (batched kernels); give a number for bit-identical reruns on
another GPU. A CPU job samples the planned batches.

**Solvers** (``scheduler``, ``steps``). DDIM at 50 steps (Song et al. 2021) is the papers' setting (PRISM,
RoentGen) and the default. DPM-Solver++ (Lu et al. 2022, the multistep second-order solver) at 20-25 steps
reaches the quality of DDIM-50 in about half the UNet evaluations: a *science* setting, since it changes the
images; report it as such, and compare studies only at the same solver and steps.

**Output.** PNGs under ``results/samples/<generator>/images/shard<k>/`` and
``results/samples/<generator>/manifest.parquet`` in the manifest schema (:mod:`workflow.common.manifest`) plus
``image``, ``prompt``, ``prompt_id``, ``seed``, ``split`` (always ``train``) and ``source_images``. Ids never
collide with real ones: ``image_id`` and ``patient_id`` are ``synthetic/<prompt_id>/<index>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.common.files import read_parquet_meta, write_parquet
from workflow.common.provenance import provenance
from workflow.common.seeding import derive_seed, text_key
from workflow.diffusion.latent_cache import training_rows
from workflow.diffusion.settings import SampleSettings
from workflow.prompts import strategies
from workflow.prompts.settings import CaptionSettings

TEXT_ATTRIBUTES = ("sex", "race", "site", "view", "projection")
EXTRA_COLUMNS = ["image", "prompt", "prompt_id", "seed", "split", "source_images"]
PLANNED_BATCH = 8
"""Images per planned batch with ``batch_size: auto`` (the plan is made before any GPU is seen), and per
pipeline call on a CPU."""
MEMORY_PER_IMAGE_512 = 1.5 * 2**30
"""Bytes of GPU memory one 512 px image takes while it is sampled with 16-bit weights: the UNet's
activations for both halves of classifier-free guidance and, the larger part, the VAE decoder's at full
resolution; a conservative estimate for SD 1.5 with SDPA attention. Scales with the pixels and the dtype's
size."""
MEMORY_FRACTION = 0.8  # of the free memory after the pipeline is loaded: room for the allocator and kernels
MAX_BATCH = 64  # larger batches no longer raise a GPU's throughput
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}


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
    """One row per synthetic image of the ``training-prompts`` design: its ids, prompt, labels, seed, batch
    and shard (``table``: :func:`prompt_table`)."""
    if settings.max_prompts is not None:
        table = table.sort_values(["source_images", "prompt_id"], ascending=[False, True], kind="stable")
        table = table.head(settings.max_prompts).sort_values("prompt_id", kind="stable")
    index = np.tile(np.arange(settings.images_per_prompt), len(table))
    items = table.loc[table.index.repeat(settings.images_per_prompt)].reset_index(drop=True)
    items["index"] = index
    return assign_seeds(items, settings)


def demographic_design(
    labels: Sequence[str], captions: CaptionSettings, settings: SampleSettings
) -> pd.DataFrame:
    """One row per synthetic image of the ``demographic`` design, with its ids, seed, batch and shard.

    Finding, sex, race and age are drawn uniformly and independently with a generator seeded by
    ``diffusion.sample.seed``; the prompt is ``prompts.demographics`` rendered on the draw (the study's
    template "Chest X-ray of a {age}-year-old {race} {sex} patient showing {findings}").
    """
    design = settings.design
    findings = list(design.findings or labels)
    unknown = [f for f in findings if f not in labels]
    if unknown:
        raise InputError(
            f"diffusion.sample.design.findings: {unknown} are not in dataset.labels {list(labels)}"
        )
    rng = np.random.default_rng(derive_seed(settings.seed, text_key("demographic design")))
    n = design.images
    drawn = rng.integers(len(findings), size=n)
    items = pd.DataFrame(
        {
            "sex": rng.choice(np.asarray(design.sexes, dtype=object), size=n),
            "race": rng.choice(np.asarray(design.races, dtype=object), size=n),
            "age": rng.integers(design.ages[0], design.ages[1] + 1, size=n).astype(float),
        }
    )
    for name in labels:
        items[manifest.label_column(name)] = [float(findings[k] == name) for k in drawn]
    items["prompt"] = strategies.captions(items, labels, captions, "prompts.demographics")
    items["prompt_id"] = strategies.prompt_ids(items["prompt"])
    items["source_images"] = 0
    items = items.sort_values("prompt_id", kind="stable").reset_index(drop=True)
    items["index"] = items.groupby("prompt_id").cumcount()
    return assign_seeds(items, settings)


def assign_seeds(items: pd.DataFrame, settings: SampleSettings) -> pd.DataFrame:
    """Ids, per-image seed, batch and shard of planned images, in (prompt id, index) order (see above)."""
    index = items["index"]
    items["image_id"] = [f"synthetic/{p}/{i}" for p, i in zip(items["prompt_id"], index, strict=True)]
    items["patient_id"] = items["image_id"]
    items["seed"] = [
        derive_seed(settings.seed, text_key(str(p)), int(i))
        for p, i in zip(items["prompt_id"], index, strict=True)
    ]
    planned = PLANNED_BATCH if settings.batch_size == "auto" else settings.batch_size
    items["batch"] = np.arange(len(items)) // planned
    n_batches = int(items["batch"].max()) + 1 if len(items) else 0
    items["shard"] = (items["batch"] * settings.shards) // max(n_batches, 1)
    return items


def weights_dtype(name: str, device: Any, key: str) -> Any:
    """The torch dtype of an inference job's weights setting ``name`` (config key ``key``): ``auto`` is
    float16 on a GPU, float32 on a CPU; float16 on a CPU is refused."""
    import torch

    if name == "auto":
        name = "float16" if device.type == "cuda" else "float32"
    if name == "float16" and device.type == "cpu":
        raise InputError(f"{key}: float16 needs a GPU; use float32 or bfloat16 on a CPU")
    return getattr(torch, name)


def sampling_dtype(settings: SampleSettings, device: Any) -> Any:
    """The weights' dtype of ``diffusion.sample.dtype`` (:func:`weights_dtype`)."""
    return weights_dtype(settings.dtype, device, "diffusion.sample.dtype")


def memory_batch_size(free_bytes: int, resolution: int, element_size: int) -> int:
    """Images per pipeline call that fit :data:`MEMORY_FRACTION` of ``free_bytes`` at ``resolution`` px with
    weights of ``element_size`` bytes (:data:`MEMORY_PER_IMAGE_512`), from 1 to :data:`MAX_BATCH`."""
    per_image = MEMORY_PER_IMAGE_512 * (resolution / 512) ** 2 * element_size / 2
    return int(min(MAX_BATCH, max(1, MEMORY_FRACTION * free_bytes // per_image)))


def batch_size(settings: SampleSettings, pipe: Any) -> int:
    """Images per pipeline call: ``diffusion.sample.batch_size``, or for ``auto`` what the free memory of
    the pipeline's GPU allows once it is loaded (:func:`memory_batch_size`); :data:`PLANNED_BATCH` on a
    CPU."""
    import torch

    if settings.batch_size != "auto":
        return int(settings.batch_size)
    device = pipe.unet.device
    if device.type != "cuda":
        return PLANNED_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    return memory_batch_size(free, settings.resolution, pipe.unet.dtype.itemsize)


def batches(items: pd.DataFrame, settings: SampleSettings, pipe: Any) -> list[pd.DataFrame]:
    """A shard's planned images in the pipeline calls that sample them: the plan's batches for a numeric
    ``batch_size``, runs of :func:`batch_size` images (in plan order) for ``auto``."""
    if settings.batch_size != "auto":
        return [batch for _, batch in items.groupby("batch", sort=True)]
    size = batch_size(settings, pipe)
    return [items.iloc[start : start + size] for start in range(0, len(items), size)]


def load_sampler(model: str, settings: SampleSettings, device: Any) -> Any:
    """The trained pipeline on ``device``, ready to sample fast: weights in :func:`sampling_dtype`, LoRA
    fused into the UNet (``fuse_lora``), UNet and VAE channels-last (``channels_last``), the UNet compiled
    (``compile``), SDPA attention (diffusers' default), the sampler ``scheduler``."""
    import torch

    from workflow.diffusion import saving

    pipe = saving.load_trained(model, sampling_dtype(settings, device), settings.fuse_lora).to(device)
    pipe.set_progress_bar_config(disable=True)
    if settings.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if settings.compile:
        pipe.unet.compile()
    set_scheduler(pipe, settings.scheduler)
    return pipe


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap the pipeline's sampler for ``name`` (DDIM, DPM-Solver++ or PNDM), keeping its noise schedule."""
    import diffusers

    class_name, options = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **options)


def generate(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], settings: SampleSettings) -> list[Any]:
    """Images for ``prompts`` (one per seed) with classifier-free guidance (Ho & Salimans 2022) against the
    empty prompt; each image's initial noise comes from its own seeded CPU generator.

    Prompts are encoded as in training (:func:`workflow.diffusion.base_models.encode_prompts`: truncated
    to the tokenizer's 77 tokens; the tiny model's word-level tokenizer keeps every demo prompt whole).
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


def write_collected(parts: Sequence[str], result: pd.DataFrame, samples: str) -> None:
    """The merged shard tables ``result`` as the generator's manifest ``samples``, validated, with the
    provenance of its shards (the weights as the first shard names them)."""
    manifest.validate(result, samples)
    weights = read_parquet_meta(parts[0]).get("weights", "unknown")
    meta = provenance(
        {"shards": len(parts)}, inputs={f"shard{i}": p for i, p in enumerate(parts)}, weights=weights
    )
    write_parquet(samples, result, meta | {"images": len(result)})
