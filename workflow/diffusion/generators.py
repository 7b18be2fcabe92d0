"""The study's generators: named sources of synthetic images, the wildcard ``{generator}`` of the rules.

A generator is a trained model and the labelled synthetic dataset sampled from it, in the manifest schema:
``results/models/<generator>/`` and ``results/samples/<generator>/manifest.parquet``. Image quality
(``results/evaluation/<generator>/``, one section each in ``results/fid.json``), the synthetic and mixed
classifier regimes (``results/classifier/<regime>/<generator>/``) and the report's real vs synthetic grids
are made for every generator this module lists, so a new kind of generator plugs into them by being listed
here, with no new wiring downstream.

Today's generators: Stable Diffusion fine-tuned with ``diffusion.method``, named ``sd-full`` or ``sd-lora``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MODELS = "results/models"
SAMPLES = "results/samples"


def sd_generator(method: str) -> str:
    """The name of Stable Diffusion fine-tuned with ``method`` (``full`` or ``lora``)."""
    return f"sd-{method}"


def generator_names(config: Mapping[str, Any]) -> list[str]:
    """The generators of the study ``config`` (validated), in a fixed order."""
    return [sd_generator(config["diffusion"]["method"])]


def model_dir(generator: str) -> str:
    """Where the trained model of ``generator`` and its training records are."""
    return f"{MODELS}/{generator}"


def samples_dir(generator: str) -> str:
    """Where the synthetic dataset of ``generator`` is."""
    return f"{SAMPLES}/{generator}"


def samples_manifest(generator: str) -> str:
    """The manifest of ``generator``'s synthetic images (manifest schema plus ``image``, ``prompt``...)."""
    return f"{samples_dir(generator)}/manifest.parquet"
