"""Feature extractors for the image-quality metrics, as torch-fidelity feature extractors.

``evaluation.extractor`` picks one (:func:`resolve`):

- ``inception-v3-compat``: torch-fidelity's port of the TF-FID Inception-v3 (pool3, 2048-d; Heusel et al.
  2017), from ``evaluation.weights`` (a ``.pth`` file) or downloaded by torch-fidelity into ``$TORCH_HOME``
  (on an offline cluster node, download it beforehand or give the file);
- ``transformers``: any transformers vision model (``evaluation.model``, a hub id or a local folder), by
  default DINOv2 ViT-B/14 (``facebook/dinov2-base``): FD_DINOv2 of Stein et al., "Exposing flaws of generative
  model evaluation metrics", NeurIPS 2023. It is registered with torch-fidelity as :data:`TRANSFORMERS`
  (:class:`TransformersExtractor`), so ``torch_fidelity.calculate_metrics`` can use it too;
- ``tiny``: the same DINOv2 class with a tiny configuration and random weights (:func:`build_tiny`, the
  tiny stand-in ``dinov2`` of :mod:`workflow.common.tiny_models`), for the demo and the tests. Its numbers
  check the plumbing and measure nothing; every output says ``random-init tiny DINOv2 (demo)``.

Nothing is downloaded or loaded to describe an extractor (:meth:`ExtractorSpec.identity`), so cached features
are found without loading the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_fidelity
from torch_fidelity.helpers import vassert
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from workflow.common.errors import InputError
from workflow.common.model_card import weights_label, write_card
from workflow.common.provenance import file_hash
from workflow.evaluation.settings import EvaluationSettings
from workflow.prompts.embeddings import IMAGENET_MEAN, IMAGENET_STD, image_processor

INCEPTION = "inception-v3-compat"
TRANSFORMERS = "synthmed-transformers"
TINY = "tiny"
DEFAULT_MODEL = "facebook/dinov2-base"
TINY_WEIGHTS = "random-init tiny DINOv2 (demo)"
INCEPTION_DOWNLOAD = (
    "pretrained TF-FID Inception-v3 (weights-inception-2015-12-05, downloaded by torch-fidelity)"
)
# DINOv2's architecture at toy size: 32-d features, 8x8 patches of a 64 px input.
TINY_DINOV2: dict[str, int] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "mlp_ratio": 2,
    "patch_size": 8,
    "image_size": 64,
}


class TransformersExtractor(torch_fidelity.FeatureExtractorBase):
    """A transformers vision model as a torch-fidelity feature extractor (feature ``"pooled"``).

    torch-fidelity hands over uint8 ``B x 3 x H x W`` images. They are resized to the model's input side with
    torch-fidelity's TF1-compatible bilinear interpolation (as its own DINOv2 extractors do), scaled to [0, 1]
    and normalised with the mean and std of the model's image processor. The feature is ``pooler_output``
    (for DINOv2 the layer-normed CLS token, the FD_DINOv2 feature), or the mean of the last hidden state for
    models without a pooler.

    Args:
        name: registry name (:data:`TRANSFORMERS`).
        features_list: ``["pooled"]``.
        feature_extractor_weights_path: hub id or local folder for ``from_pretrained`` (torch-fidelity's name
            for where an extractor's weights are); :data:`DEFAULT_MODEL` when None.
        input_resolution: side the images are resized to; None takes the image processor's crop size (its
            size when it does not crop), 224 for DINOv2.
    """

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        input_resolution: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, features_list)
        from transformers import AutoImageProcessor, AutoModel

        location = feature_extractor_weights_path or DEFAULT_MODEL
        try:
            processor = AutoImageProcessor.from_pretrained(location)
            self.model = AutoModel.from_pretrained(location).eval()
        except OSError as err:
            raise InputError(
                f"evaluation.model: cannot load '{location}' ({err}); on an offline machine download it "
                "first (hf download) or give a local folder"
            ) from None
        self.resolution = input_resolution or processor_side(processor)
        mean = getattr(processor, "image_mean", None) or IMAGENET_MEAN
        std = getattr(processor, "image_std", None) or IMAGENET_STD
        self.register_buffer("mean", 255 * torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", 255 * torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vassert(x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3, "expecting uint8 B x 3 x H x W")
        size = (self.resolution, self.resolution)
        x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=size, align_corners=False)
        output = self.model(pixel_values=(x - self.mean) / self.std)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            pooled = output.last_hidden_state.mean(dim=1)
        return (pooled.flatten(1).float(),)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("pooled",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "pooled"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros((1, 3, 8, 8), dtype=torch.uint8)


def register() -> None:
    """Register :class:`TransformersExtractor` with torch-fidelity as :data:`TRANSFORMERS` (once)."""
    if TRANSFORMERS not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(TRANSFORMERS, TransformersExtractor)


def processor_side(processor: Any) -> int:
    """The square input side an image processor produces: its crop size, else its (shortest-edge) size."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    return int(size.get("height") or size["shortest_edge"])


