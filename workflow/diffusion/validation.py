"""Validation images during fine-tuning (rule ``finetune_sd``): a fixed-seed grid of the first prompts.

The grid shows, at chosen steps and at the end, what the model generates for the first ``prompts`` training
prompts, one image each, with DDIM and classifier-free guidance (Ho & Salimans 2022) at SD's default scale,
decoded by the frozen VAE. It reads the prompts' cached text embeddings, so no text encoder is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workflow.common.figures import save_grid
from workflow.diffusion.latent_cache import EMPTY_PROMPT, LatentCache

if TYPE_CHECKING:
    from PIL import Image

VALIDATION_GUIDANCE = 7.5  # SD's default classifier-free guidance scale


class Validator:
    """Validation images of the first ``prompts`` cached prompts after ``steps`` DDIM steps from ``seed``."""

    def __init__(
        self,
        location: str,
        cache: LatentCache,
        prompts: int,
        steps: int,
        seed: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        from diffusers import AutoencoderKL, DDIMScheduler

        self.vae = AutoencoderKL.from_pretrained(location, subfolder="vae", dtype=dtype).to(device)
        self.scheduler = DDIMScheduler.from_pretrained(location, subfolder="scheduler")
        count = max(1, min(prompts, len(cache.prompts)))
        self.embeddings = cache.embeddings[EMPTY_PROMPT + 1 : EMPTY_PROMPT + 1 + count].to(device, dtype)
        self.negative = cache.embeddings[EMPTY_PROMPT].expand_as(self.embeddings).to(device, dtype)
        self.size = cache.latent_size * 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.steps, self.seed = steps, seed

    def images(self, unet: torch.nn.Module, ema: Any) -> list[Image.Image]:
        """One image per validation prompt from ``unet`` (with the EMA weights swapped in, if any)."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        if ema is not None:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
        unet.eval()
        try:
            with (
                torch.no_grad(),
                torch.autocast(
                    self.vae.device.type, dtype=self.vae.dtype, enabled=self.vae.dtype != torch.float32
                ),
            ):
                return pipe(
                    prompt_embeds=self.embeddings,
                    negative_prompt_embeds=self.negative,
                    height=self.size,
                    width=self.size,
                    num_inference_steps=self.steps,
                    guidance_scale=VALIDATION_GUIDANCE,
                    generator=torch.Generator().manual_seed(self.seed),
                ).images
        finally:
            unet.train()
            if ema is not None:
                ema.restore(unet.parameters())

    def grid(self, unet: torch.nn.Module, ema: Any, path: str | Path) -> list[Image.Image]:
        """Save the validation images as one grid PNG; return them."""
        images: list[Image.Image] = self.images(unet, ema)
        save_grid(images, path, columns=len(images))
        return images
