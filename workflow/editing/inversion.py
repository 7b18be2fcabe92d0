"""DDIM inversion and null-text optimisation of real images, the first half of prompt-to-prompt editing.

**DDIM inversion** (Song et al. 2021, eq. 12 run from t = 0 upwards; as Mokady et al. 2023 sec. 3.1): the
VAE latent of the image (the mean of its posterior times the VAE's scaling factor, as prompt-to-prompt's
``image2latent``) is carried to x_T with the noise predicted for its source caption at guidance 1. Each step
is diffusers' :class:`~diffusers.DDIMInverseScheduler`, built from the pipeline's scheduler config, so its
timesteps are exactly the reverse of the :class:`~diffusers.DDIMScheduler` that samples back; the pivot
trajectory z*_0 .. z*_T is kept.

**Null-text optimisation** (Mokady et al. 2023, Alg. 1): sampling back from z*_T with classifier-free guidance
(guidance w, usually 7.5) drifts from the pivot trajectory; for each sampling step i (t from T down) an
unconditional embedding ∅_i, initialised with the previous step's, is optimised with Adam (learning rate
``learning_rate`` x (1 - i/(2 x steps)): the notebook's 1 - i/100 at its 50 steps, and never negative) for
at most ``inner_steps`` iterations so that one guided DDIM step from the current latent lands on the pivot
z*_{t-1} (MSE); the iterations stop early once the loss is below
``early_stop`` + 2e-5 x i (the schedule of the authors' notebook). The current latent then takes the guided
step with the optimised ∅_i. Sampling from z*_T with the ∅_i reproduces the image.

**Speed.** Images are inverted as a batch: each image has its own ∅ rows and its own loss (the batch loss is
the sum of the per-image means, so every image's gradient, and with Adam's element-wise update its whole
trajectory, is the one it would have alone), and an image stops early on its own: its rows are frozen once
its loss is below the bound, and the step ends when every image has stopped. The conditional noise is
predicted once per step. On a CUDA device the inner iterations (forward and backward of the unconditional
branch only) run under bf16 autocast: they only steer ∅, while the pivot trajectory and the step that
advances the latent run in the pipeline's own precision, so bf16 rounding does not accumulate along the
trajectory. On CPU everything is float32.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

EARLY_STOP_SLOPE = 2e-5
"""Growth of the early-stop bound per step index (Mokady et al.'s notebook: ``epsilon + i * 2e-5``)."""


@dataclass(frozen=True)
class Inversion:
    """A batch of inverted images: the inverted latents x_T ``(B, 4, h, w)`` and the unconditional embedding
    of every sampling step ``(steps, B, 77, d)`` (the empty prompt's at every step after plain DDIM
    inversion, the optimised ∅_i after null-text optimisation)."""

    latents: torch.Tensor
    uncond: torch.Tensor


def sampler(pipe: StableDiffusionPipeline, steps: int):
    """The DDIM sampler (eta 0) on the pipeline's noise schedule, set to ``steps`` steps."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=pipe.device)
    return scheduler


def encode_images(pipe: StableDiffusionPipeline, images: torch.Tensor) -> torch.Tensor:
    """VAE latents (posterior mean x scaling factor) of images in [-1, 1]."""
    with torch.no_grad():
        posterior = pipe.vae.encode(images.to(pipe.device, pipe.vae.dtype)).latent_dist
    return posterior.mean * pipe.vae.config.scaling_factor


def decode_latents(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (float32) decoded from latents."""
    with torch.no_grad():
        images = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    return images.float().clamp(-1, 1)


def embed(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """CLIP text embeddings ``(n, 77, d)`` of ``prompts`` on the pipeline's device, encoded as training and
    sampling encode them (:func:`workflow.diffusion.base_models.encode_prompts`)."""
    from workflow.diffusion.base_models import encode_prompts

    return encode_prompts(pipe, list(prompts)).to(pipe.device)


def noise(
    pipe: StableDiffusionPipeline, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """The UNet's noise prediction, in the UNet's precision."""
    dtype = pipe.unet.dtype
    return pipe.unet(latents.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample


def guided(
    pipe: StableDiffusionPipeline,
    latents: torch.Tensor,
    t: torch.Tensor,
    uncond: torch.Tensor,
    cond: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guided noise (Ho & Salimans 2022): eps(∅) + w (eps(c) - eps(∅)), one UNet batch."""
    both = noise(pipe, torch.cat([latents, latents]), t, torch.cat([uncond, cond]))
    eps_uncond, eps_cond = both.chunk(2)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def ddim_inversion(
    pipe: StableDiffusionPipeline, latents: torch.Tensor, cond: torch.Tensor, steps: int
) -> list[torch.Tensor]:
    """The pivot trajectory ``[z*_0, ..., z*_T]`` of DDIM inversion at guidance 1 (Mokady et al. 2023 sec.
    3.1) with diffusers' :class:`~diffusers.DDIMInverseScheduler`."""
    from diffusers import DDIMInverseScheduler

    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(steps, device=pipe.device)
    trajectory = [latents]
    with torch.no_grad():
        for t in inverse.timesteps:
            eps = noise(pipe, trajectory[-1], t, cond)
            trajectory.append(inverse.step(eps, t, trajectory[-1]).prev_sample.to(latents.dtype))
    return trajectory


def null_text_optimisation(
    pipe: StableDiffusionPipeline,
    trajectory: list[torch.Tensor],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    inner_steps: int,
    early_stop: float,
    learning_rate: float,
) -> torch.Tensor:
    """The optimised unconditional embeddings ``(steps, B, 77, d)`` of Mokady et al. 2023, Alg. 1, batched
    with a per-image early stop (module docstring); ``uncond`` ``(B, 77, d)`` initialises ∅."""
    steps = len(trajectory) - 1
    scheduler = sampler(pipe, steps)
    device = pipe.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    current = trajectory[-1]
    null = uncond.detach().clone().float()
    optimised = []
    for i, t in enumerate(scheduler.timesteps):
        target = trajectory[steps - i - 1]
        with torch.no_grad():
            eps_cond = noise(pipe, current, t, cond)
        null.requires_grad_(True)
        optimizer = torch.optim.Adam([null], lr=learning_rate * (1 - i / (2 * steps)))
        active = torch.ones(len(null), dtype=torch.bool, device=device)
        bound = early_stop + EARLY_STOP_SLOPE * i
        for _ in range(inner_steps):
            with autocast:
                eps_uncond = noise(pipe, current, t, null)
            eps = eps_uncond.float() + guidance_scale * (eps_cond.float() - eps_uncond.float())
            previous = scheduler.step(eps, t, current.float()).prev_sample
            losses = (previous - target.float()).pow(2).flatten(1).mean(1)
            active &= losses.detach() >= bound
            if not active.any():
                break
            (null.grad,) = torch.autograd.grad(losses[active].sum(), [null])
            frozen = null.detach()[~active].clone()
            optimizer.step()
            with torch.no_grad():
                null[~active] = frozen
        null = null.detach()
        optimised.append(null.to(cond.dtype))
        with torch.no_grad():
            eps = guided(pipe, current, t, optimised[-1], cond, guidance_scale)
            current = scheduler.step(eps, t, current).prev_sample.to(current.dtype)
    return torch.stack(optimised)


def _digest(*parts: object) -> str:
    """SHA-256 of ``parts``: tensors by dtype, shape and bytes, anything else by its JSON text."""
    sha = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            data = part.detach().cpu().contiguous()
            sha.update(f"{data.dtype}{tuple(data.shape)}".encode())
            sha.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            sha.update(json.dumps(part, sort_keys=True, default=str).encode())
        sha.update(b"|")
    return sha.hexdigest()


def fingerprint(pipe: StableDiffusionPipeline) -> str:
    """What identifies the pipeline's inversions (module docstring): a SHA-256 of its UNet's and VAE's
    weights (names, dtypes, bytes: a few seconds for SD 1.5), its scheduler config and its device type. The
    text encoder enters each key through the caption's embedding."""
    parts: list[object] = [dict(pipe.scheduler.config), pipe.device.type]
    for module in (pipe.unet, pipe.vae):
        for name, tensor in sorted(module.state_dict().items()):
            parts += [name, tensor]
    return _digest(*parts)


@dataclass(frozen=True)
class InversionCache:
    """Inversions stored per image in ``folder`` for the pipeline whose :func:`fingerprint` is ``model``
    (module docstring)."""

    folder: Path
    model: str

    def fetch(self, kind: str, keys: list[str], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """Per item of ``keys``, its stored ``kind`` tensor, computing (``compute(items)``: a tensor with the
        items along dimension 1) and storing those not stored yet, each distinct key once; the items'
        tensors stacked along dimension 1."""
        from workflow.common.files import atomic_output

        found = {}
        for key in dict.fromkeys(keys):
            path = self.folder / f"{kind}-{key}.pt"
            if path.is_file():
                found[key] = torch.load(path, map_location="cpu", weights_only=True)
        first: dict[str, int] = {}
        for k, key in enumerate(keys):
            if key not in found:
                first.setdefault(key, k)
        missing = list(first.items())
        if missing:
            computed = compute([k for _, k in missing])
            for j, (key, _) in enumerate(missing):
                found[key] = computed[:, j].detach().cpu().clone()
                with atomic_output(self.folder / f"{kind}-{key}.pt") as tmp:
                    torch.save(found[key], tmp)
        return torch.stack([found[key] for key in keys], dim=1)


def invert(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    prompts: list[str],
    steps: int,
    guidance_scale: float,
    null_text: dict[str, float] | None = None,
    cache: InversionCache | None = None,
) -> Inversion:
    """Invert ``images`` (``(B, 3, H, W)`` in [-1, 1]) with their source captions ``prompts``: DDIM inversion,
    then, when ``null_text`` gives ``inner_steps``, ``early_stop`` and ``learning_rate``, null-text
    optimisation at ``guidance_scale``; without it the empty prompt's embedding serves every step. With
    ``cache``, each image's trajectory and embeddings are loaded when stored and stored when computed."""
    cond = embed(pipe, prompts)
    empty = embed(pipe, [""] * len(prompts))

    def trajectory_of(items: list[int]) -> torch.Tensor:
        return torch.stack(ddim_inversion(pipe, encode_images(pipe, images[items]), cond[items], steps))

    everything = list(range(len(prompts)))
    if cache is None:
        trajectory = trajectory_of(everything)
    else:
        ddim_keys = [_digest("ddim", cache.model, images[k], cond[k], steps) for k in everything]
        trajectory = cache.fetch("ddim", ddim_keys, trajectory_of).to(pipe.device)
    if null_text is None:
        return Inversion(latents=trajectory[-1], uncond=empty.expand(steps, *empty.shape))
    options = (
        int(null_text["inner_steps"]),
        float(null_text["early_stop"]),
        float(null_text["learning_rate"]),
    )

    def uncond_of(items: list[int]) -> torch.Tensor:
        pivots = list(trajectory[:, items].unbind(0))
        return null_text_optimisation(pipe, pivots, cond[items], empty[items], guidance_scale, *options)

    if cache is None:
        uncond = uncond_of(everything)
    else:
        null_keys = [
            _digest("null-text", ddim_keys[k], guidance_scale, options, empty[k]) for k in everything
        ]
        uncond = cache.fetch("null-text", null_keys, uncond_of).to(pipe.device)
    return Inversion(latents=trajectory[-1], uncond=uncond)
