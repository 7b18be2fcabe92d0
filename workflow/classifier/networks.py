"""Classifier networks: torchvision ResNet / DenseNet or a small CNN, their weights and their Grad-CAM layer.

Backbones (``classifier.training.backbone``):

- ``resnet18``, ``resnet50`` (He et al., CVPR 2016) and ``densenet121`` (Huang et al., CVPR 2017) from
  torchvision, the final layer replaced by a linear head with one logit per finding (multi-label);
- ``small-cnn``: four conv-BN-ReLU blocks (32, 64, 128, 256 channels, 2x2 max-pooling between them), global
  average pooling and a linear head. For tests and laptops: its Grad-CAM map is 1/8 of the input side (8x8 at
  64 px) where a ResNet's or DenseNet's is 1/32.

Weights (``classifier.training.weights``):

- ``random``: seeded random initialisation; outputs record it as ``random-init (demo)``;
- ``imagenet``: torchvision's ImageNet weights (``weights="DEFAULT"``), downloaded into the torch hub cache
  on first use (on a cluster node without internet, fill ``$TORCH_HOME`` beforehand); not for ``small-cnn``;
- a file path: a torchvision-format state dict of the same backbone (e.g. a ResNet-50 pretrained on chest
  X-rays). Head keys (``fc.*``, ``classifier.*``) are ignored; any other missing or unexpected key is an
  error.

Input, images in [0, 1]: colour images (``preprocess.color: rgb``, e.g. PCam's H&E patches) as
``(B, 3, H, W)``, normalised with the ImageNet mean and std; grayscale ones as ``(B, 1, H, W)``, handled as
``classifier.training.channels`` says:

- ``repeat``: the gray channel is repeated to 3 channels and normalised with the ImageNet mean and std, so
  ImageNet weights are used as trained (what the LoRA-fairness and PRISM classifiers do by converting to RGB);
- ``adapt``: the first convolution takes one channel; pretrained filters are summed over their RGB inputs
  (as timm does for ``in_chans=1``) and the input is normalised with the mean of ImageNet's mean and std.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from workflow.classifier.settings import check_channels
from workflow.common.errors import InputError
from workflow.common.files import atomic_output
from workflow.common.provenance import file_hash

TORCHVISION = ("resnet18", "resnet50", "densenet121")
BACKBONES = (*TORCHVISION, "small-cnn")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_PREFIXES = ("fc.", "classifier.")


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a trained classifier (stored in ``model.pt`` next to its weights)."""

    backbone: str
    channels: str
    labels: tuple[str, ...]
    image_size: int
    color: str = "grayscale"
    """``preprocess.color`` of the images it reads: ``grayscale`` (1 channel) or ``rgb`` (3)."""

    def __post_init__(self) -> None:
        """Raises InputError for ``adapt`` with colour images (:func:`check_channels`)."""
        check_channels(self.channels, self.color)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks with max-pooling between them, global average pooling, a linear head."""

    def __init__(
        self, in_channels: int, n_outputs: int, widths: tuple[int, ...] = (32, 64, 128, 256)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            previous = widths[i - 1] if i else in_channels
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(widths[-1], n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class Classifier(nn.Module):
    """A backbone behind the input handling of ``spec`` (colour, or the grayscale handling of its
    ``channels``); returns one logit per finding."""

    def __init__(self, backbone: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.repeat = spec.color == "grayscale" and spec.channels == "repeat"
        imagenet = self.repeat or spec.color == "rgb"
        mean = IMAGENET_MEAN if imagenet else (sum(IMAGENET_MEAN) / 3,)
        std = IMAGENET_STD if imagenet else (sum(IMAGENET_STD) / 3,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.expand(-1, 3, -1, -1) if self.repeat else images
        return self.backbone((x - self.mean) / self.std)

    def head(self) -> nn.Linear:
        """The linear layer that reads the findings off the image's features."""
        net = self.backbone
        return net.fc if hasattr(net, "fc") else net.classifier

    def penultimate(self, images: torch.Tensor) -> torch.Tensor:
        """The features the head reads (globally pooled, ``(B, d)``): the image as the classifier sees it."""
        captured: list[torch.Tensor] = []
        handle = self.head().register_forward_hook(lambda _, inputs, __: captured.append(inputs[0]))
        try:
            self(images)
        finally:
            handle.remove()
        return captured[0]


