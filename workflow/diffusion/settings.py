"""Settings of the diffusion stage: config section ``diffusion`` (resources/config.schema.yaml documents
each key), one class per rule: caching (:class:`CacheSettings`), fine-tuning (:class:`TrainSettings`) and
sampling (:class:`SampleSettings`), and for ``diffusion.base_model: tiny`` training the tiny SD's VAE
(:class:`TinyVaeSettings`); generators of kind ``mask-guided`` train and sample with ``diffusion.mask_guided``
(:class:`MaskGuidedTrainSettings`, :class:`MaskGuidedSampleSettings`). ``diffusion.base_model`` reaches the
rules as a model location (:mod:`workflow.diffusion.base_models`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from workflow.common.errors import InputError
from workflow.common.settings import RESOURCE_KEYS, Settings
from workflow.data.settings import configured_volume_reader
from workflow.prompts.settings import TabularSettings


def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``diffusion.<name>`` less its resource keys."""
    return {k: v for k, v in config["diffusion"][name].items() if k not in RESOURCE_KEYS}


@dataclass(frozen=True)
class CacheSettings(Settings):
    """``diffusion.cache`` and ``diffusion.resolution`` (rule ``cache_latents``)."""

    random_flip: bool
    batch_size: int
    resolution: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        return cls.from_dict(_section(config, "cache") | {"resolution": config["diffusion"]["resolution"]})


@dataclass(frozen=True)
class TinyVaeSettings(Settings):
    """``diffusion.tiny_vae``, ``diffusion.tiny_seed`` and ``diffusion.resolution`` (rule ``train_tiny_vae``:
    the tiny SD's VAE trained on the training images, :mod:`workflow.diffusion.tiny_vae`)."""

    tiny_seed: int
    steps: int
    batch_size: int
    learning_rate: float
    kl_weight: float
    resolution: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        diffusion = config["diffusion"]
        keys = {"tiny_seed": diffusion["tiny_seed"], "resolution": diffusion["resolution"]}
        return cls.from_dict(_section(config, "tiny_vae") | keys)


@dataclass(frozen=True)
class LoraSettings(Settings):
    """``diffusion.lora``: LoRA adapters (Hu et al. 2022) on the UNet's attention projections, via peft."""

    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]


LEARNING_RATES = {"full": 1e-5, "lora": 1e-4}
"""Default ``diffusion.train.learning_rate`` per method: PRISM's full fine-tuning and diffusers' LoRA example
(``train_text_to_image_lora.py``)."""


@dataclass(frozen=True)
class TrainSettings(Settings):
    """``diffusion.train`` plus ``diffusion.method`` and ``diffusion.lora`` (rule ``finetune_sd``); a null
    ``learning_rate`` takes the method's default (:data:`LEARNING_RATES`)."""

    method: str
    seed: int
    epochs: int
    max_steps: int | None
    batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    adam_betas: tuple[float, float]
    adam_epsilon: float
    weight_decay: float
    lr_scheduler: str
    lr_warmup_steps: int
    max_grad_norm: float
    mixed_precision: str
    gradient_checkpointing: bool
    snr_gamma: float | None
    noise_offset: float
    caption_dropout: float
    ema: bool
    ema_decay: float
    checkpoint_steps: int
    checkpoints_total_limit: int
    validation_steps: int | None
    validation_prompts: int
    validation_inference_steps: int
    log_with: str
    log_steps: int
    tf32: bool
    fused_adam: bool
    foreach_ema: bool
    channels_last: bool
    compile: bool
    lora: LoraSettings

    def __post_init__(self) -> None:
        if self.ema and self.method != "full":
            raise InputError("diffusion.train.ema: EMA is for method 'full' only (LoRA trains no full UNet)")

    @classmethod
    def of(cls, config: Mapping[str, Any], method: str | None = None) -> Self:
        """The settings of a generator fine-tuned with ``method`` (default ``diffusion.method``)."""
        diffusion = config["diffusion"]
        method = method or diffusion["method"]
        section = _section(config, "train")
        rate = section["learning_rate"] or LEARNING_RATES[method]
        extra = {"method": method, "lora": diffusion["lora"], "learning_rate": rate}
        return cls.from_dict(section | extra)


