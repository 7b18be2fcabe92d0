"""Command-line entry points of the image-quality evaluation (rules/evaluation.smk); the work is in
workflow.image_metrics and workflow.feature_extractors."""

from __future__ import annotations

import argparse
import json

from workflow.common.cli import run
from workflow.evaluation import extractors as feature_extractors
from workflow.evaluation import fidelity as image_metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("build-tiny-extractor", help="the random-init tiny DINOv2 of the demo")
    tiny.add_argument("--seed", type=int, required=True)
    tiny.add_argument("--out", required=True)

    metrics = sub.add_parser("image-metrics", help="FID, KID, precision/recall of the synthetic set")
    metrics.add_argument("--dataset", required=True, help="results/data/dataset.parquet")
    metrics.add_argument("--samples", required=True, help="results/samples/manifest.parquet")
    metrics.add_argument("--prompts", required=True, help="prompts table of the reference split")
    metrics.add_argument("--settings", type=json.loads, required=True, help="evaluation section (JSON)")
    metrics.add_argument("--extractor-path", help="the extractor's local model folder or weights file")
    metrics.add_argument("--json", required=True)
    metrics.add_argument("--table", required=True)

    args = parser.parse_args(argv)
    commands = {
        "build-tiny-extractor": lambda: feature_extractors.build_tiny(args.out, args.seed),
        "image-metrics": lambda: image_metrics.evaluate(
            args.dataset,
            args.samples,
            args.prompts,
            args.settings,
            args.extractor_path,
            args.json,
            args.table,
        ),
    }
    run(commands[args.command])


if __name__ == "__main__":
    main()
