"""Cached VAE latents and CLIP text embeddings of the training images (rule ``cache_latents``).

The VAE and the text encoder are frozen in both fine-tuning methods, so encoding every image and prompt once
saves their FLOPs in every epoch (diffusers' ``train_text_to_image.py`` encodes them on the fly at every
step): the training step then runs the UNet only.

What is cached is the VAE *posterior* (mean and log-variance, ``DiagonalGaussianDistribution.parameters``),
not one latent: each training step draws ``z ~ N(mean, var)`` with its own seed, exactly as diffusers'
``vae.encode(x).latent_dist.sample()`` does. Images are resized on the short side and centre-cropped to
``diffusion.resolution`` (random crops are not cached; diffusers' default is the centre crop too).

Random horizontal flips (``diffusion.cache.random_flip``) cannot be applied to cached latents exactly, so the
cache then holds the posterior of the image *and* of its mirror image, and each step picks one at random: the
same distribution as diffusers' ``--random_flip`` (which flips the pixels before encoding), at twice the cache
size. It is off by default because mirroring a chest X-ray moves the heart to the right (dextrocardia).

File: one safetensors file with ``posteriors`` (n, flips, 2 * latent channels, h, w; float16),
``prompt_index`` (n; row of ``embeddings``) and ``embeddings`` (1 + prompts, 77, d; float32; row 0 is the
empty prompt, used for caption dropout); the metadata hold the prompts, the VAE scaling factor and the
provenance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError
from workflow.common.provenance import atomic_path, config_hash, provenance
from workflow.diffusion import base_models as sd_models

if TYPE_CHECKING:
    import torch

EMPTY_PROMPT = 0  # row of the empty prompt's embedding


def training_rows(dataset_path: str, prompts_path: str) -> pd.DataFrame:
    """The training images: the ``selected`` rows of ``results/prompts/train.parquet`` (those with a prompt,
    after balancing) with their prompt, prompt id and the dataset row (PNG, labels, demographics)."""
    prompts = pd.read_parquet(prompts_path, columns=["image_id", "prompt", "prompt_id", "selected"])
    prompts = prompts[prompts["selected"].fillna(False) & prompts["prompt"].notna()].drop(columns="selected")
    images = pd.read_parquet(dataset_path).drop(columns=["prompt", "prompt_id"], errors="ignore")
    rows = prompts.merge(images, on="image_id", how="left", validate="one_to_one")
    missing = rows["image"].isna()
    if missing.any():
        raise InputError(
            f"{prompts_path}: image_id '{rows.loc[missing, 'image_id'].iloc[0]}' is not in {dataset_path}"
        )
    if rows.empty:
        raise InputError(f"{prompts_path} has no rows: there is nothing to fine-tune on")
    return rows.sort_values("image_id", kind="stable").reset_index(drop=True)


def load_image(path: str, resolution: int) -> torch.Tensor:
    """An image as SD's VAE expects it: RGB, short side resized and centre-cropped to ``resolution``,
    values in [-1, 1], shape (3, resolution, resolution)."""
    import torch
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    scale = resolution / min(rgb.size)
    size = (max(resolution, round(rgb.width * scale)), max(resolution, round(rgb.height * scale)))
    rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    rgb = rgb.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def build(
    dataset_path: str,
    prompts_path: str,
    base_model: str,
    tiny_dir: str | None,
    settings: Mapping[str, Any],
    gpus: int,
    out_path: str,
) -> None:
    """Encode every training image (and its mirror image with ``random_flip``) and every prompt once.

    Args:
        settings: ``resolution``, ``random_flip`` and ``batch_size`` (see the config schema).
        gpus: GPUs of the job (``resources.gpu``); 0 encodes on the CPU.
    """
    import torch
    from safetensors.torch import save_file

    from workflow.common.devices import pick_device

    location = sd_models.resolve_base(base_model, tiny_dir)
    rows = training_rows(dataset_path, prompts_path)
    device = pick_device(gpus)
    pipe = sd_models.load_pipeline(location, unet=None).to(device)  # only the VAE and text encoder run
    prompts = sorted(rows["prompt"].unique())
    embeddings = sd_models.encode_prompts(pipe, ["", *prompts])
    prompt_row = {prompt: i + 1 for i, prompt in enumerate(prompts)}
    flips = 2 if settings["random_flip"] else 1
    posteriors = []
    with torch.no_grad():
        for start in range(0, len(rows), settings["batch_size"]):
            paths = rows["image"].iloc[start : start + settings["batch_size"]]
            pixels = torch.stack([load_image(p, settings["resolution"]) for p in paths]).to(device)
            views = [pixels, pixels.flip(-1)][:flips]
            encoded = [pipe.vae.encode(v).latent_dist.parameters.float().cpu() for v in views]
            posteriors.append(torch.stack(encoded, dim=1).half())
    inputs = {"dataset": dataset_path, "prompts": prompts_path}
    meta = provenance(settings | {"base_model": base_model}, inputs=inputs)
    meta["weights"] = sd_models.weights_note(base_model, location)
    meta["cache_id"] = config_hash({"config": meta["config_hash"], "inputs": meta["inputs"]})
    tensors = {
        "posteriors": torch.cat(posteriors),
        "prompt_index": torch.tensor([prompt_row[p] for p in rows["prompt"]], dtype=torch.int64),
        "embeddings": embeddings,
    }
    header = {
        "provenance": json.dumps(meta),
        "prompts": json.dumps(prompts),
        "image_ids": json.dumps(rows["image_id"].tolist()),
        "scaling_factor": str(pipe.vae.config.scaling_factor),
    }
    with atomic_path(out_path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


@dataclass
class LatentCache:
    """A cache file opened for training: posteriors are read row by row (memory-mapped, so data-parallel
    processes do not each hold a copy); embeddings are small and held in memory."""

    path: str

    def __post_init__(self) -> None:
        from safetensors import safe_open

        self._file = safe_open(self.path, framework="pt")
        header = self._file.metadata()
        self.provenance: dict[str, Any] = json.loads(header["provenance"])
        self.prompts: list[str] = json.loads(header["prompts"])
        self.scaling_factor = float(header["scaling_factor"])
        self.embeddings: torch.Tensor = self._file.get_tensor("embeddings")
        self.prompt_index: torch.Tensor = self._file.get_tensor("prompt_index")
        self._posteriors = self._file.get_slice("posteriors")
        self.flips: int = self._posteriors.get_shape()[1]
        self.latent_size: int = self._posteriors.get_shape()[-1]

    def __len__(self) -> int:
        return len(self.prompt_index)

    def posteriors(self, indices: torch.Tensor) -> torch.Tensor:
        """VAE posterior parameters of rows ``indices``: (len, flips, 2 * channels, h, w), float32."""
        import torch

        return torch.cat([self._posteriors[i : i + 1] for i in indices.tolist()]).float()
