"""The tiny SD's VAE, trained on the study's training images (rule ``train_tiny_vae``; ``diffusion.base_model:
tiny`` only).

The tiny stand-in is built with random weights (:func:`workflow.diffusion.base_models.build_tiny`); a random
VAE's latents do not describe the images, so no UNet could learn the images from them. SD's VAE is a
KL-regularised autoencoder (Rombach et al., CVPR 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", section 3.1 and appendix G): a reconstruction loss plus a small KL penalty of the posterior
``q(z|x)`` towards ``N(0, I)``, there with perceptual and adversarial terms. The tiny one is trained with the
pixel loss alone (no pretrained perceptual network offline; the phantoms are smooth, 64 px images)::

    L = mean ||x - D(z)||^2 + kl_weight * mean KL(q(z|x) || N(0, I)),   z ~ q(z|x)

with AdamW and a cosine learning-rate decay over ``steps`` steps of ``batch_size`` images drawn with a seeded
generator (posterior draws from torch's generator, seeded first), so the same settings and images give the
same VAE.

The diffusion model then works on latents scaled to unit variance, as SD's (Rombach et al. 2022, section
4.3.2, rescaling the KL-regularised latents by their standard deviation; one scalar, as the LDM code's
``scale_by_std``, which gave SD 1.5's 0.18215): ``scaling_factor = 1 / std(z)`` over the posterior draws of
the training images, stored in the VAE's config.
Reconstruction quality is the PSNR of ``D(mean of q(z|x))`` against ``x`` on the held-out validation images
(intensities in [0, 1]), written on the model card.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from workflow.common.seeding import derive_seed
from workflow.diffusion.latent_cache import load_image
from workflow.diffusion.settings import TinyVaeSettings

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

EVAL_BATCH = 64


@dataclass(frozen=True)
class VaeFit:
    """What training reached: the loss per step, the validation PSNR and the latent scaling factor."""

    losses: list[float]
    psnr_db: float
    scaling_factor: float


def load_images(paths: Sequence[str], resolution: int) -> torch.Tensor:
    """The images as the VAE sees them in the cache (:func:`workflow.diffusion.latent_cache.load_image`)."""
    return torch.stack([load_image(p, resolution) for p in paths])


def psnr(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Mean PSNR (dB, intensities in [0, 1]) of the posterior-mean reconstructions of ``images``."""
    values = []
    with torch.no_grad():
        for batch in images.split(EVAL_BATCH):
            batch = batch.to(vae.device)
            decoded = vae.decode(vae.encode(batch).latent_dist.mode()).sample.clamp(-1, 1)
            mse = ((decoded - batch) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
            values.append(-10 * torch.log10(mse).cpu())
    return float(torch.cat(values).mean())


def latent_std(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Standard deviation of posterior draws ``z ~ q(z|x)`` over ``images`` (torch's generator)."""
    with torch.no_grad():
        draws = [vae.encode(b.to(vae.device)).latent_dist.sample().cpu() for b in images.split(EVAL_BATCH)]
    return float(torch.cat(draws).std())


def fit(vae: AutoencoderKL, train: torch.Tensor, val: torch.Tensor, settings: TinyVaeSettings) -> VaeFit:
    """Train ``vae`` in place on the ``train`` images (module docstring), then set its scaling factor and
    measure its PSNR on ``val``."""
    torch.manual_seed(derive_seed(settings.tiny_seed, 1))
    order = torch.Generator().manual_seed(derive_seed(settings.tiny_seed, 0))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    vae.train()
    losses = []
    for _ in range(settings.steps):
        batch = train[torch.randint(len(train), (settings.batch_size,), generator=order)].to(vae.device)
        posterior = vae.encode(batch).latent_dist
        loss = F.mse_loss(vae.decode(posterior.sample()).sample, batch)
        loss = loss + settings.kl_weight * posterior.kl().mean() / math.prod(batch.shape[1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval()
    scale = 1.0 / max(latent_std(vae, train), 1e-6)
    vae.register_to_config(scaling_factor=scale)
    return VaeFit(losses, psnr(vae, val), scale)
