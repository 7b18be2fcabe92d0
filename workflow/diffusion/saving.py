"""Fine-tuned models as ordinary diffusers artefacts: saving them, and loading them back for sampling.

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

Both folders also hold the model card (:mod:`workflow.common.model_card`: method, base model and where it
is, which weights), which :func:`load_trained` reads to rebuild the pipeline. Validation images during
training are :mod:`workflow.diffusion.validation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from workflow.common.files import atomic_output
from workflow.common.model_card import read_card, write_card
from workflow.diffusion import base_models

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


def save_trained(
    unet: torch.nn.Module, ema: Any, method: str, location: str, out_dir: str, base_weights: str
) -> None:
    """Save a trained UNet (``full``; with the EMA weights when ``ema`` is given) or its LoRA adapters
    (``lora``) on the base model at ``location``, with the folder's model card, atomically."""
    from diffusers import StableDiffusionPipeline

    with atomic_output(out_dir) as tmp:
        if method == "full":
            if ema is not None:
                ema.copy_to(unet.parameters())
            base_models.load_pipeline(location, unet=unet).save_pretrained(tmp)
        else:
            from peft.utils import get_peft_model_state_dict

            StableDiffusionPipeline.save_lora_weights(
                tmp,
                unet_lora_layers=get_peft_model_state_dict(unet),
                unet_lora_adapter_metadata=unet.peft_config["default"].to_dict() | {"lora_dropout": 0.0},
                safe_serialization=True,
            )
        card = {"method": method, "base_location": location, "ema": ema is not None}
        write_card(tmp, card | {"weights": f"fine-tuned ({method}) from {base_weights}"})


def load_trained(model_dir: str, dtype: torch.dtype | None = None) -> StableDiffusionPipeline:
    """The pipeline a :func:`save_trained` folder holds: the full pipeline, or the base with LoRA loaded."""
    card = read_card(model_dir)
    if card.get("method") == "lora":
        pipe = base_models.load_pipeline(card["base_location"], dtype=dtype)
        pipe.load_lora_weights(model_dir)
        return pipe
    return base_models.load_pipeline(model_dir, dtype=dtype)
