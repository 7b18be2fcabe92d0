"""Settings of the evaluation stage: config section ``evaluation`` (resources/config.schema.yaml documents
each key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from workflow.common.settings import RESOURCE_KEYS, Settings
from workflow.common.tiny_models import tiny_model_inputs


@dataclass(frozen=True)
class EvaluationSettings(Settings):
    """``evaluation`` (rule ``image_metrics``), less ``tiny_seed``: the tiny extractor is an input of the
    rule (its folder), built with that seed by ``build_tiny_model``."""

    SECTION = ("evaluation",)

    reference_split: str
    extractor: str
    weights: str | None
    model: str
    resolution: int | None
    image_size: int | None
    color: str
    kid_subset_size: int
    kid_subsets: int
    prc_neighborhood: int
    min_images: int
    slice_bins: int
    seed: int
    batch_size: int
    cache_dir: str

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        skip = {*RESOURCE_KEYS, "tiny_seed"}
        return cls.from_dict({k: v for k, v in config["evaluation"].items() if k not in skip})


def extractor_inputs(config: Mapping[str, Any]) -> list[str]:
    """The feature extractor's local file or folder, which rule ``image_metrics`` tracks as an input: the
    tiny stand-in, an Inception weights file, or a local transformers folder (none for hub downloads)."""
    evaluation = config["evaluation"]
    if evaluation["extractor"] == "inception-v3-compat":
        return [evaluation["weights"]] if evaluation["weights"] else []
    if evaluation["extractor"] == "transformers":
        return [evaluation["model"]] if Path(evaluation["model"]).is_dir() else []
    return tiny_model_inputs(config, "dinov2")
