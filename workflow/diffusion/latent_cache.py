"""Cached VAE latents and CLIP text embeddings of the training images (rule ``cache_latents``, written by
:func:`workflow.diffusion.stage.cache_latents`).

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
provenance. Training memory-maps ``posteriors`` and reads a batch's rows with one gather.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError
from workflow.common.progress import progress
from workflow.diffusion.settings import CacheSettings

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

EMPTY_PROMPT = 0  # row of the empty prompt's embedding
NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32}  # safetensors dtype names
DECODE_THREADS = min(8, os.cpu_count() or 1)  # PNG decoding and resizing release the GIL


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


def encode(
    pipe: StableDiffusionPipeline, rows: pd.DataFrame, settings: CacheSettings, device: torch.device
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The cache's tensors for the training ``rows`` (module docstring) and the distinct prompts, sorted:
    every image (and its mirror image with ``random_flip``) through the VAE, every prompt through the text
    encoder, once; the images of a batch are decoded in parallel threads."""
    import torch

    from workflow.diffusion.base_models import encode_prompts

    prompts = sorted(rows["prompt"].unique())
    embeddings = encode_prompts(pipe, ["", *prompts])
    prompt_row = {prompt: i + 1 for i, prompt in enumerate(prompts)}
    flips = 2 if settings.random_flip else 1
    posteriors = []
    load = partial(load_image, resolution=settings.resolution)
    bar = progress(total=len(rows), desc="cache_latents", unit="img")
    with torch.no_grad(), ThreadPoolExecutor(DECODE_THREADS) as pool, bar:
        for start in range(0, len(rows), settings.batch_size):
            paths = rows["image"].iloc[start : start + settings.batch_size]
            pixels = torch.stack(list(pool.map(load, paths))).to(device)
            views = [pixels, pixels.flip(-1)][:flips]
            encoded = [pipe.vae.encode(v).latent_dist.parameters.float().cpu() for v in views]
            posteriors.append(torch.stack(encoded, dim=1).half())
            bar.update(len(paths))
    tensors = {
        "posteriors": torch.cat(posteriors),
        "prompt_index": torch.tensor([prompt_row[p] for p in rows["prompt"]], dtype=torch.int64),
        "embeddings": embeddings,
    }
    return tensors, prompts


def memory_map(path: str, name: str) -> np.memmap:
    """Tensor ``name`` of a safetensors file as a read-only numpy memory map. The format: an 8-byte
    little-endian header length, a JSON header giving each tensor's dtype, shape and byte range in the data
    that follows."""
    with open(path, "rb") as file:
        length = int.from_bytes(file.read(8), "little")
        entry = json.loads(file.read(length))[name]
    return np.memmap(
        path,
        dtype=NUMPY_DTYPES[entry["dtype"]],
        mode="r",
        offset=8 + length + entry["data_offsets"][0],
        shape=tuple(entry["shape"]),
    )


@dataclass
class LatentCache:
    """A cache file opened for training: posteriors are memory-mapped (data-parallel processes share the
    page cache, none holds a copy) and a batch's rows are read with one gather; embeddings are small and
    held in memory."""

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
        self._posteriors = memory_map(self.path, "posteriors")
        self.flips: int = self._posteriors.shape[1]
        self.latent_channels: int = self._posteriors.shape[2] // 2
        self.latent_size: int = self._posteriors.shape[-1]

    def __len__(self) -> int:
        return len(self.prompt_index)

    def posteriors(self, indices: torch.Tensor) -> torch.Tensor:
        """VAE posterior parameters of rows ``indices``: (len, flips, 2 * channels, h, w), float32."""
        import torch

        return torch.from_numpy(self._posteriors[indices.numpy()].astype(np.float32))
