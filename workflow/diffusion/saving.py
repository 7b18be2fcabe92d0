"""Fine-tuned models as ordinary diffusers artefacts: saving them, and loading them back for sampling.

- ``full``: a complete ``StableDiffusionPipeline`` folder (the base's VAE, text encoder, tokenizer and
  scheduler with the trained UNet; EMA weights when EMA was on), loadable with ``from_pretrained``.
- ``lora``: ``pytorch_lora_weights.safetensors`` in the Kohya (sd-scripts) format the wider ecosystem reads:
  ``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight`` and, per module, an ``.alpha`` tensor holding
  the adapter's alpha, so every loader scales the update by alpha / rank (diffusers' ``load_lora_weights``,
  old releases such as PRISM's 0.24 included, ComfyUI, AUTOMATIC1111), convolution adapters too. Saving
  peft's own key names with alpha only in the file's metadata (the previous format) made loaders that do not
  read that metadata apply alpha = rank: a 4x weaker LoRA at rank 4, alpha 16. No dropout is saved:
  dropout is for training only. The adapters are saved alone: a pipeline is never ``save_pretrained`` with a
  peft adapter attached (its attention weights would be re-initialised on load).

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
    from pathlib import Path

    from diffusers import StableDiffusionPipeline

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def save_trained(
    unet: torch.nn.Module, ema: Any, method: str, location: str, out_dir: str, base_weights: str
) -> None:
    """Save a trained UNet (``full``; with the EMA weights when ``ema`` is given) or its LoRA adapters
    (``lora``) on the base model at ``location``, with the folder's model card, atomically."""
    with atomic_output(out_dir) as tmp:
        if method == "full":
            if ema is not None:
                ema.copy_to(unet.parameters())
            base_models.load_pipeline(location, unet=unet).save_pretrained(tmp)
        else:
            tmp.mkdir()
            save_kohya_lora(unet, tmp / LORA_WEIGHTS)
        card = {"method": method, "base_location": location, "ema": ema is not None}
        write_card(tmp, card | {"weights": f"fine-tuned ({method}) from {base_weights}"})


def save_kohya_lora(unet: torch.nn.Module, path: Path) -> None:
    """The UNet's peft LoRA adapters as a Kohya-format safetensors file with each module's alpha (module
    docstring). diffusers' converter writes alpha = rank; the adapter's own ``lora_alpha`` replaces it."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = unet.peft_config["default"]
    state = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()})
    alpha = float(config.lora_alpha)
    tensors = {k: torch.tensor(alpha) if k.endswith(".alpha") else v.contiguous() for k, v in state.items()}
    metadata = {"ss_network_dim": str(config.r), "ss_network_alpha": str(config.lora_alpha)}
    save_file(tensors, str(path), metadata=metadata)


def load_trained(
    model_dir: str, dtype: torch.dtype | None = None, fuse_lora: bool = False
) -> StableDiffusionPipeline:
    """The pipeline a :func:`save_trained` folder holds: the full pipeline, or the base with LoRA loaded;
    with ``fuse_lora`` the adapters are merged into the UNet's weights (``W + alpha / r * B A``, diffusers'
    ``fuse_lora``) and unloaded, so sampling runs the plain UNet without the adapters' extra matmuls."""
    card = read_card(model_dir)
    if card.get("method") == "lora":
        pipe = base_models.load_pipeline(card["base_location"], dtype=dtype)
        pipe.load_lora_weights(model_dir)
        if fuse_lora:
            pipe.fuse_lora()
            pipe.unload_lora_weights()
        return pipe
    return base_models.load_pipeline(model_dir, dtype=dtype)


def load_tokenizer(model_dir: str) -> Any:
    """The tokenizer of a :func:`save_trained` folder (the base model's for ``lora``) alone, without the
    pipeline's weights: for jobs that only need to know how captions are tokenized."""
    from transformers import AutoTokenizer

    card = read_card(model_dir)
    location = card["base_location"] if card.get("method") == "lora" else model_dir
    return AutoTokenizer.from_pretrained(location, subfolder="tokenizer")
