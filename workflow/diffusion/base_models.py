"""Stable Diffusion base models: the offline tiny SD used by the demo and tests, and loading real ones.

``diffusion.base_model`` names the base model in one of three ways:

- ``tiny``: a small, randomly initialised SD with the SD-1.5 component classes, built offline from configs
  by :func:`build_tiny` (the tiny stand-in ``sd`` of :mod:`workflow.common.tiny_models`; the rules then hand
  its folder over as the base model). Its weights are random: its model card says so, every output made from
  it repeats it (:func:`workflow.common.model_card.weights_label`), and it is a plumbing check, never a
  trained model.
- a local diffusers pipeline folder (one holding ``model_index.json``);
- a Hugging Face hub id such as ``runwayml/stable-diffusion-v1-5`` (loaded on users' clusters; this needs the
  hub or its cache).

:func:`resolve_base` checks the location before anything is loaded.

The tiny tokenizer is CLIP's byte-level BPE with no merges (one token per character), built from a vocabulary
in memory; on transformers 5 ``CLIPTokenizer`` must get ``vocab=dict, merges=list`` (file arguments are
silently ignored there).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workflow.common.errors import InputError
from workflow.common.model_card import write_card

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_TOKENS = 77
TINY_NOTE = "random-init tiny SD (demo; random weights, not a trained model)"

# The tiny architecture: SD-1.5's classes, a few channels each (diffusers' own test configs, widened so that
# fine-tuning visibly lowers the loss). VAE with two blocks -> latents at half the image side.
TINY_UNET: dict[str, Any] = {
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": (16, 32),
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
}
TINY_TEXT: dict[str, Any] = {
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": MAX_TOKENS,
}
TINY_CONFIGS = (TINY_UNET, TINY_VAE, TINY_TEXT)
# SD-1.5's noise schedule (scaled-linear betas 0.00085-0.012, 1000 steps).
SD_SCHEDULE: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def char_tokenizer() -> CLIPTokenizer:
    """CLIP tokenizer with one token per byte-character (514 tokens: 256 characters, their ``</w>`` forms
    and the two specials), so the tiny model needs no downloaded vocabulary."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in bytes_to_unicode().values():
        vocab[char] = len(vocab)
        vocab[f"{char}</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def build_random(
    unet: dict[str, Any], vae: dict[str, Any], text: dict[str, Any], seed: int
) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline with random (seeded) weights from component configs, the character-level
    tokenizer and SD-1.5's noise schedule (DDIM sampler): the tiny model, or SD 1.5's architecture for
    benchmarks."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**vae),
        text_encoder=CLIPTextModel(CLIPTextConfig(**({"vocab_size": len(tokenizer)} | text))),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**unet),
        scheduler=DDIMScheduler(**SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def build_tiny(out_dir: str | Path, seed: int) -> None:
    """Build the tiny random SD pipeline (seeded) and save it as an ordinary diffusers folder."""
    build_random(*TINY_CONFIGS, seed=seed).save_pretrained(out_dir)
    write_card(out_dir, {"kind": "tiny", "seed": seed, "weights": TINY_NOTE})


def resolve_base(base_model: str) -> str:
    """Where ``from_pretrained`` finds the base model: a local diffusers folder or a hub id.

    Raises:
        InputError: naming ``diffusion.base_model`` when it is a path that is not a diffusers folder.
    """
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InputError(
                f"diffusion.base_model: folder '{base_model}' has no model_index.json; "
                "give a diffusers pipeline folder (save_pretrained), a hub id or 'tiny'"
            )
        return str(path)
    if HUB_ID.match(base_model) and not path.exists():
        return base_model
    raise InputError(
        f"diffusion.base_model: '{base_model}' is neither an existing diffusers folder nor a hub id such as "
        "'runwayml/stable-diffusion-v1-5' (for 'tiny' the rules pass the tiny stand-in's folder)"
    )


def load_pipeline(
    location: str, dtype: torch.dtype | None = None, **components: Any
) -> StableDiffusionPipeline:
    """Load a Stable Diffusion pipeline (no safety checker) from a folder or hub id, on CPU; ``components``
    (e.g. ``unet=...``) replace the saved ones.

    Raises:
        InputError: naming ``diffusion.base_model`` when the hub id cannot be loaded (e.g. offline).
    """
    from diffusers import StableDiffusionPipeline

    try:
        return StableDiffusionPipeline.from_pretrained(
            location, dtype=dtype, safety_checker=None, requires_safety_checker=False, **components
        )
    except OSError as err:
        raise InputError(
            f"diffusion.base_model: cannot load '{location}' ({err}); on an offline machine download it "
            "first (huggingface-cli download) or point base_model to a local folder"
        ) from err


def encode_prompts(pipe: StableDiffusionPipeline, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """CLIP text embeddings (last hidden state, ``(n, 77, d)``) of ``prompts``, as SD conditions on them."""
    import torch

    outputs = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            tokens = pipe.tokenizer(
                prompts[start : start + batch_size],
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            outputs.append(pipe.text_encoder(tokens.to(pipe.text_encoder.device))[0].float().cpu())
    return torch.cat(outputs)
