"""Settings of the prompts stage: config section ``prompts`` (resources/config.schema.yaml documents it).

Three rules read parts of it: ``embed_images`` what decides the embeddings (:class:`EmbedSettings`),
``cluster_embeddings`` the clustering keys of ``prompts.mep`` (:class:`ClusterSettings`) and
``build_prompts`` the texts (:class:`PromptSettings`, with ``prompts.mep`` reduced to its template). So
changing k re-clusters without re-embedding, and no key reruns a step it does not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from workflow.common.settings import Settings


@dataclass(frozen=True)
class CaptionSettings(Settings):
    """``prompts.labels`` (PRISM) or ``prompts.demographics`` (LoRA-fairness): one caption template."""

    template: str
    empty_caption: str | None
    no_findings: str
    separator: str
    last_separator: str
    lowercase: bool
    rename: dict[str, str]
    unknown_values: tuple[str, ...]


@dataclass(frozen=True)
class TabularField(Settings):
    """One entry of ``prompts.tabular.fields``: a clinical field, its phrase and its cleaning rules."""

    field: str
    text: str
    values: dict[str, str | None]
    missing: tuple[str | float, ...]
    absolute: bool


@dataclass(frozen=True)
class TabularSettings(Settings):
    """``prompts.tabular`` (DGM-VLC): a prefix and the fields in sentence order."""

    prefix: str
    separator: str
    fields: tuple[TabularField, ...]


@dataclass(frozen=True)
class ClassSettings(Settings):
    """``prompts.classes``: the column giving each image's class, and display names of its values."""

    column: str | None
    names: dict[str, str]


@dataclass(frozen=True)
class BalanceSettings(Settings):
    """``prompts.balance``: MEP-LDM's equal images per prompt and per class."""

    enabled: bool
    min_prompts_per_class: int
    max_images: int | None


@dataclass(frozen=True)
class OutlierSettings(Settings):
    """``prompts.mep.outliers``: MEP-LDM's histology outlier rule, a lower bound per image feature."""

    enabled: bool
    min_mean_v: float
    min_mean_s: float
    min_std_v: float
    min_std_s: float
    min_std_h: float
    min_laplacian_var: float
    min_contours: float

    def bounds(self) -> dict[str, float]:
        """Rule name -> lower bound (every key but ``enabled``)."""
        return {k: v for k, v in self.to_dict().items() if k != "enabled"}


@dataclass(frozen=True)
class MepTemplate(Settings):
    """Of ``prompts.mep``, what the prompt text needs: the template (``{cluster}`` in words, ``{label}``)."""

    template: str


@dataclass(frozen=True)
class EmbedSettings(Settings):
    """What decides the embeddings (rule ``embed_images``): ``prompts.mep.batch_size``, ``shards``, whether
    MEP's outlier features are computed too (``prompts.mep.outliers.enabled``)."""

    batch_size: int
    shards: int
    outlier_features: bool

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        mep = config["prompts"]["mep"]
        return cls(mep["batch_size"], mep["shards"], mep["outliers"]["enabled"])


@dataclass(frozen=True)
class ClusterSettings(Settings):
    """What decides the clusters (rule ``cluster_embeddings``): the clustering keys of ``prompts.mep``, the
    k-means seed ``prompts.seed`` and ``prompts.classes`` (reported per cluster)."""

    k: int | str
    k_range: tuple[int, int]
    validity_index: str
    n_init: int
    minibatch_size: int | None
    outliers: OutlierSettings
    seed: int
    classes: ClassSettings

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        prompts = config["prompts"]
        keys = ("k", "k_range", "validity_index", "n_init", "minibatch_size", "outliers")
        picked = {key: prompts["mep"][key] for key in keys}
        return cls.from_dict(picked | {"seed": prompts["seed"], "classes": prompts["classes"]})


@dataclass(frozen=True)
class PromptSettings(Settings):
    """``prompts`` as rule ``build_prompts`` reads it: of ``prompts.mep`` only the template (its embedding
    and clustering keys reach the prompts through the clusters file)."""

    SECTION = ("prompts",)

    strategies: tuple[str, ...]
    separator: str
    seed: int
    labels: CaptionSettings
    demographics: CaptionSettings
    tabular: TabularSettings
    classes: ClassSettings
    balance: BalanceSettings
    mep: MepTemplate

    @classmethod
    def of(cls, config: Mapping[str, Any], strategies: Sequence[str] | None = None) -> Self:
        """The section, or its prompt variant with ``strategies`` (:mod:`workflow.prompts.variants`)."""
        prompts = dict(config["prompts"]) | {"mep": {"template": config["prompts"]["mep"]["template"]}}
        return cls.from_dict(prompts | ({"strategies": list(strategies)} if strategies else {}))
