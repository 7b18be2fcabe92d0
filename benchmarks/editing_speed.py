"""Seconds per image of prompt-to-prompt editing (workflow.editing): inversion (plain DDIM and null-text) and
the edit (one source + one target sampling run with the P2P controller, both decoded).

``--model tiny`` is the demo's tiny SD (random weights, CPU, minutes); ``--model sd15`` builds SD 1.5's UNet,
VAE and text encoder from their configs with random weights (no download), the architecture PRISM edits at
512 px. Random weights do not change the cost of a fixed number of steps, except that null-text's early stop
never fires on them, so its figure is the full ``--inner-steps`` upper bound.

    python benchmarks/editing_speed.py --model tiny --resolution 32 --device cpu
    python benchmarks/editing_speed.py --model sd15 --resolution 512 --device cuda --dtype fp32 --batch 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow.diffusion import base_models
from workflow.editing import inversion, p2p

# Stable Diffusion 1.5's architecture (its configs on the hub), built with random weights: the same FLOPs.
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

SOURCE = "Chest X-ray showing Cardiomegaly, Pleural Effusion"
TARGET = "Chest X-ray showing Pleural Effusion"
WORDS = ["Cardiomegaly"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def timed(step, device: torch.device) -> tuple[float, object]:
    """Seconds of one call and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights' precision")
    parser.add_argument("--batch", type=int, default=2, help="images inverted and edited together")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--inner-steps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    configs = base_models.TINY_CONFIGS if args.model == "tiny" else (SD15_UNET, SD15_VAE, SD15_TEXT)
    pipe = base_models.build_random(*configs, seed=0).to(device, DTYPES[args.dtype])
    settings = {
        "steps": args.steps,
        "guidance_scale": 7.5,
        "cross_replace_steps": 0.8,
        "self_replace_steps": 0.5,
        "word_weight": 2.0,
        "local_blend": True,
        "blend_threshold": 0.3,
    }
    null_text = {"inner_steps": args.inner_steps, "early_stop": 1e-5, "learning_rate": 1e-2}
    images = torch.rand(args.batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    prompts = [SOURCE] * args.batch
    warm = inversion.invert(pipe, images, prompts, 2, 7.5)  # warm-up (kernels, allocator)
    p2p.sample_edits(
        pipe, warm, prompts, [TARGET] * args.batch, [WORDS] * args.batch, settings | {"steps": 2}
    )
    ddim_s, _ = timed(lambda: inversion.invert(pipe, images, prompts, args.steps, 7.5), device)
    null_s, inverted = timed(
        lambda: inversion.invert(pipe, images, prompts, args.steps, 7.5, null_text), device
    )

    def edit() -> None:
        result = p2p.sample_edits(
            pipe, inverted, prompts, [TARGET] * args.batch, [WORDS] * args.batch, settings
        )
        inversion.decode_latents(pipe, torch.cat([result.target, result.source]))

    edit_s, _ = timed(edit, device)
    per_image = {
        "ddim_inversion_s": ddim_s / args.batch,
        "null_text_inversion_s": null_s / args.batch,
        "edit_s": edit_s / args.batch,
        "null_text_p2p_total_s": (null_s + edit_s) / args.batch,
    }
    print(json.dumps({"args": vars(args), "seconds_per_image": per_image}, indent=2))


if __name__ == "__main__":
    main()
