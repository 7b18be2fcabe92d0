"""Tiny stand-ins for the pretrained models a study loads from the hub, built offline for the demo and tests.

Each entry says which pretrained model it replaces, which config key selects it (the key's value is
``tiny``), which config key seeds its random weights and which function builds it. Rule ``build_tiny_model``
(rules/common.smk) builds any of them into ``results/models/tiny/<name>/`` through :func:`build_tiny_model`;
a stage's rule takes that folder as an input exactly when its config key says ``tiny``
(:func:`tiny_model_inputs`), so one pattern serves every stand-in, and a new one is a new entry here.

A stand-in whose random weights cannot serve is then trained on the study's data by a rule of the stage that
uses it (``trained_by``: the tiny SD's VAE, by ``train_tiny_vae`` in rules/diffusion.smk), which reads the
built folder and writes ``results/models/tiny/<name>-trained/`` (:func:`trained_tiny_model_dir`); the stages
then take that folder instead, through the same :func:`tiny_model_inputs`.

Builders live in the stage that uses the model and are named as ``"module:function"``, called as
``function(out_dir, seed)``; importing them lazily keeps this table (which the rules read) free of torch and
of upward imports. Every builder writes a model card whose ``weights`` says the weights are random
(:mod:`workflow.common.model_card`), and every output made with the model repeats it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workflow.common.files import atomic_output
from workflow.common.settings import section

TINY = "tiny"
FOLDER = "results/models/tiny"


@dataclass(frozen=True)
class TinyModel:
    """A stand-in: what it replaces, the config key that selects it, its seed's config key, its builder and
    the rule that trains it on the study's data, if any."""

    replaces: str
    selected_by: tuple[str, ...]
    seed: tuple[str, ...]
    builder: str
    trained_by: str | None = None


TINY_MODELS: dict[str, TinyModel] = {
    "vit": TinyModel(
        "DINO ViT-B/8 of the MEP-LDM prompts",
        ("prompts", "mep", "model"),
        ("prompts", "seed"),
        "workflow.prompts.embeddings:build_tiny",
    ),
    "sd": TinyModel(
        "Stable Diffusion 1.5",
        ("diffusion", "base_model"),
        ("diffusion", "tiny_seed"),
        "workflow.diffusion.base_models:build_tiny",
        trained_by="train_tiny_vae",
    ),
    "dinov2": TinyModel(
        "DINOv2 feature extractor of the image-quality metrics",
        ("evaluation", "extractor"),
        ("evaluation", "tiny_seed"),
        "workflow.evaluation.extractors:build_tiny",
    ),
    "inception": TinyModel(
        "torchvision's ImageNet Inception-v3 of the LoRA-fairness FID (extractor torchvision-inception)",
        ("evaluation", "torchvision_weights"),
        ("evaluation", "tiny_seed"),
        "workflow.evaluation.extractors:build_tiny_inception",
    ),
    "clip": TinyModel(
        "OpenAI CLIP ViT-L/14 of the editing stage's CLIP filter (LANCE, PRISM)",
        ("editing", "clip", "model"),
        ("editing", "seed"),
        "workflow.editing.clip_filter:build_tiny",
    ),
}


def tiny_model_dir(name: str) -> str:
    """The folder of stand-in ``name``."""
    return f"{FOLDER}/{name}"


def trained_tiny_model_dir(name: str) -> str:
    """The folder of stand-in ``name`` after its ``trained_by`` rule trained it on the study's data."""
    return f"{FOLDER}/{name}-trained"


def tiny_model_inputs(config: Mapping[str, Any], name: str) -> list[str]:
    """``[folder]`` the stages use when the config selects stand-in ``name`` (its key says ``tiny``): the
    trained folder of a stand-in with a ``trained_by`` rule, else the built one; ``[]`` when not selected."""
    model = TINY_MODELS[name]
    *parent, key = model.selected_by
    if section(config, tuple(parent))[key] != TINY:
        return []
    return [trained_tiny_model_dir(name) if model.trained_by else tiny_model_dir(name)]


def tiny_model_seed(config: Mapping[str, Any], name: str) -> int:
    """The seed of stand-in ``name``'s random weights, from its config key."""
    *parent, key = TINY_MODELS[name].seed
    return int(section(config, tuple(parent))[key])


def build_tiny_model(name: str, seed: int, out: str) -> None:
    """Build stand-in ``name`` with ``seed`` into the folder ``out`` (atomically)."""
    module, function = TINY_MODELS[name].builder.split(":")
    build = getattr(importlib.import_module(module), function)
    with atomic_output(out) as tmp:
        build(tmp, seed)
