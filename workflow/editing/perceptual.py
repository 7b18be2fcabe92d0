"""LPIPS (Zhang et al., CVPR 2018, "The unreasonable effectiveness of deep features as a perceptual metric",
eq. 1) of the editing stage's composition (reconstruction against the source) and reversibility (undone edit
against the source), with torchmetrics'
:class:`~torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity`.

torchmetrics ships LPIPS's learned linear layers (the authors' v0.1) but takes the backbone's ImageNet weights
from torchvision, which downloads them. Here they come from a local file, ``editing.lpips.weights``: the
state dict torchvision's weights enum would download for ``editing.lpips.net`` (``alexnet-owt-7be5be79.pth``
for ``alex``; see :data:`BACKBONES`). While the metric is built, torch.hub's folder is a temporary one in
which that file is linked under the name torchvision looks for, so torchvision loads it and nothing is
downloaded. Without the file LPIPS is not computed: the measures are null and :attr:`Lpips.reason` says why
(copied into the manifest's metadata and soundness.json), never a random-backbone LPIPS reported as if it
meant something.

Grey images are repeated to three channels, in [0, 1]; images under :data:`MIN_SIDE` pixels are upsampled
bilinearly to it (LPIPS was trained on 64 x 64 patches, and AlexNet's pooling needs that much).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from workflow.common.errors import InputError

if TYPE_CHECKING:
    import torch

    from workflow.editing.settings import LpipsSettings

BACKBONES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}
"""``editing.lpips.net`` -> the torchvision model whose weights file ``editing.lpips.weights`` holds."""
MIN_SIDE = 64


@contextlib.contextmanager
def local_backbone(net: str, weights: str) -> Iterator[None]:
    """torch.hub's folder pointed at a temporary one holding ``weights`` under the file name torchvision
    downloads ``net``'s backbone to (module docstring), for the duration of the block."""
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(BACKBONES[net]).DEFAULT.url
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as hub:
        checkpoints = Path(hub) / "checkpoints"
        checkpoints.mkdir()
        (checkpoints / Path(urlparse(url).path).name).symlink_to(Path(weights).resolve())
        torch.hub.set_dir(hub)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


@dataclass(frozen=True)
class Lpips:
    """LPIPS as configured: ``metric`` (None when unavailable, ``reason`` saying why) on ``device``."""

    net: str
    weights: str | None
    metric: Any
    reason: str | None
    device: Any = None

    def distance(self, reference: np.ndarray, image: np.ndarray) -> float | None:
        """LPIPS of two ``(H, W)`` grey images in [0, 1]; None when unavailable."""
        if self.metric is None:
            return None
        import torch
        import torch.nn.functional as F

        pair = torch.as_tensor(np.stack([reference, image]), dtype=torch.float32)[:, None].clamp(0, 1)
        if min(pair.shape[-2:]) < MIN_SIDE:
            scale = MIN_SIDE / min(pair.shape[-2:])
            size = [max(MIN_SIDE, round(side * scale)) for side in pair.shape[-2:]]
            pair = F.interpolate(pair, size=size, mode="bilinear", align_corners=False)
        pair = pair.expand(-1, 3, -1, -1).to(self.device)
        with torch.no_grad():
            value = self.metric(pair[:1], pair[1:])
        self.metric.reset()
        return float(value)

    def info(self) -> dict[str, Any]:
        """What the manifest and soundness.json say about it: net, weights file, reason when unavailable."""
        return {"net": self.net, "weights": self.weights, "reason": self.reason}


def load(settings: LpipsSettings, device: torch.device | None = None) -> Lpips:
    """LPIPS with ``settings.net``'s backbone weights from ``settings.weights`` (module docstring); without a
    weights file, an :class:`Lpips` that gives None, with the reason.

    Raises:
        InputError: the weights file is missing or is not ``settings.net``'s backbone state dict.
    """
    if settings.weights is None:
        backbone = BACKBONES[settings.net]
        reason = (
            f"no LPIPS: editing.lpips.weights is null (give the local file of torchvision's {backbone}"
            " ImageNet weights; a random backbone would give meaningless numbers)"
        )
        return Lpips(settings.net, None, None, reason)
    if not Path(settings.weights).is_file():
        raise InputError(f"editing.lpips.weights: no file {settings.weights}; give a local file or null")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    try:
        with local_backbone(settings.net, settings.weights):
            metric = LearnedPerceptualImagePatchSimilarity(net_type=settings.net, normalize=True)
    except RuntimeError as error:  # load_state_dict's missing / unexpected keys, wrong shapes
        raise InputError(
            f"editing.lpips.weights: {settings.weights} is not the state dict of torchvision's "
            f"{BACKBONES[settings.net]} (editing.lpips.net = {settings.net}): {error}"
        ) from error
    import torch

    where = device or torch.device("cpu")
    return Lpips(settings.net, settings.weights, metric.to(where), None, where)
