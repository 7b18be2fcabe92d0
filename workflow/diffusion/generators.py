"""The study's generators: named sources of synthetic images, the wildcard ``{generator}`` of the rules.

A generator is a trained model and the labelled synthetic dataset sampled from it, in the manifest schema:
``results/models/<generator>/`` and ``results/samples/<generator>/manifest.parquet``. Image quality
(``results/evaluation/<generator>/``, one section each in ``results/fid.json``), the synthetic and mixed
classifier regimes (``results/classifier/<regime>/<generator>/``) and the report's real vs synthetic grids
are made for every generator this module lists, so a new kind of generator plugs into them by being listed
here, with no new wiring downstream.

Today's generators are Stable Diffusion fine-tunes. ``diffusion.generators`` names them, each with its
fine-tuning ``method`` and the prompt ``strategies`` it is trained on (a sub-list of
``prompts.strategies``), so one study can compare arms: MEP-LDM's class-conditional prompts against
morphology-enriched prompts (Osorio et al. 2024), or full fine-tuning against LoRA. Left null, the study has
one generator, ``sd-<diffusion.method>``, trained on every prompt strategy. An arm may sample its own
``images_per_prompt`` (arms with fewer prompts need more images each for sets of equal size: FID is biased
in the number of images).

Arms that share their prompt strategies share the cached latents (``results/models/cache/<variant>``, one
VAE pass); an arm with other strategies is trained on the same images with its own captions
(:mod:`workflow.prompts.variants`).

A generator of ``kind: mask-guided`` is no Stable Diffusion fine-tune: segmentation-guided diffusion (Konz et
al. 2024, :mod:`workflow.diffusion.mask_guided`) trained on the real masks (rule ``train_mask_guided``) and
sampled once per real mask of a split (rule ``sample_mask_guided``), into the same two folders; the rules of
each kind take only their generators (:func:`name_pattern`). A mask-guided generator may sample another's
trained model (``model_from``) from edited masks (``remove_classes``): the paper's mask ablation at sampling
beside the generator on the full masks, from one training.

A generator of ``kind: mask-text`` (DGM-VLC, :mod:`workflow.diffusion.mask_text`) conditions on the real
masks and on captions of its prompt ``strategies`` (``tabular`` for DGM-VLC; its prompt variant is made as an
SD arm's): rules ``train_mask_text`` and ``sample_mask_text``, collected like a mask-guided generator's, and,
when ``diffusion.mask_text.differences.changes`` lists clinical fields to change, ``difference_maps``
(``results/differences/<generator>/``, :func:`with_differences`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workflow.common.errors import InputError
from workflow.prompts.variants import variant_name

MODELS = "results/models"
SAMPLES = "results/samples"
CACHE = f"{MODELS}/cache"
DIFFERENCES = "results/differences"


@dataclass(frozen=True)
class Generator:
    """One entry of ``diffusion.generators``."""

    name: str
    method: str
    strategies: tuple[str, ...]
    images_per_prompt: int | None = None
    kind: str = "sd"
    remove_classes: tuple[str, ...] | None = None
    model_from: str | None = None

    @property
    def trained_as(self) -> str:
        """The generator whose trained model this one samples: itself, or its ``model_from``."""
        return self.model_from or self.name

    @property
    def variant(self) -> str:
        """The name of its prompt variant (:func:`workflow.prompts.variants.variant_name`)."""
        return variant_name(self.strategies)


SD_KEYS = {
    "mask-guided": ("method", "images_per_prompt", "strategies"),
    "mask-text": ("method", "images_per_prompt"),
}
"""Keys of a ``diffusion.generators`` entry that only Stable Diffusion generators read, by the pixel kinds
that refuse them: those sample once per real mask (no fine-tuning method, no images per prompt), and a
mask-guided generator reads no text (no prompt strategies)."""


def sd_generator(method: str) -> str:
    """The name of Stable Diffusion fine-tuned with ``method`` (``full`` or ``lora``)."""
    return f"sd-{method}"


def generators(config: Mapping[str, Any]) -> dict[str, Generator]:
    """The generators of the study ``config`` (validated), by name, in config order."""
    diffusion, strategies = config["diffusion"], tuple(config["prompts"]["strategies"])
    section = diffusion["generators"] or {sd_generator(diffusion["method"]): {}}
    out = {}
    for name, entry in section.items():
        ignored = [key for key in SD_KEYS.get(entry.get("kind") or "sd", ()) if key in entry]
        if ignored:
            raise InputError(
                f"diffusion.generators.{name}: {ignored} do not apply to kind {entry['kind']} "
                f"(it samples once per real mask{'' if entry['kind'] == 'mask-text' else ', without text'}); "
                "remove them"
            )
        chosen = tuple(entry.get("strategies") or strategies)
        unknown = [s for s in chosen if s not in strategies]
        if unknown:
            raise InputError(
                f"diffusion.generators.{name}.strategies: {unknown} are not in prompts.strategies"
                f" {list(strategies)}; a generator trains on a sub-list of the study's prompt strategies"
            )
        ordered = tuple(
            s for s in strategies if s in chosen
        )  # the study's order, so equal sets share a cache
        method = entry.get("method") or diffusion["method"]
        kind = entry.get("kind") or "sd"
        removed = entry.get("remove_classes")
        out[name] = Generator(
            name,
            method,
            ordered,
            entry.get("images_per_prompt"),
            kind,
            None if removed is None else tuple(removed),
            entry.get("model_from"),
        )
    check_mask_guided(out)
    return out


def check_mask_guided(found: Mapping[str, Generator]) -> None:
    """``remove_classes`` and ``model_from`` are for mask-guided generators, and ``model_from`` names one that
    trains its own model.

    Raises:
        InputError: naming the generator and the key.
    """
    for name, generator in found.items():
        if generator.kind != "mask-guided" and (generator.remove_classes is not None or generator.model_from):
            raise InputError(
                f"diffusion.generators.{name}: remove_classes and model_from are for kind mask-guided"
            )
        source = found.get(generator.model_from) if generator.model_from else None
        if generator.model_from and (source is None or source.kind != "mask-guided" or source.model_from):
            raise InputError(
                f"diffusion.generators.{name}.model_from: '{generator.model_from}' is not a mask-guided "
                "generator of diffusion.generators that trains its own model"
            )


def generator_names(config: Mapping[str, Any]) -> list[str]:
    """The generators of the study ``config`` (validated), in config order."""
    return list(generators(config))


def names_of_kind(config: Mapping[str, Any], kind: str) -> list[str]:
    """The generators of ``kind`` (``sd``, ``mask-guided``, ``mask-text``) in the study ``config``, in config
    order."""
    return [name for name, g in generators(config).items() if g.kind == kind]


def trained_mask_guided(config: Mapping[str, Any]) -> list[str]:
    """The mask-guided generators that train a model (those without ``model_from``), in config order."""
    return [name for name, g in generators(config).items() if g.kind == "mask-guided" and not g.model_from]


def volume_generators(config: Mapping[str, Any]) -> list[str]:
    """The generators that generate volumes: those of kind ``mask-text`` when
    ``diffusion.mask_text.train.spatial_dims`` is 3, in config order."""
    three_d = config["diffusion"]["mask_text"]["train"]["spatial_dims"] == 3
    return names_of_kind(config, "mask-text") if three_d else []


def with_differences(config: Mapping[str, Any]) -> list[str]:
    """The mask-text generators whose difference maps the study makes (rule ``difference_maps``): all of them
    when ``diffusion.mask_text.differences.changes`` is not empty, else none."""
    changes = config["diffusion"]["mask_text"]["differences"]["changes"]
    return names_of_kind(config, "mask-text") if changes else []


def name_pattern(names: list[str]) -> str:
    """A ``{generator}`` wildcard constraint matching exactly ``names`` (none: a pattern matching nothing)."""
    return "|".join(map(re.escape, names)) or "(?!)"


def prompt_variants(config: Mapping[str, Any]) -> list[str]:
    """The prompt variants the Stable Diffusion and mask-text generators train on, each once, in config
    order."""
    kinds = ("sd", "mask-text")
    return list(dict.fromkeys(g.variant for g in generators(config).values() if g.kind in kinds))


def model_dir(generator: str) -> str:
    """Where the trained model of ``generator`` and its training records are."""
    return f"{MODELS}/{generator}"


def cache_file(variant: str) -> str:
    """The cached latents and text embeddings of the training images under prompt ``variant``."""
    return f"{CACHE}/{variant}/train.safetensors"


def samples_dir(generator: str) -> str:
    """Where the synthetic dataset of ``generator`` is."""
    return f"{SAMPLES}/{generator}"


def samples_manifest(generator: str) -> str:
    """The manifest of ``generator``'s synthetic images (manifest schema plus ``image``, ``prompt``...)."""
    return f"{samples_dir(generator)}/manifest.parquet"


def differences_dir(generator: str) -> str:
    """Where the difference maps of mask-text ``generator`` are (NIfTI, PNG montages, ``summary.csv``)."""
    return f"{DIFFERENCES}/{generator}"