@dataclass(frozen=True)
class DesignSettings(Settings):
    """``diffusion.sample.design``: which images the synthetic dataset holds (rule ``plan_samples``).

    ``training-prompts``: the distinct training prompts, ``images_per_prompt`` each (PRISM, MEP-LDM).
    ``demographic``: ``images`` draws of one finding, sex, race and age, uniformly and independently, as
    the LoRA-fairness study's synthetic_dataset_creation.py does (seeds_spec 5.3), captioned with
    ``prompts.demographics``.
    """

    kind: str
    images: int
    findings: tuple[str, ...] | None
    sexes: tuple[str, ...]
    races: tuple[str, ...]
    ages: tuple[int, int]


@dataclass(frozen=True)
class SampleSettings(Settings):
    """``diffusion.sample`` and ``diffusion.resolution`` (rules ``plan_samples``, ``sample_images``)."""

    seed: int
    images_per_prompt: int
    max_prompts: int | None
    shards: int
    batch_size: int | str
    scheduler: str
    steps: int
    guidance_scale: float
    dtype: str
    fuse_lora: bool
    channels_last: bool
    compile: bool
    grayscale: bool
    design: DesignSettings
    resolution: int

    @classmethod
    def of(cls, config: Mapping[str, Any], images_per_prompt: int | None = None) -> Self:
        """The section, with a generator's own ``images_per_prompt`` when it sets one."""
        values = _section(config, "sample") | {"resolution": config["diffusion"]["resolution"]}
        return cls.from_dict(values | ({"images_per_prompt": images_per_prompt} if images_per_prompt else {}))


@dataclass(frozen=True)
class MaskGuidedTrainSettings(Settings):
    """``diffusion.mask_guided.train`` and ``dataset.mask_classes`` (rule ``train_mask_guided``: the 2D
    segmentation-guided diffusion of Konz et al. 2024, :mod:`workflow.diffusion.mask_guided`)."""

    resolution: int
    batch_size: int
    steps: int
    learning_rate: float
    warmup_steps: int
    max_grad_norm: float
    timesteps: int
    channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]
    num_res_blocks: int
    norm_num_groups: int
    ablation_probability: float
    seed: int
    checkpoint_steps: int
    mask_classes: tuple[str, ...]

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        section = {
            k: v for k, v in config["diffusion"]["mask_guided"]["train"].items() if k not in RESOURCE_KEYS
        }
        return cls.from_dict(section | {"mask_classes": config["dataset"]["mask_classes"]})


@dataclass(frozen=True)
class MaskGuidedSampleSettings(Settings):
    """``diffusion.mask_guided.sample`` and ``dataset.mask_classes`` (rule ``sample_mask_guided``: one image
    per real mask of a split, :mod:`workflow.diffusion.mask_guided`)."""

    split: str
    steps: int
    batch_size: int
    ablation_probability: float
    seed: int
    shards: int
    remove_classes: tuple[str, ...]
    mask_classes: tuple[str, ...]

    @classmethod
    def of(cls, config: Mapping[str, Any], generator: str | None = None) -> Self:
        """The section's settings, with ``generator``'s own ``remove_classes`` when its entry of
        ``diffusion.generators`` sets them."""
        section = {
            k: v for k, v in config["diffusion"]["mask_guided"]["sample"].items() if k not in RESOURCE_KEYS
        }
        entry = (config["diffusion"]["generators"] or {}).get(generator) or {}
        if entry.get("remove_classes") is not None:
            section["remove_classes"] = entry["remove_classes"]
        return cls.from_dict(section | {"mask_classes": config["dataset"]["mask_classes"]})

    def __post_init__(self) -> None:
        """Raises InputError naming a class of ``remove_classes`` that is not in ``dataset.mask_classes``, or
        the background (when the study is read, not when a sampling job starts)."""
        unknown = sorted(set(self.remove_classes) - set(self.mask_classes[1:]))
        if unknown:
            raise InputError(
                f"diffusion.mask_guided.sample.remove_classes (or a generator's): {unknown} are not classes "
                f"of dataset.mask_classes other than the background ({list(self.mask_classes[1:])})"
            )


