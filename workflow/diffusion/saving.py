"""Fine-tuned models as ordinary diffusers artefacts: saving, loading back, and validation images.

- ``full``: a complete ``StableDiffusionPipeline`` folder (the base's VAE, text encoder, tokenizer and
  scheduler with the trained UNet; EMA weights when EMA was on), loadable with ``from_pretrained``.
- ``lora``: ``pytorch_lora_weights.safetensors`` (peft key names), loadable with
  ``pipe.load_lora_weights(folder)`` on the base model. The keys are not converted to the older diffusers
  names as ``train_text_to_image_lora.py`` does: with adapters on convolutions too, that mixed state dict
  loads only in part. The adapter config is stored in the file's
  metadata (without it diffusers loads alpha = rank), with dropout 0: dropout is for training only, and
  diffusers would otherwise leave the freshly loaded dropout layers in training mode at inference. The
  adapters are saved alone: a pipeline is never ``save_pretrained`` with a peft adapter attached (its
  attention weights would be re-initialised on load).

Both folders also hold ``synthmed_model.json`` (method, base model and where it is, which weights), which
:func:`load_trained` reads to rebuild the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workflow.common.figures import save_grid
from workflow.diffusion import base_models as sd_models
from workflow.diffusion.latent_cache import EMPTY_PROMPT, LatentCache

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from workflow.diffusion.training import TrainSettings

VALIDATION_GUIDANCE = 7.5  # SD's default classifier-free guidance scale


def save_model(
    unet: torch.nn.Module,
    ema: Any,
    settings: TrainSettings,
    base_model: str,
    location: str,
    out_dir: str,
    base_weights: str,
) -> None:
    """Save a trained UNet (``full``) or its LoRA adapters (``lora``) with the folder's description."""
    from diffusers import StableDiffusionPipeline

    if settings.method == "full":
        if ema is not None:
            ema.copy_to(unet.parameters())
        sd_models.load_pipeline(location, unet=unet).save_pretrained(out_dir)
    else:
        from peft.utils import get_peft_model_state_dict

        StableDiffusionPipeline.save_lora_weights(
            out_dir,
            unet_lora_layers=get_peft_model_state_dict(unet),
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict() | {"lora_dropout": 0.0},
            safe_serialization=True,
        )
    sd_models.describe(
        out_dir,
        {
            "method": settings.method,
            "base_model": base_model,
            "base_location": location,
            "ema": settings.ema,
            "weights": f"fine-tuned ({settings.method}) from {base_weights}",
        },
    )


def load_trained(model_dir: str, dtype: torch.dtype | None = None) -> StableDiffusionPipeline:
    """The pipeline a :func:`save_model` folder describes: the full pipeline, or the base with LoRA loaded."""
    description = sd_models.read_description(model_dir)
    if description.get("method") == "lora":
        pipe = sd_models.load_pipeline(description["base_location"], dtype=dtype)
        pipe.load_lora_weights(model_dir)
        return pipe
    return sd_models.load_pipeline(model_dir, dtype=dtype)


class Validator:
    """Validation images during training: the first ``validation_prompts`` cached prompts, one image each,
    fixed seed, DDIM with classifier-free guidance, decoded by the frozen VAE."""

    def __init__(
        self,
        location: str,
        cache: LatentCache,
        settings: TrainSettings,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        from diffusers import AutoencoderKL, DDIMScheduler

        self.vae = AutoencoderKL.from_pretrained(location, subfolder="vae", dtype=dtype).to(device)
        self.scheduler = DDIMScheduler.from_pretrained(location, subfolder="scheduler")
        count = max(1, min(settings.validation_prompts, len(cache.prompts)))
        self.embeddings = cache.embeddings[EMPTY_PROMPT + 1 : EMPTY_PROMPT + 1 + count].to(device, dtype)
        self.negative = cache.embeddings[EMPTY_PROMPT].expand_as(self.embeddings).to(device, dtype)
        self.size = cache.latent_size * 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.steps, self.seed = settings.validation_inference_steps, settings.seed

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
                torch.autocast(self.vae.device.type, enabled=self.vae.dtype != torch.float32),
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

    def grid(self, unet: torch.nn.Module, ema: Any, path: str | Path) -> None:
        """Save the validation images as one grid PNG."""
        images: Sequence[Image.Image] = self.images(unet, ema)
        save_grid(images, path, columns=len(images))
