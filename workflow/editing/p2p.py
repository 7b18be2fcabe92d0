"""Prompt-to-prompt editing (Hertz et al. 2022) of inverted real images: methods ``ddim-p2p`` and
``null-text-p2p``.

An image is inverted with its source caption (:mod:`workflow.editing.inversion`), then its latent x_T is
sampled twice in one batch, with the source caption (row "source") and with the target caption (row
"target"); attention processors installed with ``unet.set_attn_processor`` (:class:`P2PAttnProcessor`) edit
the target row's attention probabilities from the source row's, in the conditional half of the
classifier-free-guidance batch only:

- **cross-attention** (sec. 3.2, eq. 3-4): for the first ``cross_replace_steps`` x steps sampling steps the
  target's maps are replaced by the source's. Which maps replace which follows the two captions' tokens:
  *replace* when they have the same number of tokens (a word swap: token j takes the source's token j map),
  *refine* otherwise (the captions' token sequences are aligned; an aligned target token takes the map of its
  source token, a new token keeps its own; alignment by :class:`difflib.SequenceMatcher`, which finds the
  matching blocks the paper's global alignment does for word insertions and deletions). *Reweight*: within
  the same steps the maps of the edited words' tokens in the target caption are scaled by ``word_weight``.
- **self-attention**: for the first ``self_replace_steps`` x steps steps the target's self-attention maps
  are the source's, in every layer coarser than the latent itself (prompt-to-prompt's "at most 32² queries"
  at 512 px, i.e. all but the 64x64 layers, stated relative to the latent so it holds at every resolution).
- **local blending** (sec. 3.3), when ``local_blend``: the cross-attention maps of the edited words (their
  tokens in the source caption on the source row, in the target caption on the target row) are summed over
  the words, averaged over heads, upsampled to the latent from every layer coarser than the latent, summed
  over layers and steps so far, max-pooled (3x3), normalised by their maximum and thresholded at
  ``blend_threshold``; the union of the two rows' masks is the edit region. After each sampling step from
  ``START_BLEND`` x steps on, the target latent is the source latent outside that region. Prompt-to-prompt
  takes only its 16x16 layers (hard-coded for 512 px) and divides by a maximum that is 0 when a word is
  missing from a caption (NaN mask: PRISM's suppressed edits); here a row without the words simply adds
  nothing to the union.

The source row is sampled with untouched attention, so it is the null edit (source caption -> source
caption): the reconstruction of the inversion. Sampling is diffusers' :class:`~diffusers.DDIMScheduler`
(eta 0) on the pipeline's UNet and VAE; DDIM inversion and sampling are deterministic, so no seed is drawn.
The loop is written here rather than by ``StableDiffusionPipeline.__call__`` because each step needs its own
unconditional embedding (null-text) and local blending between steps.

Every call builds its controller afresh from its settings (no state survives between calls, unlike
LANCE/PRISM's generators, whose sweep worked only for its first value), and the processors installed are
removed again when it ends (:func:`controlled`).

Method functions return ``(edited, reconstruction)``, each ``(B, 3, H, W)`` in [-1, 1]; the stage's
``methods.py`` wraps them in its ``EditOutput``.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from workflow.common.errors import InputError
from workflow.editing.inversion import (
    Inversion,
    InversionCache,
    decode_latents,
    embed,
    guided,
    invert,
    sampler,
)

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from diffusers.models.attention_processor import Attention
    from transformers import PreTrainedTokenizerBase

START_BLEND = 0.2
"""Fraction of the sampling steps after which local blending starts (prompt-to-prompt's and PRISM's 0.2)."""
NULL_TEXT_KEYS = ("inner_steps", "early_stop", "learning_rate")


def token_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids ``(n, 77)`` of ``prompts`` as the text encoder sees them (start, words, end padding;
    truncated to the tokenizer's ``model_max_length``)."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def word_positions(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, word: str) -> list[int]:
    """Positions in ``ids`` (one caption's tokens) of every occurrence of ``word``'s tokens; ``[]`` when it
    does not occur (e.g. truncated away) or the tokenizer does not know it."""
    pieces = tokenizer(word, add_special_tokens=False).input_ids
    if not pieces or tokenizer.unk_token_id in pieces:
        return []
    ids, n = ids.tolist(), len(pieces)
    return [p + k for p in range(len(ids) - n + 1) if ids[p : p + n] == pieces for k in range(n)]


def alignment(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which source token's cross-attention map each target token takes, and whether it takes it (1) or
    keeps its own (0): identity when the captions have as many tokens (replace), else the matching blocks of
    the two token sequences (refine)."""
    if torch.equal(source == source[-1], target == target[-1]):  # same length: same end-token padding
        return torch.arange(len(target)), torch.ones(len(target))
    mapper, alphas = torch.arange(len(target)), torch.zeros(len(target))
    matcher = difflib.SequenceMatcher(a=source.tolist(), b=target.tolist(), autojunk=False)
    for block in matcher.get_matching_blocks():
        mapper[block.b : block.b + block.size] = torch.arange(block.a, block.a + block.size)
        alphas[block.b : block.b + block.size] = 1
    return mapper, alphas


@dataclass
class Controller:
    """The edit of one sampling run: per image, the token map (``mapper``, ``alphas``), the reweighting
    (``equalizer``) and the edited words' tokens per row (``blend_tokens``, ``(B, 2, 77)``); the step
    windows; and the running state (``step``, the accumulated blend maps)."""

    mapper: torch.Tensor
    alphas: torch.Tensor
    equalizer: torch.Tensor
    blend_tokens: torch.Tensor | None
    cross_steps: int
    self_steps: int
    latent_size: tuple[int, int]
    step: int = 0
    blend_maps: torch.Tensor | None = field(default=None, repr=False)

    def coarse(self, queries: int) -> bool:
        """Whether a layer with ``queries`` positions is coarser than the latent."""
        return queries < self.latent_size[0] * self.latent_size[1]

    def edits(self, is_cross: bool, queries: int) -> bool:
        """Whether this layer's probabilities are needed at the current step."""
        if is_cross:
            return self.step < self.cross_steps or (self.blend_tokens is not None and self.coarse(queries))
        return self.step < self.self_steps and self.coarse(queries)

    def __call__(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        """Edit attention probabilities ``(2, B, 2, heads, queries, keys)`` (guidance half, image,
        source/target row) in place and return them."""
        cond = probs[1]
        source, target = cond[:, 0], cond[:, 1]
        queries = probs.shape[-2]
        if not is_cross:
            target.copy_(source)
            return probs
        if self.blend_tokens is not None and self.coarse(queries):
            self.accumulate(cond, queries)
        if self.step < self.cross_steps:
            mapped = torch.take_along_dim(source, self.mapper[:, None, None, :], dim=-1)
            alphas = self.alphas[:, None, None, :]
            replaced = mapped * alphas + target * (1 - alphas)
            target.copy_(replaced * self.equalizer[:, None, None, :])
        return probs

    def accumulate(self, cond: torch.Tensor, queries: int) -> None:
        """Add this layer's edited-word maps (summed over the words, mean over heads, upsampled to the
        latent) to the running blend maps."""
        height, width = self.latent_size
        factor = round((height * width / queries) ** 0.5)
        maps = (cond * self.blend_tokens[:, :, None, None, :]).sum(-1).mean(2)
        maps = maps.reshape(-1, 2, height // factor, width // factor).float()
        maps = F.interpolate(maps, size=self.latent_size, mode="bilinear", align_corners=False)
        self.blend_maps = maps if self.blend_maps is None else self.blend_maps + maps

    def blend_mask(self, threshold: float) -> torch.Tensor:
        """The edit region ``(B, 1, h, w)``: the union over the two rows of the max-pooled, max-normalised
        blend maps above ``threshold``."""
        maps = F.max_pool2d(self.blend_maps, 3, stride=1, padding=1)
        peak = maps.flatten(2).amax(-1)[..., None, None].clamp_min(torch.finfo(maps.dtype).tiny)
        return ((maps / peak) > threshold).any(1, keepdim=True)


class P2PAttnProcessor:
    """A diffusers attention processor that hands the attention probabilities to a :class:`Controller`
    before they weight the values. Its body is diffusers' ``AttnProcessor`` (which materialises the
    probabilities, where the default ``AttnProcessor2_0`` fuses them away); layers and steps the controller
    leaves alone take ``scaled_dot_product_attention`` on 4-D ``(batch, heads, seq, dim)`` tensors as
    ``AttnProcessor2_0`` does (on 3-D ones PyTorch falls back to the math kernel, which materialises the
    ``(seq, seq)`` scores: 4096² per head at 512 px)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        is_cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, keys, _ = (encoder_hidden_states if is_cross else hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        queries = query.shape[1]
        if self.controller.edits(is_cross, queries):
            query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
            probs = attn.get_attention_scores(query, key, attention_mask)
            grouped = probs.view(2, batch // 4, 2, attn.heads, queries, keys)
            hidden_states = torch.bmm(self.controller(grouped, is_cross).view_as(probs), value)
            hidden_states = attn.batch_to_head_dim(hidden_states)
        else:  # (batch, heads, seq, dim), as AttnProcessor2_0: 3-D inputs fall back to the math kernel
            head_dim = query.shape[-1] // attn.heads
            query, key, value = (
                x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value)
            )
            if attention_mask is not None:
                attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attention_mask, scale=attn.scale
            )
            hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def controlled(unet: torch.nn.Module, controller: Controller) -> Iterator[None]:
    """Install :class:`P2PAttnProcessor` on every attention layer of ``unet`` and restore the previous
    processors afterwards (``set_default_attn_processor`` refuses to reset custom ones)."""
    previous = unet.attn_processors
    unet.set_attn_processor(P2PAttnProcessor(controller))
    try:
        yield
    finally:
        unet.set_attn_processor(previous)


def build_controller(
    pipe: StableDiffusionPipeline,
    source_prompts: Sequence[str],
    target_prompts: Sequence[str],
    edit_words: Sequence[Sequence[str]],
    settings: Mapping[str, Any],
    latent_size: tuple[int, int],
) -> Controller:
    """The controller of one batch of edits.

    Raises:
        InputError: naming an edit word that occurs in neither caption as the tokenizer splits it.
    """
    device = pipe.device
    tokenizer = pipe.tokenizer
    source_ids, target_ids = token_ids(tokenizer, source_prompts), token_ids(tokenizer, target_prompts)
    mappers, alphas = zip(
        *(alignment(s, t) for s, t in zip(source_ids, target_ids, strict=True)), strict=True
    )
    blend = torch.zeros(len(source_ids), 2, source_ids.shape[1])
    equalizer = torch.ones(len(source_ids), source_ids.shape[1])
    for item, words in enumerate(edit_words):
        for word in words:
            in_source = word_positions(tokenizer, source_ids[item], word)
            in_target = word_positions(tokenizer, target_ids[item], word)
            if not in_source and not in_target:
                raise InputError(
                    f"edit word '{word}' (edit {item}: '{source_prompts[item]}' -> '{target_prompts[item]}') "
                    "occurs in neither caption as the tokenizer splits it, so prompt-to-prompt cannot place "
                    "it for local blending or reweighting; give edit words exactly as the captions write them"
                )
            blend[item, 0, in_source] = 1
            blend[item, 1, in_target] = 1
            equalizer[item, in_target] = float(settings["word_weight"])
    steps = int(settings["steps"])
    return Controller(
        mapper=torch.stack(mappers).to(device),
        alphas=torch.stack(alphas).to(device),
        equalizer=equalizer.to(device),
        blend_tokens=blend.to(device) if settings["local_blend"] else None,
        cross_steps=int(float(settings["cross_replace_steps"]) * steps),
        self_steps=int(float(settings["self_replace_steps"]) * steps),
        latent_size=latent_size,
    )


@dataclass(frozen=True)
class P2PResult:
    """Final latents of the source rows (the reconstruction) and target rows (the edits), each
    ``(B, 4, h, w)``, and the last local-blend region ``(B, 1, h, w)`` (None without local blending)."""

    source: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor | None


def sample_edits(
    pipe: StableDiffusionPipeline,
    inversion: Inversion,
    source_prompts: Sequence[str],
    target_prompts: Sequence[str],
    edit_words: Sequence[Sequence[str]],
    settings: Mapping[str, Any],
) -> P2PResult:
    """Sample each inverted latent with its source and target caption under a fresh :class:`Controller`."""
    steps, guidance_scale = int(settings["steps"]), float(settings["guidance_scale"])
    controller = build_controller(
        pipe, source_prompts, target_prompts, edit_words, settings, tuple(inversion.latents.shape[-2:])
    )
    pairs = [prompt for pair in zip(source_prompts, target_prompts, strict=True) for prompt in pair]
    cond = embed(pipe, pairs)
    latents = inversion.latents.repeat_interleave(2, dim=0)
    scheduler = sampler(pipe, steps)
    mask = None
    with controlled(pipe.unet, controller), torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            controller.step = i
            eps = guided(
                pipe, latents, t, inversion.uncond[i].repeat_interleave(2, dim=0), cond, guidance_scale
            )
            latents = scheduler.step(eps, t, latents).prev_sample.to(latents.dtype)
            if controller.blend_tokens is not None and i >= int(START_BLEND * steps):
                mask = controller.blend_mask(float(settings["blend_threshold"]))
                source, target = latents[0::2], latents[1::2]
                latents = torch.stack([source, source + mask * (target - source)], dim=1).flatten(0, 1)
    return P2PResult(source=latents[0::2], target=latents[1::2], mask=mask)


def edit(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    source_prompts: list[str],
    target_prompts: list[str],
    edit_words: list[list[str]],
    settings: Mapping[str, Any],
    null_text: bool,
    cache: InversionCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert ``images`` (null-text optimisation when ``null_text``; through ``cache`` when given) and edit
    them: ``(edited, reconstruction)`` in [-1, 1]."""
    null_settings = {key: settings[key] for key in NULL_TEXT_KEYS} if null_text else None
    steps, guidance_scale = int(settings["steps"]), float(settings["guidance_scale"])
    inversion = invert(pipe, images, source_prompts, steps, guidance_scale, null_settings, cache)
    result = sample_edits(pipe, inversion, source_prompts, target_prompts, edit_words, settings)
    return decode_latents(pipe, result.target), decode_latents(pipe, result.source)
