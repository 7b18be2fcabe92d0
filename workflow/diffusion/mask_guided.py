"""Segmentation-guided diffusion in 2D (Konz, Chen, Dong, Mazurowski, MICCAI 2024): a pixel-space DDPM whose
denoising network sees the noisy image with the segmentation mask concatenated as input channels, trained
with mask ablation and sampled with DDIM (rules ``train_mask_guided``, ``sample_mask_guided``).

**Network and noise.** MONAI's generative components: ``DiffusionModelUNet`` (``spatial_dims=2``; input
channels: 1 image + one per class of ``dataset.mask_classes``, output: the predicted noise of the image
channel), ``DDPMScheduler`` for training (linear betas 1e-4..0.02, epsilon prediction, Ho et al. 2020 eq. 14:
MSE between the noise and its prediction) and ``DDIMScheduler`` (eta 0, Song et al. 2021 eq. 12) for sampling,
both run through ``DiffusionInferer`` in ``concat`` mode. The mask enters one-hot (:func:`one_hot`); the seed
code feeds the class id divided by 255 in one channel (seeds spec 4.1), which the network barely sees.

**Mask ablation** (the paper's section 2.2; seeds spec 4.3): each non-background class is dropped, its pixels
set to background, with probability ``ablation_probability`` (the paper's 0.5), so the model learns to
generate from masks with classes missing. Training draws a new ablation per image and step (the seed code
shares one draw across the batch). Sampling may ablate too (``sample.ablation_probability``): the draw is
made once per image, from the image's own seed, and the same conditioning is given at every denoising step
(the seed code redraws it at every step, a bug; seeds spec 4.6). Generation from edited masks, the paper's
mask ablation at sampling: ``sample.remove_classes`` (e.g. the devices) is removed from every mask.

**Seeds.** Training step ``s`` draws its batch, ablation, noise and timesteps from a generator seeded with
``SeedSequence([seed, s])``, so a run resumed from a checkpoint continues exactly as one that never stopped.
The image of real image ``id`` starts from noise seeded with ``SeedSequence([seed, sha256(id)])``
(:func:`workflow.common.seeding.derive_seed`), and DDIM with eta 0 is deterministic given that noise: an image
depends only on (model, settings, seed, id), not on the batch it is in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from workflow.common import resumable
from workflow.common.errors import InputError
from workflow.common.interruption import StopRequest
from workflow.common.seeding import derive_seed, text_key
from workflow.diffusion.settings import (
    MaskGuidedSampleSettings,
    MaskGuidedTrainSettings,
    MaskTextTrainSettings,
)

if TYPE_CHECKING:
    from monai.networks.nets import DiffusionModelUNet

WEIGHTS = "unet.pt"


@dataclass(frozen=True)
class Pairs:
    """Images (N x 1 x S x S) and their masks (N x S x S) in memory, both 8-bit (a tenth of float32 and
    int64: 10,000 pairs at 256 px take 1.3 GB)."""

    images: torch.Tensor
    masks: torch.Tensor

    def batch(self, index: torch.Tensor | slice | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``index`` in [-1, 1] (float) and their masks as class ids (int64)."""
        return self.images[index].float() / 127.5 - 1.0, self.masks[index].long()


def read_image(path: str, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """One grayscale image resized to 1 x S x S (bilinear, 8-bit), and its height and width as read."""
    with Image.open(path) as source:
        image = source.convert("L")
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(resized))[None], (image.height, image.width)


def read_mask(path: str, classes: int) -> np.ndarray:
    """One mask's class ids as read (H x W).

    Raises:
        InputError: naming the file when it is not one channel, or has class ids outside
            ``0 .. classes - 1`` (``dataset.mask_classes``).
    """
    with Image.open(path) as source:
        mask = np.asarray(source)
    if mask.ndim != 2:
        raise InputError(f"{path}: mask shape {mask.shape}; a mask must be one integer channel")
    return check_classes(mask, path, classes)


def check_classes(mask: np.ndarray, path: str, classes: int) -> np.ndarray:
    """``mask`` (class ids, 2D or 3D), checked.

    Raises:
        InputError: naming ``path`` when a class id is outside ``0 .. classes - 1``
            (``dataset.mask_classes``).
    """
    unknown = sorted(set(np.unique(mask).tolist()) - set(range(classes)))
    if unknown:
        raise InputError(
            f"{path}: class ids {unknown} are not in dataset.mask_classes (ids 0..{classes - 1}); "
            "list every class of the masks there"
        )
    return mask


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """Class ids ``mask`` resized to S x S (nearest, 8-bit)."""
    resized = Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.array(resized))


