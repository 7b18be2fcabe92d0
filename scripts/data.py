"""Command-line entry points of the data stage (rules/data.smk); the work is in workflow.dataset."""

from __future__ import annotations

import argparse
import json

from workflow.common.cli import run
from workflow.data import stage as dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="run the dataset adapter")
    build.add_argument("--dataset", type=json.loads, required=True, help="dataset section (JSON)")
    build.add_argument("--manifest", required=True)
    build.add_argument("--rejected", required=True)

    split = sub.add_parser("split", help="patient-level stratified split")
    split.add_argument("--manifest", required=True)
    split.add_argument("--rejected", required=True)
    split.add_argument("--settings", type=json.loads, required=True, help="split section (JSON)")
    split.add_argument("--labels", type=json.loads, required=True, help="dataset.labels (JSON)")
    split.add_argument("--max-rejected", type=float, required=True)
    split.add_argument("--out", required=True)
    split.add_argument("--report", required=True)

    shard = sub.add_parser("preprocess", help="preprocess one shard of images")
    shard.add_argument("--split", required=True)
    shard.add_argument("--settings", type=json.loads, required=True, help="preprocess section (JSON)")
    shard.add_argument("--shard", type=int, required=True)
    shard.add_argument("--images", required=True)
    shard.add_argument("--out", required=True)
    shard.add_argument("--rejected", required=True)

    merge = sub.add_parser("merge-rejections", help="concatenate rejection lists")
    merge.add_argument("--out", required=True)
    merge.add_argument("parts", nargs="+")

    final = sub.add_parser("finalize", help="merge shards into the final dataset after checks")
    final.add_argument("--rejected", required=True)
    final.add_argument("--labels", type=json.loads, required=True)
    final.add_argument("--max-rejected", type=float, required=True)
    final.add_argument("--out", required=True)
    final.add_argument("--report", required=True)
    final.add_argument("shards", nargs="+")

    args = parser.parse_args(argv)
    commands = {
        "build": lambda: dataset.build(args.dataset, args.manifest, args.rejected),
        "split": lambda: dataset.split(
            args.manifest, args.rejected, args.labels, args.settings, args.max_rejected, args.out, args.report
        ),
        "preprocess": lambda: dataset.preprocess_shard(
            args.split, args.settings, args.shard, args.images, args.out, args.rejected
        ),
        "merge-rejections": lambda: dataset.merge_rejections(args.parts, args.out),
        "finalize": lambda: dataset.finalize(
            args.shards, args.rejected, args.labels, args.max_rejected, args.out, args.report
        ),
    }
    run(commands[args.command])


if __name__ == "__main__":
    main()
