"""Editing methods: one function per ``editing.methods`` entry, all with one signature, and their output.

A method gets the fine-tuned pipeline (:func:`workflow.diffusion.saving.load_trained`), a batch of source
images ``(B, 3, H, W)`` in [-1, 1] on the pipeline's device, per image the source and target caption and the
words that change, its settings (:meth:`workflow.editing.settings.EditSettings.method_settings`) each
edit's seed (from the plan: an edit's pixels do not depend on the batch it is in) and the stage's
:class:`~workflow.editing.inversion.InversionCache` (or None; methods that do not invert ignore it), and
returns an :class:`EditOutput`. The stage (:mod:`workflow.editing.stage`) looks methods up in
:data:`METHODS` by their config name; DDIM inversion and prompt-to-prompt (``ddim-p2p``, ``null-text-p2p``)
and LEDITS++ (``ledits++``) are registered here beside ``sdedit``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

    from workflow.editing.inversion import InversionCache


@dataclass(frozen=True)
class EditOutput:
    """What a method returns: the edited images and, for methods that invert, the null edit (source caption
    to source caption: the inversion's reconstruction), both ``(B, 3, H, W)`` float in [-1, 1]."""

    edited: torch.Tensor
    reconstruction: torch.Tensor | None


def sdedit(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    source_prompts: list[str],
    target_prompts: list[str],
    edit_words: list[list[str]],
    settings: Mapping[str, Any],
    seeds: Sequence[int],
    cache: InversionCache | None = None,
) -> EditOutput:
    """SDEdit (Meng et al., ICLR 2022, sec. 3): noise each source latent to ``strength`` of the schedule
    (eq. 2's forward process) and denoise it with the target caption under classifier-free guidance (Ho &
    Salimans 2022) against the empty prompt, with DDIM (Song et al. 2021), via diffusers'
    ``StableDiffusionImg2ImgPipeline`` on the fine-tuned pipeline's components. Image ``i`` of the batch is
    noised from its own generator seeded with its edit's seed. No inversion, so no reconstruction;
    the source captions, edit words and ``cache`` are not used.
    """
    import torch
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    from workflow.diffusion.base_models import encode_prompts

    if pipe.unet.config.sample_size is None:  # the tiny SD's; the img2img pipeline's checks compare it
        pipe.unet.register_to_config(sample_size=images.shape[-1] // pipe.vae_scale_factor)
    components = pipe.components | {"scheduler": DDIMScheduler.from_config(pipe.scheduler.config)}
    img2img = StableDiffusionImg2ImgPipeline(**components)
    img2img.set_progress_bar_config(disable=True)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    embeddings = encode_prompts(pipe, list(target_prompts)).to(device, dtype)
    empty = encode_prompts(pipe, [""]).to(device, dtype).expand_as(embeddings)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    with torch.no_grad():
        edited = img2img(
            image=(images.to(device, dtype) + 1) / 2,
            prompt_embeds=embeddings,
            negative_prompt_embeds=empty,
            strength=settings["strength"],
            num_inference_steps=settings["steps"],
            guidance_scale=settings["guidance_scale"],
            generator=generators,
            output_type="pt",
        ).images
    return EditOutput(edited=edited.float() * 2 - 1, reconstruction=None)


def prompt_to_prompt(null_text: bool) -> Callable[..., EditOutput]:
    """The methods that invert, then edit with prompt-to-prompt (Hertz et al. 2022;
    :func:`workflow.editing.p2p.edit`), with :func:`sdedit`'s signature. ``ddim-p2p``: plain DDIM inversion
    (Song et al. 2021) with the empty prompt as the unconditional embedding at every step, the cheap ablation
    of ``null-text-p2p`` (PRISM, LANCE): null-text inversion (Mokady et al. 2023, Alg. 1), whose optimised
    unconditional embeddings keep the reconstruction on the source at guidance above 1. Both are
    deterministic (``seeds`` are unused), invert through ``cache`` (``ddim-p2p`` and ``null-text-p2p`` share
    its DDIM trajectories) and return the null edit as the reconstruction."""

    def method(
        pipe: StableDiffusionPipeline,
        images: torch.Tensor,
        source_prompts: list[str],
        target_prompts: list[str],
        edit_words: list[list[str]],
        settings: Mapping[str, Any],
        seeds: Sequence[int],
        cache: InversionCache | None = None,
    ) -> EditOutput:
        from workflow.editing import p2p

        edited, reconstruction = p2p.edit(
            pipe, images, source_prompts, target_prompts, edit_words, settings, null_text, cache
        )
        return EditOutput(edited=edited, reconstruction=reconstruction)

    return method


def ledits_pp(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    source_prompts: list[str],
    target_prompts: list[str],
    edit_words: list[list[str]],
    settings: Mapping[str, Any],
    seeds: Sequence[int],
    cache: InversionCache | None = None,
) -> EditOutput:
    """LEDITS++ (Brack et al. 2024) with diffusers' pipeline (:mod:`workflow.editing.ledits`): each image
    inverted and edited from its own seed, towards the words the target caption adds and away from those it
    removes. Its edit-friendly inversion reproduces the image exactly, so the reference is the VAE round trip
    (no reconstruction); its inversion draws noise, so ``cache`` (deterministic inversions) is not used, nor
    are the edit words (the concepts come from the captions)."""
    from workflow.editing import ledits

    edited = ledits.edit(pipe, images, source_prompts, target_prompts, settings, seeds)
    return EditOutput(edited=edited, reconstruction=None)


Method = Callable[..., EditOutput]
METHODS: dict[str, Method] = {
    "sdedit": sdedit,
    "ddim-p2p": prompt_to_prompt(null_text=False),
    "null-text-p2p": prompt_to_prompt(null_text=True),
    "ledits++": ledits_pp,
}
"""Config name -> method function (the signature of :func:`sdedit`)."""