@dataclass(frozen=True)
class MaskTextTrainSettings(Settings):
    """``diffusion.mask_text.train``, ``dataset.mask_classes`` and the reader of the study's volumes
    (:func:`workflow.data.settings.configured_volume_reader`) (rule ``train_mask_text``: DGM-VLC's mask- and
    clinical-text-conditioned pixel diffusion, :mod:`workflow.diffusion.mask_text`)."""

    spatial_dims: int
    resolution: int
    volume_shape: tuple[int, ...] | None
    patch_size: tuple[int, ...] | None
    batch_size: int
    steps: int
    learning_rate: float
    warmup_steps: int
    max_grad_norm: float
    timesteps: int
    channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]
    num_res_blocks: int
    norm_num_groups: int
    text_encoder: str
    max_tokens: int
    text_dropout: float
    seed: int
    checkpoint_steps: int
    mask_classes: tuple[str, ...]
    volume_reader: str = "auto"

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        section = {
            k: v for k, v in config["diffusion"]["mask_text"]["train"].items() if k not in RESOURCE_KEYS
        }
        dataset = {"mask_classes": config["dataset"]["mask_classes"]}
        return cls.from_dict(section | dataset | {"volume_reader": configured_volume_reader(config)})


@dataclass(frozen=True)
class MaskTextSampleSettings(Settings):
    """``diffusion.mask_text.sample`` and ``dataset.mask_classes`` (rule ``sample_mask_text``: one image per
    real mask of a split and its caption, :mod:`workflow.diffusion.mask_text`)."""

    split: str
    steps: int
    batch_size: int
    guidance_scale: float
    overlap: float
    window_batch_size: int
    seed: int
    shards: int
    mask_classes: tuple[str, ...]
    resolution: int
    fit: str
    volume_reader: str = "auto"

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        """The section's settings, with ``dataset.mask_classes``, the reader of the real volumes
        (:func:`workflow.data.settings.configured_volume_reader`) and, for the slices of generated volumes,
        ``preprocess.resolution`` and ``preprocess.fit`` (``resolution``, ``fit``: as the real slices were
        made)."""
        section = {
            k: v for k, v in config["diffusion"]["mask_text"]["sample"].items() if k not in RESOURCE_KEYS
        }
        preprocess = config["preprocess"]
        return cls.from_dict(
            section
            | {
                "mask_classes": config["dataset"]["mask_classes"],
                "resolution": preprocess["resolution"],
                "fit": preprocess["fit"],
                "volume_reader": configured_volume_reader(config),
            }
        )


@dataclass(frozen=True)
class ChangeSettings(Settings):
    """One entry of ``diffusion.mask_text.differences.changes``: clinical ``field`` set to ``value``, or its
    number plus ``add``."""

    field: str
    value: str | float | bool | None = None
    add: float | None = None


@dataclass(frozen=True)
class MaskTextDifferenceSettings(Settings):
    """``diffusion.mask_text.differences`` with the generator's sampling (``diffusion.mask_text.sample``:
    DDIM, guidance, seed) and captions (``prompts.tabular``) (rule ``difference_maps``: DGM-VLC's voxel
    difference maps, :mod:`workflow.diffusion.differences`)."""

    KEY = "diffusion.mask_text.differences"

    split: str
    sources: int
    changes: tuple[ChangeSettings, ...]
    sample: MaskTextSampleSettings
    tabular: TabularSettings

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        section = {
            k: v for k, v in config["diffusion"]["mask_text"]["differences"].items() if k not in RESOURCE_KEYS
        }
        sample = MaskTextSampleSettings.of(config).to_dict()
        return cls.from_dict(section | {"sample": sample, "tabular": config["prompts"]["tabular"]})

    def __post_init__(self) -> None:
        """Raises InputError naming the change that has neither or both of ``value`` and ``add`` (when the
        study is read)."""
        for number, change in enumerate(self.changes):
            if (change.value is None) == (change.add is None):
                raise InputError(
                    f"{self.KEY}.changes[{number}]: give the field '{change.field}' either a value "
                    "({field, value}: set it) or an add ({field, add}: a numeric offset), not both or neither"
                )
