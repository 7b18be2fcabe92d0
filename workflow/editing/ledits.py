"""LEDITS++ (Brack et al., CVPR 2024, "LEDITS++: Limitless image editing using text-to-image models"): method
``ledits++``, with diffusers' :class:`~diffusers.LEditsPPPipelineStableDiffusion` on the fine-tuned
pipeline's components.

Each image is inverted on its own (edit-friendly DPM-solver++ inversion, sec. 3.1: the noise maps that
reproduce the image exactly, drawn from the edit's seed; no source caption, diffusers' default), then
sampled with semantic guidance (sec. 3.2) on edit concepts taken from the two captions: the words the target
caption adds form one concept guided towards, the words it removes one concept guided away from
(``reverse_editing_direction``); "remove Cardiomegaly" is away from "Cardiomegaly" and towards "No Finding"
when that is what the target caption says. Settings ``editing.ledits`` (``edit_guidance_scale``,
``edit_threshold``, ``skip``, ``use_intersect_mask``, diffusers' defaults) and ``editing.steps`` (the
inversion's steps after the skipped ones).

The implicit mask (sec. 3.3, ``use_intersect_mask``) intersects the noise-based mask with the edit
concept's cross-attention map at 1/4 of the latent size (16 x 16 at 512 px), which diffusers reads from the
UNet's cross-attention layers of that size: a UNet without them (the tiny demo SD) needs
``use_intersect_mask: false``. diffusers counts a concept's tokens with the tokenizer's ``return_length``,
which counts the padding (77) with the fast tokenizers of transformers 5, so the map averaged all 75 tokens
after the start token; :class:`Pipeline` counts the concept's own tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import DPMSolverMultistepScheduler, LEditsPPPipelineStableDiffusion, StableDiffusionPipeline

from workflow.common.errors import InputError
from workflow.editing.captions import word_changes

MASK_SCALE = 4
"""The implicit mask's cross-attention maps are at 1/MASK_SCALE of the latent size (diffusers)."""


class Pipeline(LEditsPPPipelineStableDiffusion):
    """diffusers' LEDITS++ pipeline with each edit concept's token count its own (module docstring)."""

    def encode_prompt(self, *args: Any, editing_prompt: str | list[str] | None = None, **kwargs: Any) -> Any:
        embeds, uncond, counts = super().encode_prompt(*args, editing_prompt=editing_prompt, **kwargs)
        if counts is not None:
            prompts = [editing_prompt] if isinstance(editing_prompt, str) else editing_prompt
            words = [len(self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
            counts = torch.tensor([n for n in words for _ in range(self.batch_size)])
        return embeds, uncond, counts


def pipeline(pipe: StableDiffusionPipeline) -> Pipeline:
    """LEDITS++ on ``pipe``'s components with the DPM-solver++ (SDE, second order) scheduler LEDITS++ uses."""
    scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="sde-dpmsolver++", solver_order=2
    )
    ledits = Pipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ledits.set_progress_bar_config(disable=True)
    return ledits


def concepts(source: str, target: str) -> list[tuple[str, bool]]:
    """The edit concepts of one edit, each ``(text, reverse)``: what the target caption adds (towards) and
    what it removes (away from), as the captions spell them."""
    added, removed = word_changes(source, target)
    return [(" ".join(words), reverse) for words, reverse in ((added, False), (removed, True)) if words]


def edit(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    source_prompts: Sequence[str],
    target_prompts: Sequence[str],
    settings: Mapping[str, Any],
    seeds: Sequence[int],
) -> torch.Tensor:
    """The edited images ``(B, 3, H, W)`` in [-1, 1] (module docstring), each from its own seed; the UNet's
    attention processors are restored afterwards.

    Raises:
        InputError: ``use_intersect_mask`` with a UNet that has no cross-attention at 1/4 of the latent size.
    """
    blocks = pipe.unet.config.down_block_types
    if settings["use_intersect_mask"] and not (len(blocks) > 2 and "CrossAttn" in blocks[2]):
        raise InputError(
            "editing.ledits.use_intersect_mask: LEDITS++'s implicit mask reads cross-attention maps at 1/4 "
            f"of the latent size, and this UNet ({list(blocks)}) has none there; set it to false"
        )
    if pipe.unet.config.sample_size is None:  # the tiny SD's; the pipeline's size checks read it
        pipe.unet.register_to_config(sample_size=images.shape[-1] // pipe.vae_scale_factor)
    ledits = pipeline(pipe)
    previous = pipe.unet.attn_processors
    edited = []
    try:
        for image, source, target, seed in zip(images, source_prompts, target_prompts, seeds, strict=True):
            found = concepts(source, target)
            if not found:
                raise InputError(f"ledits++: '{source}' -> '{target}' changes no word: nothing to edit")
            texts, reverse = zip(*found, strict=True)
            ledits.invert(
                image=((image[None].float() + 1) / 2).clamp(0, 1),
                num_inversion_steps=int(settings["steps"]),
                skip=float(settings["skip"]),
                generator=torch.Generator().manual_seed(int(seed)),
            )
            edited.append(
                ledits(
                    editing_prompt=list(texts),
                    reverse_editing_direction=list(reverse),
                    edit_guidance_scale=[float(settings["edit_guidance_scale"])] * len(texts),
                    edit_threshold=[float(settings["edit_threshold"])] * len(texts),
                    use_intersect_mask=bool(settings["use_intersect_mask"]),
                    generator=torch.Generator().manual_seed(int(seed)),
                    output_type="pt",
                ).images
            )
    finally:
        pipe.unet.set_attn_processor(previous)
    return torch.cat(edited).float() * 2 - 1