def describe_weights(weights: str) -> str:
    """How a model was initialised, in the words every output's provenance uses."""
    if weights == "random":
        return "random-init (demo)"
    if weights == "imagenet":
        return "imagenet (torchvision DEFAULT weights)"
    return f"file {weights} (sha256_16 {file_hash(weights)})"


def _load_state_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise InputError(
            f"classifier.training.weights: '{path}' is neither 'random', 'imagenet' nor an existing file"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}


def _torchvision_backbone(name: str, weights: str) -> nn.Module:
    import torchvision

    net = torchvision.models.get_model(name, weights="DEFAULT" if weights == "imagenet" else None)
    if weights not in ("random", "imagenet"):
        problem = f"classifier.training.weights: '{weights}' is not a torchvision {name} state dict"
        try:
            missing, unexpected = net.load_state_dict(_load_state_file(weights), strict=False)
        except RuntimeError as err:  # tensors of the wrong shape
            raise InputError(f"{problem} ({str(err).strip().splitlines()[-1].strip()})") from err
        missing = [k for k in missing if not k.startswith(HEAD_PREFIXES)]
        if missing or unexpected:
            raise InputError(f"{problem} (missing keys {missing[:3]}, unexpected keys {unexpected[:3]})")
    return net


def _first_conv_to_gray(net: nn.Module) -> None:
    """Replace the first convolution by a 1-channel one whose filters are the sums over the RGB inputs."""
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    gray = nn.Conv2d(
        1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    )
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            gray.bias.copy_(conv.bias)
    parent, _, attribute = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attribute, gray)


def build(spec: ModelSpec, weights: str = "random") -> Classifier:
    """Build the classifier of ``spec``, initialised from ``weights`` (seed torch before calling)."""
    if spec.backbone not in BACKBONES:
        raise InputError(f"classifier.training.backbone: '{spec.backbone}' is not one of {list(BACKBONES)}")
    n_labels = len(spec.labels)
    if spec.backbone == "small-cnn":
        if weights != "random":
            raise InputError("classifier.training.weights: small-cnn has no pretrained weights; use 'random'")
        channels = 3 if spec.color == "rgb" or spec.channels == "repeat" else 1
        return Classifier(SmallCNN(channels, n_labels), spec)
    net = _torchvision_backbone(spec.backbone, weights)
    if spec.backbone.startswith("resnet"):
        net.fc = nn.Linear(net.fc.in_features, n_labels)
    else:
        net.classifier = nn.Linear(net.classifier.in_features, n_labels)
    if spec.channels == "adapt":
        _first_conv_to_gray(net)
    return Classifier(net, spec)


def cam_layer(model: Classifier) -> nn.Module:
    """The layer Grad-CAM reads: the last residual block (ResNet) or the last feature layer (others)."""
    net = model.backbone
    return net.layer4[-1] if hasattr(net, "layer4") else net.features[-1]


def save(path: str, model: Classifier, spec: ModelSpec, provenance: Mapping[str, Any]) -> None:
    """Write the trained weights with their spec and provenance to ``path`` atomically."""
    payload = {"state_dict": model.state_dict(), "spec": asdict(spec), "provenance": dict(provenance)}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def trained_weights(provenance: Mapping[str, Any], path: str) -> str:
    """Plain words for the weights of the classifier saved at ``path`` (its saved ``provenance``)."""
    return f"{path}, trained from {provenance['weights']}"


def load(path: str) -> tuple[Classifier, ModelSpec, dict[str, Any]]:
    """Rebuild a classifier saved by :func:`save`; returns the model (eval mode), its spec and provenance."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    raw = payload["spec"]
    # models saved before colour input (no "color") read grayscale images
    color = raw.get("color", "grayscale")
    spec = ModelSpec(raw["backbone"], raw["channels"], tuple(raw["labels"]), int(raw["image_size"]), color)
    model = build(spec)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), spec, payload["provenance"]