def read_pair(image_path: str, mask_path: str, classes: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (:func:`read_image`) and its mask (:func:`read_mask`, :func:`resize_mask`).

    Raises:
        InputError: naming the mask file when its size differs from the image's, or its class ids are wrong.
    """
    image, shape = read_image(image_path, size)
    mask = read_mask(mask_path, classes)
    if mask.shape != shape:
        raise InputError(
            f"{mask_path}: mask shape {mask.shape} does not match its image {image_path} "
            f"({shape[0]} x {shape[1]}); a mask must be one integer channel of the image's size"
        )
    return image, resize_mask(mask, size)


def read_pairs(images: Sequence[str], masks: Sequence[str], classes: int, size: int) -> Pairs:
    """:func:`read_pair` of every image and its mask, stacked."""
    pairs = [read_pair(i, m, classes, size) for i, m in zip(images, masks, strict=True)]
    return Pairs(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))


def one_hot(masks: torch.Tensor, classes: int) -> torch.Tensor:
    """B x H x W (or B x D x H x W) class ids -> B x classes x H x W (x ...) float one-hot channels."""
    return torch.nn.functional.one_hot(masks, classes).movedim(-1, 1).float()


def draw_ablation(generator: torch.Generator, images: int, classes: int, probability: float) -> torch.Tensor:
    """Which classes to drop, per image: B x classes booleans, each non-background class dropped independently
    with ``probability`` (background, class 0, never)."""
    dropped = torch.rand((images, classes), generator=generator) < probability
    dropped[:, 0] = False
    return dropped


def ablate(masks: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """``masks`` (B x H x W) with the pixels of each image's dropped classes (B x classes) made background."""
    hit = torch.gather(dropped.to(masks.device), 1, masks.flatten(1)).view_as(masks)
    return masks.masked_fill(hit, 0)


def conditioning(masks: torch.Tensor, dropped: torch.Tensor, classes: int) -> torch.Tensor:
    """The network's mask channels: the one-hot of the ablated masks."""
    return one_hot(ablate(masks, dropped), classes)


def network(architecture: dict[str, Any]) -> DiffusionModelUNet:
    """MONAI's ``DiffusionModelUNet`` of ``architecture`` (:func:`architecture_of`): 2D unless the
    architecture says ``spatial_dims``; with cross-attention on text embeddings of ``cross_attention_dim``
    features when it names one (the mask-text generator, :mod:`workflow.diffusion.mask_text`)."""
    from monai.networks.nets import DiffusionModelUNet

    text = architecture.get("cross_attention_dim")
    return DiffusionModelUNet(
        spatial_dims=architecture.get("spatial_dims", 2),
        in_channels=1 + architecture["classes"],
        out_channels=1,
        num_res_blocks=architecture["num_res_blocks"],
        channels=tuple(architecture["channels"]),
        attention_levels=tuple(architecture["attention_levels"]),
        norm_num_groups=architecture["norm_num_groups"],
        with_conditioning=text is not None,
        cross_attention_dim=text,
    )


def architecture_of(
    settings: MaskGuidedTrainSettings | MaskTextTrainSettings, key: str = "diffusion.mask_guided.train"
) -> dict[str, Any]:
    """What sampling needs to rebuild the trained network (kept in the model card); ``key``: the settings'
    config section, named by the errors.

    Raises:
        InputError: naming the key when attention levels and channels differ in number, or a channels entry
            is no multiple of the group norm's groups.
    """
    if len(settings.attention_levels) != len(settings.channels):
        raise InputError(
            f"{key}.attention_levels: one entry per channels entry "
            f"({len(settings.channels)}), got {len(settings.attention_levels)}"
        )
    bad = [c for c in settings.channels if c % settings.norm_num_groups]
    if bad:
        raise InputError(
            f"{key}.channels: {bad} are not multiples of norm_num_groups {settings.norm_num_groups}"
        )
    return {
        "classes": len(settings.mask_classes),
        "resolution": settings.resolution,
        "timesteps": settings.timesteps,
        "channels": list(settings.channels),
        "attention_levels": list(settings.attention_levels),
        "num_res_blocks": settings.num_res_blocks,
        "norm_num_groups": settings.norm_num_groups,
    }


def train(
    pairs: Pairs,
    settings: MaskGuidedTrainSettings,
    fingerprint: str,
    folder: str,
    device: torch.device,
    stop: StopRequest,
) -> tuple[DiffusionModelUNet, list[float]]:
    """Train the network (module docstring) for ``settings.steps`` optimizer steps (:func:`fit`), resuming
    from the newest checkpoint of ``fingerprint`` in ``folder``. Returns the model and the loss of every
    step."""
    from monai.networks.schedulers import DDPMScheduler

    classes = len(settings.mask_classes)
    torch.manual_seed(settings.seed)
    model = network(architecture_of(settings)).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=settings.timesteps)

    def loss(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(pairs.images), (settings.batch_size,), generator=generator)
        images, masks = pairs.batch(index)
        dropped = draw_ablation(generator, len(index), classes, settings.ablation_probability)
        condition = conditioning(masks, dropped, classes)
        return noise_loss(model, scheduler, images, condition, None, generator, device)

    return model.eval(), fit(model, settings, loss, fingerprint, folder, stop)