@dataclass(frozen=True)
class ExtractorSpec:
    """Which extractor, from where: everything that decides the features, without loading anything.

    Attributes:
        kind: ``evaluation.extractor``.
        location: weights file (Inception; None downloads), or hub id / model folder (transformers, tiny).
        resolution: ``evaluation.resolution`` (transformers and tiny; None: the image processor's size).
    """

    kind: str
    location: str | None
    resolution: int | None

    @property
    def fidelity_name(self) -> str:
        """The extractor's name in torch-fidelity's registry."""
        return INCEPTION if self.kind == INCEPTION else TRANSFORMERS

    @property
    def feature(self) -> str:
        """The torch-fidelity feature (layer) the metrics use."""
        return "2048" if self.kind == INCEPTION else "pooled"

    def weights(self) -> str:
        """Plain words for provenance: which weights extract the features."""
        if self.kind == INCEPTION:
            return f"Inception-v3 weights file {self.location}" if self.location else INCEPTION_DOWNLOAD
        return weights_label(str(self.location))

    def weights_hash(self) -> str | None:
        """SHA-256 (16 hex digits) over the local weights file, or over every file of a local model folder;
        None for downloaded weights and hub ids (identified by their name)."""
        path = Path(self.location) if self.location else None
        if path is None or not path.exists():
            return None
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return hashlib.sha256("".join(file_hash(p) for p in files).encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """What makes two extractions comparable (part of the feature-cache key)."""
        return {
            "kind": self.kind,
            "torch_fidelity_name": self.fidelity_name,
            "feature": self.feature,
            "location": self.location,
            "resolution": self.resolution,
            "weights_sha256_16": self.weights_hash(),
        }

    def create(self, cuda: bool) -> torch_fidelity.FeatureExtractorBase:
        """Build the extractor through torch-fidelity's registry (this loads or downloads the weights)."""
        from torch_fidelity.utils import create_feature_extractor

        register()
        options: dict[str, Any] = {"feature_extractor_weights_path": self.location, "verbose": False}
        if self.kind != INCEPTION:
            options["input_resolution"] = self.resolution
        return create_feature_extractor(self.fidelity_name, [self.feature], cuda=cuda, **options)


def resolve(settings: EvaluationSettings, extractor_path: str | None) -> ExtractorSpec:
    """The extractor ``evaluation.*`` asks for; ``extractor_path`` is its local file or folder when the
    workflow tracks one (the tiny model, an Inception weights file, a local transformers folder).

    Raises:
        InputError: naming ``evaluation.extractor`` when ``tiny`` comes without its folder.
    """
    kind = settings.extractor
    if kind == TINY and not extractor_path:
        raise InputError("evaluation.extractor = tiny needs the folder built by rule build_tiny_model")
    default = settings.weights if kind == INCEPTION else settings.model
    resolution = None if kind == INCEPTION else settings.resolution
    return ExtractorSpec(kind=kind, location=extractor_path or default, resolution=resolution)


def build_tiny(out_dir: str | Path, seed: int) -> None:
    """Save the tiny random DINOv2 (seeded), its image processor and a model card saying so into ``out_dir``.

    Raises:
        RuntimeError: when the random network maps different images to (nearly) the same features; metrics
            on such features would all be 0 (the pitfall of a default-initialised random Inception).
    """
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**TINY_DINOV2)).eval()
    probe = torch.linspace(0, 1, TINY_DINOV2["image_size"]).expand(4, 3, TINY_DINOV2["image_size"], -1)
    probe = probe * torch.tensor([0.5, 1.0, 2.0, -1.0]).view(4, 1, 1, 1)
    with torch.no_grad():
        spread = model(pixel_values=probe).pooler_output.std(dim=0).max().item()
    if spread < 1e-3:
        raise RuntimeError(f"tiny extractor (seed {seed}) gives degenerate features (spread {spread:.1e})")
    model.save_pretrained(out_dir)
    image_processor(TINY_DINOV2["image_size"]).save_pretrained(out_dir)
    card = {"weights": TINY_WEIGHTS, "seed": seed, "architecture": "Dinov2Model", "config": TINY_DINOV2}
    write_card(out_dir, card)
