"""Command-line entry points of the prompts stage (rules/prompts.smk); work: workflow.prompt_stage."""

from __future__ import annotations

import argparse
import json

from workflow.common.cli import run
from workflow.prompts import stage as prompt_stage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny-model", help="save a randomly initialised tiny ViT (demo, tests)")
    tiny.add_argument("--seed", type=int, required=True)
    tiny.add_argument("--out", required=True)

    embed = sub.add_parser("embed", help="CLS-token embeddings of one shard of the images")
    embed.add_argument("--dataset", required=True)
    embed.add_argument("--model", required=True, help="hub id or model folder")
    embed.add_argument("--settings", type=json.loads, required=True, help="embedding settings (JSON)")
    embed.add_argument("--shard", type=int, required=True)
    embed.add_argument("--threads", type=int, required=True)
    embed.add_argument("--out", required=True)

    merge = sub.add_parser("merge-embeddings", help="merge embedding shards, sorted by image id")
    merge.add_argument("--out", required=True)
    merge.add_argument("shards", nargs="+")

    cluster = sub.add_parser("cluster", help="outlier rule, k-means morphology clusters and montages")
    cluster.add_argument("--embeddings", required=True)
    cluster.add_argument("--dataset", required=True)
    cluster.add_argument("--settings", type=json.loads, required=True, help="prompts.mep + seed, classes")
    cluster.add_argument("--labels", type=json.loads, required=True, help="dataset.labels (JSON)")
    cluster.add_argument("--out", required=True)
    cluster.add_argument("--report", required=True)
    cluster.add_argument("--montages", required=True)

    build = sub.add_parser("build", help="one prompts table per split")
    build.add_argument("--dataset", required=True)
    build.add_argument("--clusters", default=None, help="clusters table (mep strategy only)")
    build.add_argument("--settings", type=json.loads, required=True, help="prompts section (JSON)")
    build.add_argument("--labels", type=json.loads, required=True, help="dataset.labels (JSON)")
    build.add_argument("--train", required=True)
    build.add_argument("--val", required=True)
    build.add_argument("--test", required=True)
    build.add_argument("--report", required=True)

    export = sub.add_parser("export", help="diffusers image folder of the selected training images")
    export.add_argument("--prompts", required=True, help="the train split's prompts table")
    export.add_argument("--dataset", required=True)
    export.add_argument("--labels", type=json.loads, required=True, help="dataset.labels (JSON)")
    export.add_argument("--out", required=True)

    args = parser.parse_args(argv)
    commands = {
        "tiny-model": lambda: prompt_stage.build_tiny_model(args.out, args.seed),
        "embed": lambda: prompt_stage.embed_shard(
            args.dataset, args.model, args.settings, args.shard, args.threads, args.out
        ),
        "merge-embeddings": lambda: prompt_stage.merge_embeddings(args.shards, args.out),
        "cluster": lambda: prompt_stage.cluster(
            args.embeddings, args.dataset, args.settings, args.labels, args.out, args.report, args.montages
        ),
        "build": lambda: prompt_stage.build_prompts(
            args.dataset,
            args.clusters,
            args.settings,
            args.labels,
            {"train": args.train, "val": args.val, "test": args.test},
            args.report,
        ),
        "export": lambda: prompt_stage.export_imagefolder(args.prompts, args.dataset, args.labels, args.out),
    }
    run(commands[args.command])


if __name__ == "__main__":
    main()