def noise_loss(
    model: torch.nn.Module,
    scheduler: Any,
    images: torch.Tensor,
    condition: torch.Tensor,
    context: torch.Tensor | None,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Ho et al. 2020 eq. 14: MSE between the noise and the network's prediction of it from the images noised
    (``scheduler``, DDPM) at timesteps drawn uniformly, ``condition`` (the mask channels) concatenated to the
    network's input and ``context`` (text embeddings, or None) given to its cross-attention; noise and
    timesteps from ``generator``."""
    noise = torch.randn(images.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.num_train_timesteps, (len(images),), generator=generator).to(
        device
    )
    noisy = scheduler.add_noise(images.to(device), noise.to(device), timesteps)
    inputs = torch.cat([noisy, condition.to(device)], dim=1)
    prediction = model(inputs, timesteps, None if context is None else context.to(device))
    return torch.nn.functional.mse_loss(prediction.float(), noise.to(device))


def fit(
    model: torch.nn.Module,
    settings: MaskGuidedTrainSettings | MaskTextTrainSettings,
    loss: Callable[[torch.Generator], torch.Tensor],
    fingerprint: str,
    folder: str,
    stop: StopRequest,
) -> list[float]:
    """Optimize ``model`` for ``settings.steps`` steps with :func:`workflow.common.resumable.fit` (seeded
    steps, exact resume from the newest checkpoint of ``fingerprint`` in ``folder``): AdamW with linear
    warm-up and cosine decay (the segmentation-guided paper's diffusers schedule), gradient norm clipped at
    ``settings.max_grad_norm``. Returns the loss of every step."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    schedule = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.steps)
    return resumable.fit(
        model,
        optimizer,
        loss,
        settings,
        fingerprint,
        folder,
        stop,
        schedule=schedule,
        max_grad_norm=settings.max_grad_norm,
    )


def save_model(model: DiffusionModelUNet, folder: str | Path) -> None:
    """The trained weights as ``folder/unet.pt`` (the card, with the architecture, is written beside)."""
    torch.save(model.state_dict(), Path(folder) / WEIGHTS)


def load_model(folder: str, architecture: dict[str, Any], device: torch.device) -> DiffusionModelUNet:
    """The network saved by :func:`save_model` in ``folder``."""
    model = network(architecture)
    model.load_state_dict(torch.load(Path(folder) / WEIGHTS, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def image_seed(seed: int, image_id: str) -> int:
    """The seed of the image conditioned on real image ``image_id``'s mask (module docstring)."""
    return derive_seed(seed, text_key(image_id))


def removed_classes(settings: MaskGuidedSampleSettings) -> torch.Tensor:
    """Which classes every conditioning mask loses (``remove_classes``, checked by the settings): a boolean
    per class."""
    return torch.tensor([name in settings.remove_classes for name in settings.mask_classes])


def draws(
    seeds: Sequence[int], shape: Sequence[int], settings: MaskGuidedSampleSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's starting noise (B x 1 x ``shape``) and dropped classes (B x classes), drawn once from its
    own seed; the classes of ``sample.remove_classes`` are dropped from every image (edited masks)."""
    classes = len(settings.mask_classes)
    removed = removed_classes(settings)
    noise, dropped = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        noise.append(torch.randn((1, *shape), generator=generator))
        dropped.append(draw_ablation(generator, 1, classes, settings.ablation_probability)[0] | removed)
    return torch.stack(noise), torch.stack(dropped)


def generate(
    model: torch.nn.Module,
    masks: torch.Tensor,
    seeds: Sequence[int],
    settings: MaskGuidedSampleSettings,
    timesteps: int,
) -> torch.Tensor:
    """Images (B x 1 x S x S in [-1, 1]) for ``masks`` (B x S x S), one per seed: each image's noise and
    ablation are drawn once from its own seeded generator (:func:`draws`), then DDIM (eta 0) runs
    ``settings.steps`` steps with that fixed conditioning (module docstring)."""
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    device = next(model.parameters()).device
    noise, dropped = draws(seeds, masks.shape[1:], settings)
    scheduler = DDIMScheduler(num_train_timesteps=timesteps)
    scheduler.set_timesteps(settings.steps)
    with torch.no_grad():
        return DiffusionInferer(scheduler).sample(
            input_noise=noise.to(device),
            diffusion_model=model,
            scheduler=scheduler,
            conditioning=conditioning(masks, dropped, len(settings.mask_classes)).to(device),
            mode="concat",
            verbose=False,
        )


def to_png(image: torch.Tensor) -> Image.Image:
    """A generated 1 x S x S image in [-1, 1] as an 8-bit grayscale picture."""
    pixels = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(pixels, mode="L")
