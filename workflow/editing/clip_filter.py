"""CLIP filtering of counterfactuals with LANCE's formulas (Prabhu et al., NeurIPS 2023, sec. 3.3, as PRISM
runs them; ``../shared/reference/seeds_spec.md`` 6.3): config ``editing.clip``.

With all embeddings L2-normalised, I0 the edit's reference (the method's reconstruction, or the source through
the VAE: LANCE too scores the reconstruction, not the source file), I1 the edited image, T0 and T1 the source
and target captions:

- ``clip_image_image`` = cos(I0, I1), at least ``clip_img_thresh`` (the edit keeps the image);
- ``clip_caption_source`` = cos(I0, T0) and ``clip_caption_edited`` = cos(I1, T1), each at least
  ``clip_thresh`` (each image matches its caption);
- ``clip_direction`` = cos(I1 - I0, T1 - T0), at least ``clip_dir_thresh`` (the image moved the way the
  caption did);
- ``clip_consistency``: cos(I1, text(added words)) > cos(I1, text(removed words)) (predictive consistency;
  not applicable, so passed, when the edit only adds or only removes words);
- ``clip_text_similarity``: the text pre-filter. LANCE drops an edit whose removed word is CLIP-similar to
  the image's class name (the edit would change the label it studies); here the edits change a finding on
  purpose, so the labels to protect are the findings the edit keeps (positive in the target labels, the
  edited one aside): the largest cos(text(removed words), text(finding)) must stay below
  ``text_similarity_threshold`` (passed when nothing is removed or nothing is kept).

LANCE's "better than the best so far" on the direction belongs to its sweep over self-replace steps, which
synthmed does not run. An edit that fails is kept, with ``clip_passed`` false and the failed criteria in
``clip_failed`` (comma-separated names of :data:`CRITERIA`).

The model is a transformers ``CLIPModel`` folder or hub id with its tokenizer and image processor (PRISM:
``openai/clip-vit-large-patch14``), or the tiny random stand-in ``clip`` of
:mod:`workflow.common.tiny_models` (:func:`build_tiny`) whose scores mean nothing; its card says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workflow.common.model_card import weights_label, write_card

CRITERIA = ("text_prefilter", "image_image", "caption_source", "caption_edited", "direction", "consistency")
"""The filter's criteria, in the order they are reported."""
TINY_CLIP: dict[str, Any] = {"image_size": 32, "patch_size": 8, "projection_dim": 16}
"""The tiny stand-in: 32 px images in 8 px patches, 16-d joint embedding, the tiny SD's text tower."""


@dataclass(frozen=True)
class Clip:
    """A loaded CLIP: the model, its tokenizer and image processor, and which weights it holds."""

    model: Any
    tokenizer: Any
    processor: Any
    weights: str

    def images(self, grays: Sequence[np.ndarray]) -> torch.Tensor:
        """Normalised embeddings of ``(H, W)`` grayscale images in [0, 1] (as RGB, the processor's resize and
        normalisation)."""
        rgb = [np.repeat(np.asarray(g, np.float32)[..., None], 3, axis=-1) for g in grays]
        pixels = self.processor(images=rgb, do_rescale=False, return_tensors="pt").pixel_values
        with torch.no_grad():
            features = self.model.get_image_features(pixel_values=pixels.to(self.model.device)).pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised embeddings of ``texts`` (truncated to the tokenizer's length)."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            features = self.model.get_text_features(
                input_ids=tokens.input_ids.to(self.model.device),
                attention_mask=tokens.attention_mask.to(self.model.device),
            ).pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1)


def load(location: str, device: torch.device) -> Clip:
    """The CLIP at ``location`` (a folder, with a model card for the tiny stand-in, or a hub id) on
    ``device``."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    return Clip(
        model=CLIPModel.from_pretrained(location).to(device).eval(),
        tokenizer=AutoTokenizer.from_pretrained(location),
        processor=CLIPImageProcessor.from_pretrained(location),
        weights=weights_label(location),
    )


def build_tiny(out_dir: str | Path, seed: int) -> None:
    """Save a tiny random CLIP (seeded; the tiny SD's word-level tokenizer and text tower size), its tokenizer
    and image processor and a model card saying so into ``out_dir``: the stand-in for the demo and tests."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from workflow.diffusion.base_models import TINY_TEXT, word_tokenizer

    tokenizer = word_tokenizer()
    side, patch, dim = TINY_CLIP["image_size"], TINY_CLIP["patch_size"], TINY_CLIP["projection_dim"]
    vision = {"image_size": side, "patch_size": patch, "hidden_size": 32, "intermediate_size": 64}
    vision |= {"num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer)} | TINY_TEXT, vision_config=vision, projection_dim=dim
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    size = {"shortest_edge": side}
    CLIPImageProcessor(size=size, crop_size={"height": side, "width": side}).save_pretrained(out_dir)
    write_card(out_dir, {"weights": "random (tiny CLIP stand-in; filter scores mean nothing)", "seed": seed})


def scores(
    clip: Clip,
    reference: Sequence[np.ndarray],
    edited: Sequence[np.ndarray],
    source_captions: Sequence[str],
    target_captions: Sequence[str],
    changes: Sequence[tuple[Sequence[str], Sequence[str]]],
    kept_findings: Sequence[Sequence[str]],
) -> list[dict[str, Any]]:
    """LANCE's scores of a batch of edits (module docstring).

    Args:
        reference, edited: ``(H, W)`` grayscale images in [0, 1].
        changes: per edit, the words the target caption adds and those it removes.
        kept_findings: per edit, the findings it keeps (the pre-filter's protected labels).
    """
    i0, i1 = clip.images(reference), clip.images(edited)
    t0, t1 = clip.texts(source_captions), clip.texts(target_captions)
    direction = torch.nn.functional.cosine_similarity(i1 - i0, t1 - t0, dim=-1)
    out = []
    for k, ((added, removed), kept) in enumerate(zip(changes, kept_findings, strict=True)):
        record = {
            "clip_image_image": float(i0[k] @ i1[k]),
            "clip_caption_source": float(i0[k] @ t0[k]),
            "clip_caption_edited": float(i1[k] @ t1[k]),
            "clip_direction": float(direction[k]),
            "clip_consistency": None,
            "clip_text_similarity": None,
        }
        if added and removed:
            words = clip.texts([" ".join(added), " ".join(removed)])
            record["clip_consistency"] = bool(i1[k] @ words[0] > i1[k] @ words[1])
        if removed and kept:
            texts = clip.texts([" ".join(removed), *kept])
            record["clip_text_similarity"] = float((texts[1:] @ texts[0]).max())
        out.append(record)
    return out


def failed_criteria(score: Mapping[str, Any], settings: Any) -> list[str]:
    """The criteria of :data:`CRITERIA` that ``score`` (:func:`scores`) fails under ``editing.clip``'s
    thresholds (``settings``: :class:`workflow.editing.settings.ClipSettings`)."""
    text = score["clip_text_similarity"]
    passed = {
        "text_prefilter": text is None or text < settings.text_similarity_threshold,
        "image_image": score["clip_image_image"] >= settings.clip_img_thresh,
        "caption_source": score["clip_caption_source"] >= settings.clip_thresh,
        "caption_edited": score["clip_caption_edited"] >= settings.clip_thresh,
        "direction": score["clip_direction"] >= settings.clip_dir_thresh,
        "consistency": score["clip_consistency"] is not False,
    }
    return [name for name in CRITERIA if not passed[name]]
