"""Mask faithfulness of mask-guided generators, the measure of segmentation-guided diffusion (Konz, Chen,
Dong, Mazurowski, MICCAI 2024, section 3.2): a segmentation network trained on the real training split's
images and masks segments every generated image, and Dice per class compares its segmentation with the mask
that conditioned the image (rules ``train_segmenter``, ``mask_faithfulness``).

**Network.** MONAI's 2D ``UNet`` (residual units, strides 2; one output channel per class of
``dataset.mask_classes``) trained with MONAI's ``DiceCELoss`` (soft Dice plus cross-entropy on the softmax,
Isensee et al. 2021) and Adam. Images and masks are read as the generator reads them
(:func:`workflow.diffusion.mask_guided.read_pairs`: bilinear images, nearest masks, class ids checked).

**Seeds and resume.** Step ``s`` draws its batch from a generator seeded with ``SeedSequence([seed, s])``
(:func:`workflow.common.resumable.fit`, the training loop of :func:`workflow.diffusion.mask_guided.train`
too), so a run resumed from its checkpoint continues exactly as one that never stopped.

**Dice** (:func:`dice_per_class`): MONAI's ``compute_dice`` per image and class, averaged over the images
whose conditioning mask has the class (an absent class has no Dice). Classes the conditioning left out
(classes removed from the masks, :mod:`workflow.diffusion.mask_guided`) are measured by the fraction of
pixels the network still finds of them (``absent_pixels``): an image generated without its devices should
have none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workflow.common import resumable
from workflow.common.interruption import StopRequest
from workflow.diffusion.mask_guided import Pairs, one_hot, read_image, read_mask, resize_mask
from workflow.evaluation.settings import MaskFaithfulnessSettings

if TYPE_CHECKING:
    from monai.networks.nets import UNet

WEIGHTS = "segmenter.pt"


def network(settings: MaskFaithfulnessSettings) -> UNet:
    """MONAI's 2D ``UNet`` of ``settings`` (channels per level, stride 2 between levels)."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=len(settings.mask_classes),
        channels=tuple(settings.channels),
        strides=(2,) * (len(settings.channels) - 1),
        num_res_units=settings.num_res_units,
    )


def train(
    pairs: Pairs,
    settings: MaskFaithfulnessSettings,
    fingerprint: str,
    folder: str,
    device: torch.device,
    stop: StopRequest,
) -> tuple[UNet, list[float]]:
    """Train the segmenter (module docstring) for ``settings.steps`` steps with
    :func:`workflow.common.resumable.fit` (Adam at a constant learning rate, no gradient clipping), resuming
    from the newest checkpoint of ``fingerprint`` in ``folder``; a stop request saves one and stops. Returns
    the model (in eval mode) and the loss of every step."""
    from monai.losses import DiceCELoss

    torch.manual_seed(settings.seed)
    model = network(settings).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def loss(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(pairs.images), (settings.batch_size,), generator=generator)
        images, masks = pairs.batch(index)
        return dice_ce(model(images.to(device)), masks[:, None].to(device))

    return model, resumable.fit(model, optimizer, loss, settings, fingerprint, folder, stop)


def read_generated(images: Sequence[str], masks: Sequence[str], classes: int, size: int) -> Pairs:
    """Generated ``images`` and the real ``masks`` that conditioned them, both at ``size``: a generator's
    images have its working size, its masks the preprocessed size, so sizes are not compared."""
    return Pairs(
        torch.stack([read_image(path, size)[0] for path in images]),
        torch.stack([resize_mask(read_mask(path, classes), size) for path in masks]),
    )


def save_model(model: torch.nn.Module, folder: str | Path) -> None:
    """The trained weights as ``folder/segmenter.pt`` (the card is written beside)."""
    torch.save(model.state_dict(), Path(folder) / WEIGHTS)


def load_model(folder: str, settings: MaskFaithfulnessSettings, device: torch.device) -> UNet:
    """The segmenter saved by :func:`save_model` in ``folder``."""
    model = network(settings)
    model.load_state_dict(torch.load(Path(folder) / WEIGHTS, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def segment(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Class ids (N x S x S, int64) of ``images`` (N x 1 x S x S in [-1, 1]), ``batch_size`` at a time."""
    device = next(model.parameters()).device
    with torch.no_grad():
        parts = [
            model(images[i : i + batch_size].to(device)).argmax(1).cpu()
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(parts)


def dice_per_class(predicted: torch.Tensor, target: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Dice of ``predicted`` against ``target`` (both N x S x S class ids) per class: its mean over the images
    whose target has the class (``n`` of them; ``dice`` null when none), and ``absent_pixels``, the mean
    fraction of pixels predicted as the class in the images whose target lacks it (module docstring).
    ``mean_dice``: the mean of the non-background classes' Dice (those with images)."""
    from monai.metrics import compute_dice

    count = len(classes)
    scores = compute_dice(
        one_hot(predicted, count), one_hot(target, count), include_background=True, ignore_empty=True
    ).numpy()  # N x classes, NaN where the target lacks the class
    present = (one_hot(target, count).sum((2, 3)) > 0).numpy()
    found = one_hot(predicted, count).mean((2, 3)).numpy()
    result = {}
    for c, name in enumerate(classes):
        has = present[:, c]
        result[name] = {
            "n": int(has.sum()),
            "dice": float(np.nanmean(scores[has, c])) if has.any() else None,
            "absent_images": int((~has).sum()),
            "absent_pixels": float(found[~has, c].mean()) if (~has).any() else None,
        }
    foreground = [row["dice"] for row in list(result.values())[1:] if row["dice"] is not None]
    return {"classes": result, "mean_dice": float(np.mean(foreground)) if foreground else None}
