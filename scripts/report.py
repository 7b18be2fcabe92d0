"""Command-line entry points of the study report's own tables and figures (rules/report.smk); the work is in
workflow.study_report."""

from __future__ import annotations

import argparse
import json

from workflow.common.cli import run
from workflow.report import stage as study_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    tables = sub.add_parser("tables", help="HTML tables: split, image quality, classifier regimes")
    tables.add_argument("--split-report", required=True, help="results/data/split_report.json")
    tables.add_argument("--fid", required=True, help="results/fid.json")
    tables.add_argument("--fid-table", required=True, help="results/fid_per_class.csv")
    tables.add_argument("--comparison", required=True, help="results/classifier/comparison.csv")
    tables.add_argument("--split-out", required=True)
    tables.add_argument("--image-quality-out", required=True)
    tables.add_argument("--regimes-out", required=True)

    grids = sub.add_parser("real-vs-synthetic", help="one real vs synthetic image grid per finding")
    grids.add_argument("--dataset", required=True, help="results/data/dataset.parquet")
    grids.add_argument("--samples", required=True, help="results/samples/manifest.parquet")
    grids.add_argument("--labels", type=json.loads, required=True, help="dataset.labels (JSON)")
    grids.add_argument("--per-row", type=int, required=True)
    grids.add_argument("--seed", type=int, required=True)
    grids.add_argument("--out", required=True)

    args = parser.parse_args(argv)
    commands = {
        "tables": lambda: study_report.write_tables(
            args.split_report,
            args.fid,
            args.fid_table,
            args.comparison,
            {"split": args.split_out, "image_quality": args.image_quality_out, "regimes": args.regimes_out},
        ),
        "real-vs-synthetic": lambda: study_report.real_vs_synthetic(
            args.dataset, args.samples, args.labels, args.out, args.per_row, args.seed
        ),
    }
    run(commands[args.command])


if __name__ == "__main__":
    main()
