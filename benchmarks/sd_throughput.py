"""Stable Diffusion training and sampling throughput: synthmed's code beside diffusers' reference, one run.

Training (full UNet fine-tuning, AdamW):
- synthmed: :func:`workflow.diffusion.training.diffusion_loss` on cached latents and text embeddings (UNet
  only);
- reference: a ``train_text_to_image.py`` step: VAE encode of the pixels + CLIP text encoder + UNet.
Sampling (DDIM, ``--steps`` steps, classifier-free guidance ``--guidance``):
- synthmed: :func:`workflow.diffusion.sampling.generate` (pre-encoded prompts, one seeded generator per
  image);
- reference: ``StableDiffusionPipeline.__call__`` with prompt strings.

Each is reported in images/s and as a fraction of its ideal time: FLOPs counted with torch's
``FlopCounterMode`` on the same step divided by the device's dense matmul rate, measured in the same run
(``--peak-tflops`` overrides it, e.g. 790 for an H200 in bf16 as in docs/benchmarks.md). ``--model sd15``
builds SD 1.5's UNet, VAE and text encoder from their configs with random weights (no download);
``--model tiny`` is the demo's tiny SD.

    python benchmarks/sd_throughput.py --model tiny --resolution 32 --device cpu          # CPU, minutes
    python benchmarks/sd_throughput.py --model sd15 --resolution 512 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from workflow.diffusion import base_models, sampling, training

# SD 1.5's component configs (runwayml/stable-diffusion-v1-5 unet/vae/text_encoder config.json).
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "cross_attention_dim": 768,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SD15_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
}
SD15_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
PROMPT = "Chest X-ray showing Cardiomegaly, Pleural Effusion"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per call after one warm-up call."""
    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def flops(step: Callable[[], object]) -> float:
    """FLOPs of one call (1 multiply-add = 2 FLOPs), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate (FLOP/s) of the device in ``dtype``."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, device, repeats=10)


def training_steps(pipe: Any, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """One optimizer step of synthmed's cached-latent loop and of diffusers' reference loop."""
    settings = argparse.Namespace(noise_offset=0.0, snr_gamma=None)
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    side = args.resolution // pipe.vae_scale_factor
    latents = torch.randn(args.batch, 4, side, side, device=device)
    embeddings = torch.randn(args.batch, 77, text_encoder.config.hidden_size, device=device)
    pixels = torch.rand(args.batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    tokens = pipe.tokenizer([PROMPT] * args.batch, padding="max_length", max_length=77, return_tensors="pt")
    ids = tokens.input_ids.to(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def update(loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def ours() -> None:
        with autocast:
            update(training.diffusion_loss(unet, latents, embeddings, pipe.scheduler, settings))

    def reference() -> None:  # train_text_to_image.py: encode on the fly, then the same UNet step
        with autocast:
            with torch.no_grad():
                z = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
                text = text_encoder(ids, return_dict=False)[0]
            update(training.diffusion_loss(unet, z, text, pipe.scheduler, settings))

    return {"synthmed (cached latents)": ours, "diffusers reference (VAE + text encoder per step)": reference}


def sampling_calls(pipe: Any, args: argparse.Namespace) -> dict:
    """A batch of images from synthmed's sampler and from ``StableDiffusionPipeline.__call__``."""
    options = argparse.Namespace(
        resolution=args.resolution, steps=args.steps, guidance_scale=args.guidance, grayscale=True
    )
    prompts, seeds = [PROMPT] * args.sample_batch, list(range(args.sample_batch))

    def ours() -> None:
        sampling.generate(pipe, prompts, seeds, options)

    def reference() -> None:
        with torch.no_grad():
            pipe(
                prompts,
                height=args.resolution,
                width=args.resolution,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                generator=torch.Generator().manual_seed(0),
            )

    return {"synthmed generate()": ours, "diffusers StableDiffusionPipeline.__call__": reference}


def measure(calls: dict, images: int, device: torch.device, peak: float, repeats: int) -> list[dict]:
    rows = []
    for name, call in calls.items():
        seconds = timed(call, device, repeats)
        work = flops(call)
        rows.append(
            {
                "code": name,
                "images_per_s": round(images / seconds, 3),
                "seconds_per_call": round(seconds, 4),
                "tflop_per_image": round(work / images / 1e12, 6),
                "fraction_of_ideal": round(work / peak / seconds, 4),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--batch", type=int, default=8, help="training images per step")
    parser.add_argument("--sample-batch", type=int, default=8, help="images per sampling call")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="instead of the measured matmul rate")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    configs = (SD15_UNET, SD15_VAE, SD15_TEXT) if args.model == "sd15" else base_models.TINY_CONFIGS
    pipe = base_models.build_random(*configs, seed=0).to(device)
    pipe.set_progress_bar_config(disable=True)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device, dtype)
    training = measure(training_steps(pipe, args, device, dtype), args.batch, device, peak, args.repeats)
    if device.type == "cuda" and dtype != torch.float32:
        pipe.to(dtype=dtype)  # sampling in the half-precision dtype, as users run it
    sampled = measure(sampling_calls(pipe, args), args.sample_batch, device, peak, max(1, args.repeats // 3))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        json.dumps(
            {
                "model": args.model,
                "device": name,
                "threads": torch.get_num_threads(),
                "dtype": args.dtype,
                "resolution": args.resolution,
                "peak_tflops": round(peak / 1e12, 3),
                "training": training,
                "sampling": sampled,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
