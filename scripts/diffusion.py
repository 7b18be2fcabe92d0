"""Command-line entry points of the diffusion stage (rules/diffusion.smk); the work is in
workflow.sd_models, workflow.latent_cache, workflow.finetune and workflow.sampling.
``train`` is started by ``accelerate launch``."""

from __future__ import annotations

import argparse
import json

from workflow.common.cli import run

TRAIN_PATHS = ("model", "report", "loss", "grid", "checkpoints", "validation")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tiny_cmd = sub.add_parser("tiny", help="build the offline tiny Stable Diffusion (random weights)")
    tiny_cmd.add_argument("--seed", type=int, required=True)
    tiny_cmd.add_argument("--out", required=True)

    cache_cmd = sub.add_parser("cache", help="encode training images and prompts once")
    cache_cmd.add_argument("--dataset", required=True)
    cache_cmd.add_argument("--prompts", required=True)
    cache_cmd.add_argument("--base-model", required=True, help="diffusion.base_model")
    cache_cmd.add_argument("--tiny", help="folder of the tiny model (when the base model is 'tiny')")
    cache_cmd.add_argument("--settings", type=json.loads, required=True, help="cache settings (JSON)")
    cache_cmd.add_argument("--gpus", type=int, required=True, help="GPUs of the job (0: CPU)")
    cache_cmd.add_argument("--out", required=True)

    train_cmd = sub.add_parser("train", help="fine-tune (full UNet or LoRA) on the cache; resumes by itself")
    train_cmd.add_argument("--cache", required=True)
    train_cmd.add_argument("--base-model", required=True)
    train_cmd.add_argument("--tiny", help="folder of the tiny model (when the base model is 'tiny')")
    train_cmd.add_argument("--settings", type=json.loads, required=True, help="train settings (JSON)")
    train_cmd.add_argument("--gpus", type=int, required=True, help="GPUs of the job (0: CPU)")
    for name in TRAIN_PATHS:
        train_cmd.add_argument(f"--{name}", required=True, help=f"{name} path (see workflow.finetune.train)")

    plan_cmd = sub.add_parser("plan", help="which images to sample: prompts, labels, seeds, shards")
    plan_cmd.add_argument("--prompts", required=True)
    plan_cmd.add_argument("--dataset", required=True)
    plan_cmd.add_argument("--settings", type=json.loads, required=True, help="sample settings (JSON)")
    plan_cmd.add_argument("--out", required=True)

    sample_cmd = sub.add_parser("sample", help="generate one shard of the plan")
    sample_cmd.add_argument("--plan", required=True)
    sample_cmd.add_argument("--model", required=True)
    sample_cmd.add_argument("--settings", type=json.loads, required=True, help="sample settings (JSON)")
    sample_cmd.add_argument("--shard", type=int, required=True)
    sample_cmd.add_argument("--gpus", type=int, required=True, help="GPUs of the job (0: CPU)")
    sample_cmd.add_argument("--images", required=True)
    sample_cmd.add_argument("--out", required=True)

    collect_cmd = sub.add_parser("collect", help="merge shard tables into results/samples/manifest.parquet")
    collect_cmd.add_argument("--out", required=True)
    collect_cmd.add_argument("parts", nargs="+")

    args = parser.parse_args(argv)
    run(lambda: COMMANDS[args.command](args))


# Each command imports only its own library: torch and diffusers take seconds to import, and the plan and
# collect steps need neither.
def tiny(args: argparse.Namespace) -> None:
    from workflow.diffusion import base_models as sd_models

    sd_models.build_tiny(args.out, args.seed)


def cache(args: argparse.Namespace) -> None:
    from workflow.diffusion import latent_cache

    latent_cache.build(
        args.dataset, args.prompts, args.base_model, args.tiny, args.settings, args.gpus, args.out
    )


def train(args: argparse.Namespace) -> None:
    from workflow.diffusion import training as finetune

    settings = finetune.TrainSettings.from_dict(args.settings)
    paths = {name: getattr(args, name) for name in TRAIN_PATHS}
    finetune.train(args.cache, args.base_model, args.tiny, settings, args.gpus, paths)


def plan(args: argparse.Namespace) -> None:
    from workflow.diffusion import sampling

    sampling.write_plan(
        args.prompts, args.dataset, sampling.SampleSettings.from_dict(args.settings), args.out
    )


def sample(args: argparse.Namespace) -> None:
    from workflow.diffusion import sampling

    settings = sampling.SampleSettings.from_dict(args.settings)
    sampling.sample_shard(args.plan, args.model, settings, args.shard, args.gpus, args.images, args.out)


def collect(args: argparse.Namespace) -> None:
    from workflow.diffusion import sampling

    sampling.collect(args.parts, args.out)


COMMANDS = {"tiny": tiny, "cache": cache, "train": train, "plan": plan, "sample": sample, "collect": collect}

if __name__ == "__main__":
    main()
