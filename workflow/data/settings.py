"""Settings of the data stage: config sections ``dataset``, ``split`` and ``preprocess`` (the demo phantoms'
``phantom.settings`` are :class:`workflow.data.phantoms.PhantomSettings`). Each field is the schema key of the
same name; resources/config.schema.yaml documents it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from workflow.common.errors import InputError
from workflow.common.settings import Settings


@dataclass(frozen=True)
class DatasetSettings(Settings):
    """``dataset``: which adapter reads the data, the findings and how their labels are read.

    The adapter's own section (``dataset.<adapter>``) is read and checked key by key by the adapter
    (:mod:`workflow.data.adapters`), which names a missing or wrong key itself.
    """

    SECTION = ("dataset",)

    adapter: str
    labels: tuple[str, ...]
    uncertain_policy: str
    blank_policy: str
    mask_classes: tuple[str, ...]
    max_rejected_fraction: float
    chexpert: dict[str, Any] | None = None
    mimic_cxr: dict[str, Any] | None = field(default=None, metadata={"key": "mimic-cxr"})
    csv: dict[str, Any] | None = None
    imagefolder: dict[str, Any] | None = None
    volumes: dict[str, Any] | None = None
    chestxray14: dict[str, Any] | None = None
    pcam: dict[str, Any] | None = None

    def adapter_settings(self) -> Mapping[str, Any]:
        """The section of the selected adapter, ``dataset.<adapter>`` (empty when not given)."""
        return self.to_dict().get(self.adapter) or {}


@dataclass(frozen=True)
class SplitSettings(Settings):
    """``split``: patient fractions per split and the seed of the stratified split, or the dataset's own
    split (``predefined``; :func:`workflow.data.split.predefined_splits`)."""

    SECTION = ("split",)

    fractions: dict[str, float]
    seed: int
    predefined: bool = False

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        """``split``.

        Raises:
            InputError: naming ``split.predefined`` for PCam without it: PCam has no patient or slide ids
                (each patch is its own patient), so a split drawn here would put patches of one slide in
                training and test.
        """
        settings = super().of(config)
        if config["dataset"]["adapter"] == "pcam" and not settings.predefined:
            raise InputError(
                "split.predefined: PCam has no patient or slide ids (each patch is its own patient), so a "
                "split drawn here would put patches of one slide in train and test; set split.predefined: "
                "true to keep PCam's own train/valid/test, drawn from disjoint slides"
            )
        return settings


@dataclass(frozen=True)
class RejectionSettings(Settings):
    """What the split and finalize steps check the rejection lists against: ``dataset.labels`` (reported per
    split) and ``dataset.max_rejected_fraction``."""

    SECTION = ("dataset",)

    labels: tuple[str, ...]
    max_rejected_fraction: float

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        dataset = config["dataset"]
        return cls(tuple(dataset["labels"]), dataset["max_rejected_fraction"])


@dataclass(frozen=True)
class PreprocessSettings(Settings):
    """``preprocess``, and the two things preprocessing must know of ``dataset``: how many mask classes there
    are (``len(dataset.mask_classes)``; ids ``0..n-1``) and which reader opens volumes
    (``dataset.volumes.reader``; ``auto`` for 2D adapters)."""

    SECTION = ("preprocess",)

    resolution: int
    fit: str
    shards: int
    color: str = "grayscale"
    mask_classes: int = 0
    volume_reader: str = "auto"

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        section = config["preprocess"]
        return cls(
            section["resolution"],
            section["fit"],
            section["shards"],
            section["color"],
            len(config["dataset"]["mask_classes"]),
            configured_volume_reader(config),
        )


def configured_volume_reader(config: Mapping[str, Any]) -> str:
    """The reader that opens the study's volumes (:func:`workflow.data.slicing.load_volume`):
    ``dataset.volumes.reader`` for the volumes adapter, ``auto`` for the others. Every step that reads the
    volumes again (preprocessing, 3D generation, volume similarity) reads them with it, so that all of them
    see the same orientation where a file's two NIfTI orientations (qform, sform) disagree."""
    dataset = config["dataset"]
    return dataset["volumes"]["reader"] if dataset["adapter"] == "volumes" else "auto"
