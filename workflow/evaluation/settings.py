"""Settings of the evaluation stage: config section ``evaluation`` (resources/config.schema.yaml documents
each key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from workflow.common.settings import RESOURCE_KEYS, Settings


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
