"""DINO CLS-token embeddings of images, batched, for MEP-LDM's morphology clusters.

MEP-LDM (Osorio et al., Diagnostics 2024; ``dataset-to-tokens``) embeds every image with DINO v1 ViT-B/8
(``facebook/dino-vitb8``; Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
ICCV 2021) and keeps the CLS token of the last hidden state, ``last_hidden_state[:, 0]`` (768-d, not
normalised). As there, the model's own image processor resizes and normalises; unlike there, it receives
8-bit PIL images, so pixels are rescaled to [0, 1] exactly once (MEP passes [0, 1] floats, which the
processor divides by 255 again; seeds_spec 2.2). Images are decoded and processed by DataLoader worker
processes while the main process runs the model on the device it is given (the GPU when the job has one),
in float32.

``prompts.mep.model`` is a hub id (loaded with ``AutoModel``/``AutoImageProcessor`` on a machine that can
reach the hub), a local folder in the same layout, or ``tiny``: :func:`build_tiny` writes a randomly
initialised ViT (hidden size 32, 2 layers, patch 8, 32 px) for the demo and the tests
(:mod:`workflow.common.tiny_models`). Its model card says so, and every output records which weights were
used (:func:`workflow.common.model_card.weights_label`), so random weights are never mistaken for DINO.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, AutoModel, ViTConfig, ViTImageProcessor, ViTModel

from workflow.common.errors import InputError
from workflow.common.image_files import ImageFiles
from workflow.common.model_card import write_card
from workflow.prompts.outliers import FEATURES, image_features

log = logging.getLogger(__name__)

TINY_WEIGHTS = "random-init tiny ViT (demo)"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_VIT: dict[str, int] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
    "image_size": 32,
}


def dino_vitb8_config() -> ViTConfig:
    """The architecture of ``facebook/dino-vitb8`` (ViT-B/8 at 224 px), for offline benchmarks."""
    return ViTConfig(patch_size=8, image_size=224)


def image_processor(size: int) -> ViTImageProcessor:
    """DINO's preprocessing: bilinear resize to ``size`` x ``size``, x/255, ImageNet mean and std."""
    return ViTImageProcessor(
        size={"height": size, "width": size}, resample=2, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )


def build_tiny(out_dir: str | Path, seed: int) -> None:
    """Save a randomly initialised tiny ViT (seeded), its image processor and a card saying so."""
    torch.manual_seed(seed)
    model = ViTModel(ViTConfig(**TINY_VIT))
    model.save_pretrained(out_dir)
    image_processor(TINY_VIT["image_size"]).save_pretrained(out_dir)
    write_card(out_dir, {"weights": TINY_WEIGHTS, "seed": seed, "architecture": TINY_VIT})


def load(model: str) -> tuple[torch.nn.Module, Any]:
    """The model (eval mode) and its image processor from a hub id or local folder."""
    try:
        processor = AutoImageProcessor.from_pretrained(model)
        network = AutoModel.from_pretrained(model)
    except OSError as err:
        raise InputError(
            f"prompts.mep.model = '{model}' could not be loaded ({err}). Give a Hugging Face hub id "
            "(the machine needs hub access or a filled cache), a local model folder, or 'tiny'"
        ) from None
    return network.eval(), processor


def load_item(processor: Any, item: tuple[str, str | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """One image as the processor's ``pixel_values`` and, when a second path is given, MEP's outlier
    features of that file (empty otherwise)."""
    path, feature_path = item
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    pixels = processor(images=rgb, return_tensors="pt")["pixel_values"][0]
    if feature_path is None:
        return pixels, torch.empty(0, dtype=torch.float64)
    features = image_features(feature_path)
    return pixels, torch.tensor([features[name] for name in FEATURES], dtype=torch.float64)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


@torch.inference_mode()
def embed(
    network: torch.nn.Module,
    processor: Any,
    paths: Sequence[str],
    *,
    device: torch.device,
    batch_size: int,
    threads: int,
    feature_paths: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """CLS tokens (N x hidden, float32) of ``paths``, in order, and the outlier features if asked for.

    Args:
        network: a ViT-like model returning ``last_hidden_state``.
        processor: its image processor (given 8-bit PIL images).
        paths: image files.
        device: where the model runs (:func:`workflow.common.devices.pick_device`).
        batch_size: images per forward pass.
        threads: CPU threads of the job: ``threads - 1`` DataLoader worker processes decode images while
            the main process runs the model (with ``threads`` intra-op threads when on the CPU).
        feature_paths: files to compute MEP's outlier features on (one per image), or None.
    """
    torch.set_num_threads(max(threads, 1))
    workers = max(threads - 1, 0)
    network = network.to(device)
    items = list(zip(paths, feature_paths or [None] * len(paths), strict=True))
    loader = DataLoader(
        ImageFiles(items, functools.partial(load_item, processor)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_one_thread if workers else None,
    )
    tokens, features = [], []
    for pixels, extra in loader:
        hidden = network(pixel_values=pixels.to(device, non_blocking=True)).last_hidden_state
        tokens.append(hidden[:, 0].float().cpu().numpy())
        features.append(extra.numpy())
    matrix = np.concatenate(tokens) if tokens else np.empty((0, network.config.hidden_size), np.float32)
    log.info("embedded %d images on %s", len(matrix), device)
    if feature_paths is None:
        return matrix, None
    return matrix, (np.concatenate(features) if features else np.empty((0, len(FEATURES))))
