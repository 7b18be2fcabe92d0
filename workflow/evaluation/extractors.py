"""Feature extractors for the image-quality metrics, as torch-fidelity feature extractors.

``evaluation.extractor`` picks one, ``evaluation.also`` more, computed beside it (:func:`resolve`):

- ``inception-v3-compat``: torch-fidelity's port of the TF-FID Inception-v3 (pool3, 2048-d; Heusel et al.
  2017), from ``evaluation.weights`` (a ``.pth`` file) or downloaded by torch-fidelity into ``$TORCH_HOME``
  (on an offline cluster node, download it beforehand or give the file);
- ``torchvision-inception``: torchvision's ImageNet Inception-v3 as the LoRA-fairness study's
  ``FIDEvaluator`` uses it (seeds spec 5.5): 2048-d pool features (``fc`` replaced by the identity),
  registered with torch-fidelity as :data:`TORCHVISION` (:class:`TorchvisionInception`). Not the TF-FID
  network: its FIDs are not comparable with standard FIDs. Weights from ``evaluation.torchvision_weights``
  (torchvision's ``inception_v3_google-0cc3c7bd.pth``; null: torchvision downloads it into ``$TORCH_HOME``;
  ``tiny``: the random-init stand-in ``inception`` of :mod:`workflow.common.tiny_models`,
  :func:`build_tiny_inception`);
- ``transformers``: any transformers vision model (``evaluation.model``, a hub id or a local folder), by
  default DINOv2 ViT-B/14 (``facebook/dinov2-base``): FD_DINOv2 of Stein et al., "Exposing flaws of generative
  model evaluation metrics", NeurIPS 2023. It is registered with torch-fidelity as :data:`TRANSFORMERS`
  (:class:`TransformersExtractor`), so ``torch_fidelity.calculate_metrics`` can use it too;
- ``classifier``: the penultimate features of the workflow's classifier trained on real images (run
  ``real``, ``results/classifier/real/model.pt``), registered as :data:`CLASSIFIER`
  (:class:`ClassifierExtractor`): a Fréchet distance in a space that knows the findings, as medical synthesis
  papers use a domain network in place of ImageNet's Inception. Its values compare only generators of one
  study (one trained classifier);
- ``tiny``: the same DINOv2 class with a tiny configuration and random weights (:func:`build_tiny`, the
  tiny stand-in ``dinov2`` of :mod:`workflow.common.tiny_models`), for the demo and the tests. Its numbers
  check the plumbing and measure nothing; every output says ``random-init tiny DINOv2 (demo)``.

Nothing is downloaded or loaded to describe an extractor (:meth:`ExtractorSpec.identity`), so cached features
are found without loading the model.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_fidelity
from torch_fidelity.helpers import vassert
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from workflow.common.errors import InputError
from workflow.common.model_card import read_card, weights_label, write_card
from workflow.common.provenance import file_hash
from workflow.evaluation.settings import EvaluationSettings
from workflow.prompts.embeddings import IMAGENET_MEAN, IMAGENET_STD, image_processor

INCEPTION = "inception-v3-compat"
TORCHVISION_KIND = "torchvision-inception"
TORCHVISION = "synthmed-torchvision-inception"
TRANSFORMERS = "synthmed-transformers"
TINY = "tiny"
CLASSIFIER_KIND = "classifier"
CLASSIFIER = "synthmed-classifier"
INCEPTIONS = (INCEPTION, TORCHVISION_KIND)
FIDELITY_NAMES = {INCEPTION: INCEPTION, TORCHVISION_KIND: TORCHVISION, CLASSIFIER_KIND: CLASSIFIER}
FEATURES = {INCEPTION: "2048", TORCHVISION_KIND: "2048", CLASSIFIER_KIND: "penultimate"}
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L") with which the classifier reads its images
TORCHVISION_FILE = "inception_v3.pth"
TORCHVISION_DOWNLOAD = "pretrained torchvision Inception-v3 (IMAGENET1K_V1, downloaded by torchvision)"
TINY_INCEPTION_WEIGHTS = "random-init torchvision Inception-v3 (demo)"
TINY_INCEPTION_CALIBRATION = 128
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


class TorchvisionInception(torch_fidelity.FeatureExtractorBase):
    """torchvision's Inception-v3 as a torch-fidelity feature extractor (feature ``"2048"``), exactly as the
    LoRA-fairness study's ``FIDEvaluator`` (seeds spec 5.5): ImageNet weights with torchvision's
    ``transform_input``, ``fc = Identity``, so the output is the 2048-d average pool; the gray images,
    replicated to RGB by the resize policy, are resized to 299 x 299 (bilinear with antialiasing, as
    ``transforms.Resize(299)`` of a square PIL image), scaled to [0, 1] and normalised with the ImageNet mean
    and std.

    Args:
        name: registry name (:data:`TORCHVISION`).
        features_list: ``["2048"]``.
        feature_extractor_weights_path: a torchvision Inception-v3 state dict (``.pth``; with the
            ``AuxLogits`` keys, as torchvision's file has them), or a folder holding one as
            :data:`TORCHVISION_FILE` (the tiny stand-in); None downloads torchvision's ``IMAGENET1K_V1``.
    """

    SIDE = 299

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, features_list)
        from torchvision.models import Inception_V3_Weights, inception_v3

        if feature_extractor_weights_path is None:
            try:
                self.model = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1)
            except (OSError, RuntimeError) as err:
                raise InputError(
                    f"evaluation.torchvision_weights: cannot download torchvision's Inception-v3 ({err}); on "
                    f"an offline machine give the file ({Inception_V3_Weights.IMAGENET1K_V1.url})"
                ) from None
        else:
            self.model = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
            load_torchvision_state(self.model, feature_extractor_weights_path)
        self.model.fc = torch.nn.Identity()
        self.model.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from torchvision.transforms.v2.functional import resize

        vassert(x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3, "expecting uint8 B x 3 x H x W")
        x = resize(x, [self.SIDE, self.SIDE], antialias=True)
        return (self.model((x.float() / 255 - self.mean) / self.std).float(),)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "2048"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros((1, 3, 299, 299), dtype=torch.uint8)


class ClassifierExtractor(torch_fidelity.FeatureExtractorBase):
    """A classifier trained by the workflow (:mod:`workflow.classifier.networks`) as a torch-fidelity feature
    extractor (feature ``"penultimate"``: the globally pooled features its linear head reads).

    The uint8 ``B x 3 x H x W`` images torch-fidelity hands over are turned gray with the ITU-R 601 luma
    weights (kept in colour for a classifier of colour images, its spec's ``color`` ``rgb``; they arrive in
    colour then, as ``evaluation.color`` must be ``preprocess.color`` with this extractor) and resized to
    the classifier's input side (bilinear, antialiased), then scaled to [0, 1]: the input the classifier was
    trained on.

    Args:
        name: registry name (:data:`CLASSIFIER`).
        features_list: ``["penultimate"]``.
        feature_extractor_weights_path: the classifier's ``model.pt``.
    """

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str, **kwargs: Any
    ) -> None:
        super().__init__(name, features_list)
        from workflow.classifier import networks

        self.model, spec, _ = networks.load(feature_extractor_weights_path)
        self.side, self.colour = spec.image_size, spec.color == "rgb"
        self.register_buffer("luma", torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from torchvision.transforms.v2.functional import resize

        vassert(x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3, "expecting uint8 B x 3 x H x W")
        images = x.float() if self.colour else (x.float() * self.luma).sum(dim=1, keepdim=True)
        images = resize(images, [self.side, self.side], antialias=True)
        return (self.model.penultimate(images / 255).float(),)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("penultimate",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "penultimate"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros((1, 3, 32, 32), dtype=torch.uint8)


def load_torchvision_state(model: torch.nn.Module, location: str) -> None:
    """Load a torchvision Inception-v3 state dict file, or :data:`TORCHVISION_FILE` in a folder, into
    ``model``.

    Raises:
        InputError: naming ``evaluation.torchvision_weights`` when there is no such file, or it is not a
            torchvision Inception-v3 state dict (with the ``AuxLogits`` keys torchvision's file has).
    """
    path = Path(location) / TORCHVISION_FILE if Path(location).is_dir() else Path(location)
    problem = f"evaluation.torchvision_weights: '{path}'"
    if not path.is_file():
        raise InputError(f"{problem} does not exist; give torchvision's inception_v3_google-0cc3c7bd.pth")
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, AttributeError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0][:300]
        raise InputError(f"{problem} is not a torchvision Inception-v3 state dict ({reason})") from None


def register() -> None:
    """Register :class:`TransformersExtractor`, :class:`TorchvisionInception` and :class:`ClassifierExtractor`
    with torch-fidelity as :data:`TRANSFORMERS`, :data:`TORCHVISION` and :data:`CLASSIFIER` (once)."""
    ours = (
        (TRANSFORMERS, TransformersExtractor),
        (TORCHVISION, TorchvisionInception),
        (CLASSIFIER, ClassifierExtractor),
    )
    for name, extractor in ours:
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, extractor)


def processor_side(processor: Any) -> int:
    """The square input side an image processor produces: its crop size, else its (shortest-edge) size."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    return int(size.get("height") or size["shortest_edge"])


@dataclass(frozen=True)
class ExtractorSpec:
    """Which extractor, from where: everything that decides the features, without loading anything.

    Attributes:
        kind: ``evaluation.extractor`` or one of ``evaluation.also``.
        location: weights file (inceptions; None downloads; the tiny torchvision Inception's folder), or hub
            id / model folder (transformers, tiny).
        resolution: ``evaluation.resolution`` (transformers and tiny; None: the image processor's size).
    """

    kind: str
    location: str | None
    resolution: int | None

    @property
    def fidelity_name(self) -> str:
        """The extractor's name in torch-fidelity's registry."""
        return FIDELITY_NAMES.get(self.kind, TRANSFORMERS)

    @property
    def feature(self) -> str:
        """The torch-fidelity feature (layer) the metrics use."""
        return FEATURES.get(self.kind, "pooled")

    def weights(self) -> str:
        """Plain words for provenance: which weights extract the features."""
        if self.kind == INCEPTION:
            return f"Inception-v3 weights file {self.location}" if self.location else INCEPTION_DOWNLOAD
        if self.kind == TORCHVISION_KIND:
            if self.location is None:
                return TORCHVISION_DOWNLOAD
            card = read_card(self.location)
            return str(card.get("weights", f"torchvision Inception-v3 weights file {self.location}"))
        if self.kind == CLASSIFIER_KIND:
            return f"penultimate features of the classifier {self.location}, trained on real images"
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
        if self.kind not in (*INCEPTIONS, CLASSIFIER_KIND):
            options["input_resolution"] = self.resolution
        return create_feature_extractor(self.fidelity_name, [self.feature], cuda=cuda, **options)


def resolve(settings: EvaluationSettings, kind: str, local: str | None) -> ExtractorSpec:
    """The extractor ``kind`` (``evaluation.extractor`` or one of ``evaluation.also``) as ``evaluation.*``
    configures it; ``local`` is its local file or folder when the workflow tracks one (the tiny models, an
    Inception weights file, a local transformers folder).

    Raises:
        InputError: naming the config key when a tiny stand-in comes without its folder.
    """
    if kind == TINY and not local:
        raise InputError("evaluation.extractor = tiny needs the folder built by rule build_tiny_model")
    if kind == CLASSIFIER_KIND and not local:
        raise InputError(
            "evaluation: the classifier extractor reads the classifier of run 'real'; add real to "
            "classifier.regimes"
        )
    if kind == TORCHVISION_KIND and settings.torchvision_weights == TINY and not local:
        raise InputError(
            "evaluation.torchvision_weights = tiny needs the folder built by rule build_tiny_model"
        )
    default = {INCEPTION: settings.weights, TORCHVISION_KIND: settings.torchvision_weights}.get(
        kind, settings.model
    )
    resolution = None if kind in (*INCEPTIONS, CLASSIFIER_KIND) else settings.resolution
    return ExtractorSpec(kind=kind, location=local or default, resolution=resolution)


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


def build_tiny_inception(out_dir: str | Path, seed: int) -> None:
    """Save a random-init torchvision Inception-v3 (seeded) as :data:`TORCHVISION_FILE` and a model card
    saying so into ``out_dir``: the stand-in for torchvision's ImageNet weights (demo and tests).

    torchvision's initialisation leaves BatchNorm's running statistics at mean 0, variance 1, and the
    features grow to about 1e10 through the network; one pass over four seeded noise images with the
    BatchNorm layers in training mode (cumulative statistics; at :data:`TINY_INCEPTION_CALIBRATION` px, a
    fifth of the cost at 299 px) sets them to what the layers produce: features of order 1 to 1000.

    Raises:
        RuntimeError: when the features of different images are (nearly) the same.
    """
    from torchvision.models import inception_v3

    torch.manual_seed(seed)
    model = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    side = TINY_INCEPTION_CALIBRATION
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ramps = torch.linspace(0, 1, side).expand(4, 1, side, -1) * torch.tensor([0.2, 0.5, 1.0, 0.8]).view(
        4, 1, 1, 1
    )
    model.eval()  # the auxiliary classifier (unused) needs 299 px; only the BatchNorm layers train
    with torch.no_grad():
        for norm in norms:
            norm.train().momentum = None
        model((torch.rand(4, 1, side, side).expand(-1, 3, -1, -1) - mean) / std)
        for norm in norms:
            norm.eval().momentum = 0.1
        spread = model((ramps.expand(-1, 3, -1, -1) - mean) / std).std(dim=0).max().item()
    if spread < 1e-3:
        raise RuntimeError(f"tiny Inception (seed {seed}) gives degenerate features (spread {spread:.1e})")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), Path(out_dir) / TORCHVISION_FILE)
    card = {
        "weights": TINY_INCEPTION_WEIGHTS,
        "seed": seed,
        "architecture": "torchvision inception_v3 (aux_logits, transform_input)",
        "batchnorm": f"running statistics of one pass over 4 seeded noise images of {side} px",
    }
    write_card(out_dir, card)
