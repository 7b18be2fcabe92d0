"""Stable Diffusion fine-tuning and sampling throughput: synthmed against diffusers' own example script and
pipeline, on the same data, base model, batch and precision.

Training: synthmed's whole ``finetune_sd`` job (``accelerate launch -m scripts.diffusion finetune_sd``: the
latent cache, data path, accelerate, EMA, checkpointing, as the rule runs it) against the *unmodified*
``examples/text_to_image/train_text_to_image.py`` (``--method full``) or ``train_text_to_image_lora.py``
(``--method lora``) of a diffusers checkout at the pinned release (``--diffusers-examples``, their folder;
the scripts need the ``datasets`` package), launched the same way with its own speed flags
(``--allow_tf32``, ``--foreach_ema``, data-loader workers). Each is run for ``--steps`` S1 and S2 optimizer
steps; the throughput is ``(S2 - S1) * batch / (T2 - T1)``, so start-up, model loading, the final save and
synthmed's final validation grid cancel out. The one-off latent cache is timed on its own.

Sampling (``--sample-steps`` DDIM steps, classifier-free guidance ``--guidance``, ``--sample-batch`` images
per call): synthmed's sampler (:func:`workflow.diffusion.sampling.load_sampler` with its GPU defaults, then
:func:`~workflow.diffusion.sampling.generate`) against ``StableDiffusionPipeline.from_pretrained(...,
dtype=...)`` called with the prompt strings, both in ``--dtype``.

Fraction of ideal: the FLOPs of one training step per image (torch's ``FlopCounterMode``; for diffusers'
script counted on its step, VAE encode + text encoder + UNet) divided by the device's dense matmul rate,
measured in the same run (``--peak-tflops`` overrides it), over the measured time per image.

The base model must be a diffusers Stable Diffusion folder with a CLIP tokenizer (diffusers' scripts load
``CLIPTokenizer``), e.g. a local copy of stable-diffusion-v1-5. ``--tiny-clip-base OUT`` instead writes the
demo's tiny SD architecture (random weights) with a byte-level CLIP BPE tokenizer to OUT and benchmarks that,
for a run without SD 1.5 (CPU figures at tiny size; the demo's tiny SD keeps its word-level tokenizer).
GPU node, SD 1.5 at 512 px in bf16::

    python benchmarks/sd_throughput.py --base-model /models/stable-diffusion-v1-5 \\
        --diffusers-examples /src/diffusers-0.42.1/examples/text_to_image --resolution 512 --batch 8 \\
        --precision bf16 --method full --steps 20 520 --out /tmp/sd-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from snakemake.utils import validate
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow.diffusion import base_models, sampling, stage, training
from workflow.diffusion.settings import CacheSettings, SampleSettings, TrainSettings

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Chest X-ray showing Cardiomegaly, Pleural Effusion",
    "Chest X-ray showing No Finding",
    "Chest X-ray showing Pneumothorax",
    "Chest X-ray showing Edema, Support Devices",
]
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def settings_of(diffusion: dict[str, Any]) -> dict[str, Any]:
    """The ``diffusion`` section validated against the schema, defaults filled in."""
    config = {"dataset": {"chexpert": {"csv": "x.csv", "image_root": "."}}, "diffusion": diffusion}
    validate(config, str(ROOT / "resources" / "config.schema.yaml"))
    return config


def clip_byte_tokenizer(folder: Path) -> Any:
    """CLIP's byte-level BPE tokenizer (Radford et al. 2021) with no merges, written to ``folder`` as
    ``vocab.json`` and ``merges.txt`` (what ``CLIPTokenizer.from_pretrained`` reads) and returned: every
    byte-level character with and without the end-of-word mark ``</w>``, after CLIP's start and end tokens at
    the ids the tiny text encoder uses (0 and 1). Every text tokenises (one token per character), so a tiny
    SD with it loads in diffusers' example scripts, which require ``CLIPTokenizer``."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    bos, eos, _ = base_models.SPECIAL_TOKENS
    characters = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [bos, eos, *characters, *(c + "</w>" for c in characters)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        model_max_length=base_models.MAX_TOKENS,
    )


