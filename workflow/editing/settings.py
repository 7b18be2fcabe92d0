"""Settings of the editing stage: config section ``editing`` (resources/config.schema.yaml documents each
key).

Two classes, one per kind of job, so that a method setting never re-plans and a planning setting never
re-edits what it does not change: :class:`PlanSettings` (rule ``plan_edits``: which images, which edits) and
:class:`EditSettings` (rules ``edit_images`` and ``collect_edits``: how a method edits). A method receives its
settings as a plain dict (:meth:`EditSettings.method_settings`, the interface of
:mod:`workflow.editing.methods`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Self

from workflow.common.errors import InputError
from workflow.common.settings import Settings

METHOD_SECTIONS = {
    "sdedit": ("sdedit",),
    "ddim-p2p": ("p2p",),
    "null-text-p2p": ("p2p", "null_text"),
    "ledits++": ("ledits",),
}
"""Method -> the sub-sections of ``editing`` its settings come from (beside ``steps``, ``guidance_scale``)."""


@dataclass(frozen=True)
class Edit(Settings):
    """One entry of ``editing.edits``: ``remove`` or ``add`` a ``finding``, or ``set`` a demographic or
    tabular ``field`` to ``value``."""

    kind: str
    finding: str | None = None
    field: str | None = None
    value: Any = None

    def __post_init__(self) -> None:
        needs = {"remove": "finding", "add": "finding", "set": "field"}[self.kind]
        if getattr(self, needs) is None or (self.kind == "set" and self.value is None):
            wanted = "field and value" if self.kind == "set" else "finding"
            raise InputError(f"editing.edits: a '{self.kind}' edit needs its {wanted} ({self.to_dict()})")

    @property
    def name(self) -> str:
        """The edit in words, its id in tables and file names' source: "remove Pleural Effusion",
        "set sex=female"."""
        if self.kind == "set":
            return f"set {self.field}={self.value}"
        return f"{self.kind} {self.finding}"


@dataclass(frozen=True)
class PlanSettings(Settings):
    """``editing`` as rule ``plan_edits`` reads it: the edits, the images (``split``, ``max_images``,
    ``seed``) and how the work is cut (``shards``, ``batch_size``)."""

    edits: tuple[Edit, ...]
    split: str
    max_images: int | None
    seed: int
    shards: int
    batch_size: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        editing = config["editing"]
        return cls.from_dict({f.name: editing[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class SdeditSettings(Settings):
    """``editing.sdedit``: SDEdit (Meng et al. 2022), noise to ``strength`` of the schedule and denoise."""

    strength: float


@dataclass(frozen=True)
class P2pSettings(Settings):
    """``editing.p2p``: prompt-to-prompt controllers (Hertz et al. 2022)."""

    cross_replace_steps: float
    self_replace_steps: float
    word_weight: float
    local_blend: bool
    blend_threshold: float


@dataclass(frozen=True)
class NullTextSettings(Settings):
    """``editing.null_text``: null-text optimisation (Mokady et al. 2023, Alg. 1)."""

    inner_steps: int
    early_stop: float
    learning_rate: float


@dataclass(frozen=True)
class LeditsSettings(Settings):
    """``editing.ledits``: LEDITS++ (Brack et al. 2024) as diffusers runs it
    (:mod:`workflow.editing.ledits`)."""

    edit_guidance_scale: float
    edit_threshold: float
    skip: float
    use_intersect_mask: bool


@dataclass(frozen=True)
class ClipSettings(Settings):
    """``editing.clip``: the CLIP filter (:mod:`workflow.editing.clip_filter`), its model and thresholds."""

    model: str | None
    text_similarity_threshold: float
    clip_img_thresh: float
    clip_thresh: float
    clip_dir_thresh: float


@dataclass(frozen=True)
class LpipsSettings(Settings):
    """``editing.lpips``: LPIPS's backbone (``net``) and the local file of its torchvision weights
    (``weights``; None: no LPIPS) (:mod:`workflow.editing.perceptual`)."""

    net: str
    weights: str | None


@dataclass(frozen=True)
class EditSettings(Settings):
    """``editing`` as rules ``edit_images`` and ``collect_edits`` read it: the sampler, each method's
    section, the edited images' resolution (``diffusion.resolution``), the changed-region threshold, the
    CLIP filter (``clip``), LPIPS (``lpips``), whether edits are undone (``reversibility``), and the
    weights' ``dtype`` and ``tf32`` of the job."""

    steps: int
    guidance_scale: float
    sdedit: SdeditSettings
    p2p: P2pSettings
    null_text: NullTextSettings
    ledits: LeditsSettings
    region_percentile: float
    clip: ClipSettings
    lpips: LpipsSettings
    reversibility: bool
    dtype: str
    tf32: bool
    resolution: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        editing = config["editing"]
        keys = [f.name for f in fields(cls) if f.name != "resolution"]
        values = {key: editing[key] for key in keys}
        return cls.from_dict(values | {"resolution": config["diffusion"]["resolution"]})

    def method_settings(self, method: str) -> dict[str, Any]:
        """What method ``method`` receives: ``steps``, ``guidance_scale`` and its sections' keys."""
        values: dict[str, Any] = {"steps": self.steps, "guidance_scale": self.guidance_scale}
        for name in METHOD_SECTIONS.get(method, ()):
            values |= getattr(self, name).to_dict()
        return values
