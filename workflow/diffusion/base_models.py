"""Stable Diffusion base models: the offline tiny SD used by the demo and tests, and loading real ones.

``diffusion.base_model`` names the base model in one of three ways:

- ``tiny``: a small SD with the SD-1.5 component classes, built offline from configs with random weights by
  :func:`build_tiny` (the tiny stand-in ``sd`` of :mod:`workflow.common.tiny_models`), whose VAE rule
  ``train_tiny_vae`` then trains on the study's training images; the rules hand that folder over as the base
  model. Its model card says which weights it holds (random UNet and text encoder, the VAE's steps and PSNR),
  and every output made from it repeats it (:func:`workflow.common.model_card.weights_label`).
- a local diffusers pipeline folder (one holding ``model_index.json``);
- a Hugging Face hub id such as ``runwayml/stable-diffusion-v1-5`` (loaded on users' clusters; this needs the
  hub or its cache).

:func:`resolve_base` checks the location before anything is loaded.

The tiny tokenizer is word-level (:func:`word_tokenizer`): one token per word, punctuation mark or digit of
the words synthmed's prompt strategies write (:data:`TINY_TEXTS`), so every prompt of the demo and the tests
fits SD's 77 tokens (the character-level one it replaces cut 27 of the demo's 82 prompts after 75
characters, so the model trained on captions that had lost findings); an unknown word becomes
``<|unk|>``. It is a ``tokenizers`` WordLevel model saved as ``tokenizer.json``, which ``from_pretrained``
loads like any SD tokenizer.

The VAE's training is :mod:`workflow.diffusion.tiny_vae`; the trained folder reaches the stages through
:func:`workflow.common.tiny_models.tiny_model_inputs`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workflow.common.errors import InputError
from workflow.common.model_card import write_card
from workflow.data.labels import CHEXPERT_LABELS
from workflow.prompts.strategies import number_words

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import PreTrainedTokenizerFast

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_TOKENS = 77
TINY_NOTE = "random-init tiny SD (demo; random weights, not a trained model)"

# The tiny architecture: SD-1.5's classes, a few channels each. The UNet (about 1M parameters) learns the
# phantoms' anatomy and findings in 800 steps, under 5 minutes on 2 CPU cores (docs/benchmarks.md); the VAE
# (about 165k parameters, no attention) has three blocks: latents at a quarter of the image side.
TINY_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
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
    "block_out_channels": (8, 16, 32),
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "mid_block_add_attention": False,
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


SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<|unk|>")  # CLIP's bos and eos (also padding), unknown
TINY_TEXTS: tuple[str, ...] = (
    *CHEXPERT_LABELS,
    # prompts.labels (PRISM) and the demo's tabular prefix
    "Chest X-ray showing",
    "Normal chest X-ray with no significant findings",
    # prompts.demographics (LoRA-fairness) and demographic values of the phantoms and the presets
    "Chest X-ray of a an year old patient showing and",
    "female male white black asian other unknown hispanic native american pacific islander",
    "site frontal lateral AP PA",
    # prompts.mep (MEP-LDM): the chest X-ray and histology templates, cluster numbers in words
    "Chest X-Ray image with morphology type",
    "Histology image of tissue normal tumor cancer",
    *(number_words(n) for n in range(100)),
    "hundred thousand",
    # prompts.tabular (DGM-VLC): its default prefix and the demo's fields
    "Lung CT scan",
    "Patient age Gender Smoking status never former current pack years",
)
"""The words of the tiny tokenizer's vocabulary: what synthmed's prompt strategies write with their default
templates and the demo's, on the phantoms. Each word enters as written, lower-cased and capitalised."""


def _pre_tokenizer() -> Any:
    """Words and the space before them (``▁word``, as sentencepiece marks it), punctuation marks and
    digits, one piece each; decoding joins the pieces back into the text exactly."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )


def word_tokenizer(texts: Sequence[str] = TINY_TEXTS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary holds every word of ``texts`` (as written, lower-cased and
    capitalised, with and without the space before it), ASCII punctuation, the digits and CLIP's special
    tokens; unknown words become ``<|unk|>``. It wraps prompts in CLIP's start and end tokens and pads with
    the end token to :data:`MAX_TOKENS`, as CLIP's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    pre_tokenizer = _pre_tokenizer()
    pieces = [*string.punctuation, *string.digits]
    for text in texts:
        pieces += [p for p, _ in pre_tokenizer.pre_tokenize_str(text)]
    vocabulary = [*SPECIAL_TOKENS, "▁"]
    for piece in pieces:
        word = piece.lstrip("▁")
        for form in (word, word.lower(), word.capitalize()):
            vocabulary += [form, f"▁{form}"]
    ids = {token: i for i, token in enumerate(dict.fromkeys(vocabulary))}
    model = Tokenizer(models.WordLevel(ids, unk_token="<|unk|>"))
    model.pre_tokenizer = pre_tokenizer
    model.decoder = decoders.Metaspace()
    bos, eos, unk = SPECIAL_TOKENS
    model.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, ids[bos]), (eos, ids[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        unk_token=unk,
        model_max_length=MAX_TOKENS,
    )


def build_random(
    unet: dict[str, Any], vae: dict[str, Any], text: dict[str, Any], seed: int
) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline with random (seeded) weights from component configs, the word-level
    tokenizer and SD-1.5's noise schedule (DDIM sampler): the tiny model, or SD 1.5's architecture for
    benchmarks."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
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