def build_tiny_clip_base(out: Path, seed: int = 0) -> None:
    """The demo's tiny SD architecture with random (seeded) weights and :func:`clip_byte_tokenizer`, its
    text encoder's vocabulary sized to it, saved as a diffusers folder at ``out``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = base_models.build_random(*base_models.TINY_CONFIGS, seed=seed)
    tokenizer = clip_byte_tokenizer(out / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(**(base_models.TINY_TEXT | {"vocab_size": len(tokenizer)})))
    pipe.register_modules(tokenizer=tokenizer, text_encoder=text_encoder)
    pipe.save_pretrained(out)


def write_data(folder: Path, images: int, resolution: int) -> None:
    """``images`` random grayscale PNGs with four prompts, as synthmed's tables (``dataset.parquet``,
    ``prompts.parquet``) and as a datasets ``imagefolder`` (``metadata.jsonl``) for diffusers' script."""
    rng = np.random.default_rng(0)
    pictures = folder / "imagefolder"
    pictures.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        name = f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (resolution, resolution), dtype=np.uint8)).save(pictures / name)
        rows.append({"image_id": f"p{i}", "image": str(pictures / name), "file_name": name})
    table = pd.DataFrame(rows)
    table["prompt_id"] = np.arange(images) % len(PROMPTS)
    table["prompt"] = [PROMPTS[k] for k in table["prompt_id"]]
    table["selected"] = True
    table[["image_id", "image"]].to_parquet(folder / "dataset.parquet")
    table[["image_id", "prompt", "prompt_id", "selected"]].to_parquet(folder / "prompts.parquet")
    lines = [
        json.dumps({"file_name": f, "text": t})
        for f, t in zip(table["file_name"], table["prompt"], strict=True)
    ]
    (pictures / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def launch(arguments: list[str], precision: str, log: Path) -> float:
    """Seconds of one ``accelerate launch`` on one process (as the rule launches fine-tuning)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
    ]
    command += ["--mixed_precision", precision, "--dynamo_backend", "no", *arguments]
    started = time.perf_counter()
    with log.open("w") as stderr:
        subprocess.run(command, check=True, cwd=ROOT, stdout=stderr, stderr=stderr, env=os.environ)
    return time.perf_counter() - started


def synthmed_training(args: argparse.Namespace, cache: Path, steps: int, out: Path) -> float:
    """Seconds of synthmed's ``finetune_sd`` job for ``steps`` optimizer steps."""
    train = {"gpus": 1, "max_steps": steps, "batch_size": args.batch, "learning_rate": 1e-5}
    train |= {"mixed_precision": args.precision, "ema": args.ema and args.method == "full"}
    train |= {"validation_prompts": 1, "validation_inference_steps": 1}
    settings = TrainSettings.of(settings_of({"method": args.method, "train": train}))
    paths = {name: str(out / name) for name in ("model", "checkpoints", "validation", "logs")}
    paths |= {
        "report": str(out / "report.json"),
        "loss": str(out / "loss.png"),
        "grid": str(out / "grid.png"),
    }
    command = [
        "-m",
        "scripts.diffusion",
        "finetune_sd",
        "--cache",
        str(cache),
        "--base-model",
        args.base_model,
    ]
    command += ["--settings", settings.to_json(), "--gpus", "1"]
    command += [arg for name, path in paths.items() for arg in (f"--{name}", path)]
    return launch(command, args.precision, out.with_suffix(".log"))


def diffusers_training(args: argparse.Namespace, data: Path, steps: int, out: Path) -> float:
    """Seconds of diffusers' unmodified example script for ``steps`` optimizer steps."""
    name = "train_text_to_image.py" if args.method == "full" else "train_text_to_image_lora.py"
    command = [str(Path(args.diffusers_examples) / name), "--pretrained_model_name_or_path", args.base_model]
    command += ["--train_data_dir", str(data / "imagefolder"), "--resolution", str(args.resolution)]
    command += ["--center_crop", "--train_batch_size", str(args.batch), "--max_train_steps", str(steps)]
    command += ["--learning_rate", "1e-5", "--mixed_precision", args.precision, "--output_dir", str(out)]
    command += ["--dataloader_num_workers", str(args.workers), "--allow_tf32", "--report_to", "tensorboard"]
    command += ["--seed", "0"]
    if args.method == "full" and args.ema:
        command += ["--use_ema", "--foreach_ema"]
    if args.method == "lora":
        command += ["--rank", "4"]
    return launch(command, args.precision, out.with_suffix(".log"))


def throughput(run: Callable[[int, Path], float], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Images per second between a run of S1 and one of S2 steps (fixed costs cancel)."""
    short, long = args.steps
    out.mkdir(parents=True, exist_ok=True)
    seconds = [run(steps, out / f"{steps}-steps") for steps in (short, long)]
    rate = (long - short) * args.batch / (seconds[1] - seconds[0])
    return {"seconds": [round(s, 1) for s in seconds], "images_per_s": round(rate, 3)}


def step_flops(pipe: Any, args: argparse.Namespace, device: torch.device, on_the_fly: bool) -> float:
    """FLOPs per image of one full-UNet training step at batch 1: UNet forward and backward, plus for
    diffusers' script the VAE encoder and text encoder."""
    side = args.resolution // pipe.vae_scale_factor
    settings = argparse.Namespace(seed=0, caption_dropout=0.0, noise_offset=0.0, snr_gamma=None)
    timesteps = pipe.scheduler.config.num_train_timesteps
    draws = training.step_draws(settings, 0, 1, (4, side, side), 1, timesteps, device)
    pixels = torch.rand(1, 3, args.resolution, args.resolution, device=device) * 2 - 1
    ids = pipe.tokenizer(PROMPTS[:1], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with FlopCounterMode(display=False) as counter:
        if on_the_fly:
            with torch.no_grad():
                latents = pipe.vae.encode(pixels).latent_dist.sample()
                text = pipe.text_encoder(ids.to(device))[0]
        else:
            latents = torch.randn(1, 4, side, side, device=device)
            text = torch.randn(1, 77, pipe.text_encoder.config.hidden_size, device=device)
        training.diffusion_loss(pipe.unet, latents, text, pipe.scheduler, settings, draws).backward()
    pipe.unet.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate (FLOP/s) of the device in ``dtype``."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, device, repeats=10)


def timed(call: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per call after one warm-up call."""
    call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def sampling_rates(args: argparse.Namespace, model: str, device: torch.device) -> dict[str, float]:
    """Images per second of synthmed's sampler and of ``StableDiffusionPipeline``, same model and dtype."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    dtype = {"bf16": "bfloat16", "fp16": "float16", "no": "float32"}[args.dtype]
    diffusion = {"resolution": args.resolution}
    diffusion["sample"] = {"steps": args.sample_steps, "guidance_scale": args.guidance, "dtype": dtype}
    settings = SampleSettings.of(settings_of(diffusion))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.sample_batch)]
    sampler = sampling.load_sampler(model, settings, device)
    seeds = list(range(len(prompts)))
    synthmed = timed(lambda: sampling.generate(sampler, prompts, seeds, settings), device, 2)
    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=DTYPES[args.dtype]).to(device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def call() -> None:
        pipe(
            prompts,
            height=args.resolution,
            width=args.resolution,
            num_inference_steps=args.sample_steps,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(0),
        )

    reference = timed(call, device, 2)
    return {
        "synthmed sampler": round(len(prompts) / synthmed, 3),
        "diffusers StableDiffusionPipeline": round(len(prompts) / reference, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    base = parser.add_mutually_exclusive_group(required=True)
    base.add_argument("--base-model", help="diffusers SD folder with a CLIP tokenizer")
    base.add_argument(
        "--tiny-clip-base", type=Path, help="write the tiny SD with a CLIP tokenizer here, use it"
    )
    parser.add_argument("--diffusers-examples", required=True, help="diffusers' examples/text_to_image")
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--ema", action="store_true", help="EMA of the UNet in both (full only)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--precision", choices=["no", "bf16", "fp16"], default="bf16")
    parser.add_argument("--batch", type=int, default=8, help="training images per step")
    parser.add_argument("--steps", type=int, nargs=2, default=[20, 520], help="S1 S2 optimizer steps")
    parser.add_argument("--images", type=int, default=256, help="training images written")
    parser.add_argument("--workers", type=int, default=4, help="diffusers' data-loader workers")
    parser.add_argument("--dtype", choices=["no", "bf16", "fp16"], default="bf16", help="sampling dtype")
    parser.add_argument("--sample-batch", type=int, default=8)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--peak-tflops", type=float, default=None, help="instead of the measured matmul rate")
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    args = parser.parse_args()

    if args.tiny_clip_base:
        build_tiny_clip_base(args.tiny_clip_base)
        args.base_model = str(args.tiny_clip_base)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    write_data(args.out, args.images, args.resolution)
    cache = args.out / "cache.safetensors"
    started = time.perf_counter()
    cache_settings = CacheSettings(random_flip=False, batch_size=32, resolution=args.resolution)
    stage.cache_latents(
        str(args.out / "dataset.parquet"), str(args.out / "prompts.parquet"), args.base_model,
        cache_settings, 1, str(cache),
    )  # fmt: skip
    cache_rate = args.images / (time.perf_counter() - started)
    ours = throughput(lambda s, o: synthmed_training(args, cache, s, o), args, args.out / "synthmed")
    theirs = throughput(lambda s, o: diffusers_training(args, args.out, s, o), args, args.out / "diffusers")

    pipe = base_models.load_pipeline(base_models.resolve_base(args.base_model)).to(device)
    dtype = DTYPES[args.precision]
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device, dtype)
    for result, on_the_fly in ((ours, False), (theirs, True)):
        flops = step_flops(pipe, args, device, on_the_fly)
        result["tflop_per_image"] = float(f"{flops / 1e12:.4g}")
        result["fraction_of_ideal"] = round(result["images_per_s"] * flops / peak, 3)
    del pipe
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    report = {
        "device": name,
        "base_model": args.base_model,
        "method": args.method,
        "ema": args.ema,
        "resolution": args.resolution,
        "precision": args.precision,
        "batch": args.batch,
        "peak_tflops": float(f"{peak / 1e12:.4g}"),
        "cache_images_per_s": round(cache_rate, 2),
        "training": {"synthmed finetune_sd": ours, "diffusers example script": theirs},
        "training_ratio": round(ours["images_per_s"] / theirs["images_per_s"], 3),
        "sampling_images_per_s": sampling_rates(args, args.base_model, device),
    }
    sampled = report["sampling_images_per_s"]
    report["sampling_ratio"] = round(
        sampled["synthmed sampler"] / sampled["diffusers StableDiffusionPipeline"], 3
    )
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    json.dump(report, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
