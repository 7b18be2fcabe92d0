"""Settings of the classifier stage: config section ``classifier`` (resources/config.schema.yaml documents
each key), one class per rule: training (:class:`TrainSettings`), test evaluation (:class:`EvaluationSettings`
and :class:`FairnessSettings`) and Grad-CAM focus (:class:`FocusSettings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from workflow.common.errors import InputError
from workflow.common.settings import RESOURCE_KEYS, Settings


@dataclass(frozen=True)
class TrainSettings(Settings):
    """``classifier.training`` and the colour of the images, ``preprocess.color`` (rule ``train_classifier``:
    colour images go in as three channels, :mod:`workflow.classifier.networks`)."""

    SECTION = ("classifier", "training")

    backbone: str
    weights: str
    channels: str
    image_size: int
    epochs: int
    min_epochs: int
    patience: int
    selection: str
    batch_size: int
    learning_rate: float
    weight_decay: float
    augment_shift: float
    augment_intensity: float
    loader_workers: int
    seed: int
    log_with: str
    color: str = "grayscale"

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        section = {k: v for k, v in config["classifier"]["training"].items() if k not in RESOURCE_KEYS}
        return cls.from_dict(section | {"color": config["preprocess"]["color"]})

    def __post_init__(self) -> None:
        """Checks ``channels`` against the images' colour when the study is read (:func:`check_channels`)."""
        check_channels(self.channels, self.color)

    def weights_inputs(self) -> list[str]:
        """The pretrained weights file, when ``weights`` names one (none for random or imagenet)."""
        return [] if self.weights in ("random", "imagenet") else [self.weights]


def check_channels(channels: str, color: str) -> None:
    """Raises InputError naming ``classifier.training.channels`` when it asks for a one-channel network
    (``adapt``) for colour images (``preprocess.color: rgb``)."""
    if color == "rgb" and channels == "adapt":
        raise InputError(
            "classifier.training.channels: adapt makes a one-channel network for grayscale images, but "
            "preprocess.color is rgb; use repeat (colour images go in as their three channels, "
            "ImageNet-normalised)"
        )


@dataclass(frozen=True)
class EvaluationSettings(Settings):
    """``classifier.evaluation``: thresholds chosen on val, calibration bins, bootstrap CIs (rule
    ``evaluate_classifier``)."""

    SECTION = ("classifier", "evaluation")

    threshold: str
    fixed_threshold: float
    ece_bins: int
    bootstrap_resamples: int
    confidence: float
    batch_size: int
    seed: int


@dataclass(frozen=True)
class FairnessSettings(Settings):
    """``classifier.fairness``: the subgroup attributes, how age is binned (rule ``evaluate_classifier``)."""

    SECTION = ("classifier", "fairness")

    attributes: tuple[str, ...]
    age_bins: tuple[int, ...]
    missing: str
    no_finding_label: str


@dataclass(frozen=True)
class FocusSettings(Settings):
    """``classifier.focus``, with ``dataset.mask_classes`` (where the regions are) and the seed that picks the
    explained test images, ``classifier.evaluation.seed`` (rule ``classifier_focus``)."""

    images: int
    overlays: int
    regions: dict[str, tuple[str, ...]]
    mask_classes: tuple[str, ...]
    seed: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        classifier = config["classifier"]
        extra = {"mask_classes": config["dataset"]["mask_classes"], "seed": classifier["evaluation"]["seed"]}
        return cls.from_dict(dict(classifier["focus"]) | extra)
