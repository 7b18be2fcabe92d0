"""Settings of the evaluation stage: config section ``evaluation`` (resources/config.schema.yaml documents
each key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from workflow.classifier.regimes import real_classifier
from workflow.common.errors import InputError
from workflow.common.settings import RESOURCE_KEYS, Settings
from workflow.common.tiny_models import tiny_model_inputs
from workflow.data.settings import configured_volume_reader


@dataclass(frozen=True)
class EvaluationSettings(Settings):
    """``evaluation`` (rule ``image_metrics``), less ``tiny_seed`` (the tiny extractor is an input of the
    rule, its folder, built with that seed by ``build_tiny_model``), ``conditional_fidelity``
    (:class:`ConditionalSettings`), ``mask_faithfulness`` (:class:`MaskFaithfulnessSettings`) and
    ``volume_similarity`` (:class:`VolumeSimilaritySettings`)."""

    SECTION = ("evaluation",)

    reference_split: str
    extractor: str
    also: tuple[str, ...]
    weights: str | None
    torchvision_weights: str | None
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
        """The section's settings.

        Raises:
            InputError: naming ``evaluation.color`` when the real classifier is a feature space (extractor
                ``classifier``) and the images would reach it in another colour than it was trained on
                (``preprocess.color``).
        """
        skip = {*RESOURCE_KEYS, "tiny_seed", "conditional_fidelity", "mask_faithfulness", "volume_similarity"}
        settings = cls.from_dict({k: v for k, v in config["evaluation"].items() if k not in skip})
        trained_on = config.get("preprocess", {}).get("color", "grayscale")  # the schema's default
        if "classifier" in settings.feature_spaces() and settings.color != trained_on:
            raise InputError(
                f"evaluation.color: {settings.color} images would reach the classifier extractor, which was "
                f"trained on preprocess.color {trained_on} images; set evaluation.color: {trained_on}"
            )
        return settings

    def feature_spaces(self) -> tuple[str, ...]:
        """Every extractor the metrics are computed with: ``extractor`` first, then ``also``.

        Raises:
            InputError: when ``also`` repeats ``extractor``.
        """
        if self.extractor in self.also:
            raise InputError(
                f"evaluation.also: '{self.extractor}' is evaluation.extractor already; list other extractors"
            )
        return (self.extractor, *self.also)


@dataclass(frozen=True)
class ConditionalSettings(Settings):
    """``evaluation.conditional_fidelity`` (rule ``conditional_fidelity``)."""

    SECTION = ("evaluation", "conditional_fidelity")

    enabled: bool
    min_real_auroc: float
    bootstrap_resamples: int
    confidence: float
    seed: int
    batch_size: int


@dataclass(frozen=True)
class MaskFaithfulnessSettings(Settings):
    """``evaluation.mask_faithfulness`` and ``dataset.mask_classes`` (rules ``train_segmenter`` and
    ``mask_faithfulness``, :mod:`workflow.evaluation.segmentation`)."""

    enabled: bool
    resolution: int
    batch_size: int
    steps: int
    learning_rate: float
    channels: tuple[int, ...]
    num_res_units: int
    seed: int
    checkpoint_steps: int
    mask_classes: tuple[str, ...]

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        section = {
            k: v for k, v in config["evaluation"]["mask_faithfulness"].items() if k not in RESOURCE_KEYS
        }
        return cls.from_dict(section | {"mask_classes": config["dataset"]["mask_classes"]})


@dataclass(frozen=True)
class VolumeSimilaritySettings(Settings):
    """``evaluation.volume_similarity``, ``dataset.mask_classes`` and the reader of the real volumes
    (:func:`workflow.data.settings.configured_volume_reader`) (rule ``volume_similarity``,
    :mod:`workflow.evaluation.structural`)."""

    kernel_size: int
    kernel_sigma: float
    mask_classes: tuple[str, ...]
    volume_reader: str = "auto"

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        section = dict(config["evaluation"]["volume_similarity"])
        dataset = {"mask_classes": config["dataset"]["mask_classes"]}
        return cls.from_dict(section | dataset | {"volume_reader": configured_volume_reader(config)})


def extractor_inputs(config: Mapping[str, Any]) -> dict[str, str]:
    """Extractor kind -> its local file or folder, for every feature space whose weights the workflow tracks
    (rule ``image_metrics`` takes them as inputs): the tiny stand-ins, Inception weights files, a local
    transformers folder, the real-data classifier (none for downloads and hub ids).

    Raises:
        InputError: when ``evaluation.also`` repeats ``evaluation.extractor``.
    """
    evaluation, real = config["evaluation"], real_classifier(config)
    local = {
        "inception-v3-compat": [evaluation["weights"]] if evaluation["weights"] else [],
        "torchvision-inception": tiny_model_inputs(config, "inception")
        or ([evaluation["torchvision_weights"]] if evaluation["torchvision_weights"] else []),
        "transformers": [evaluation["model"]] if Path(evaluation["model"]).is_dir() else [],
        "tiny": tiny_model_inputs(config, "dinov2"),
        "classifier": [real["model"]] if real else [],
    }
    kinds = EvaluationSettings.of(config).feature_spaces()
    return {kind: local[kind][0] for kind in kinds if local[kind]}
