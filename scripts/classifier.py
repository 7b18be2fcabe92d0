"""Command-line entry points of the classifier stage (rules/classifier.smk); the work is in
workflow.downstream (train, evaluate, focus) and workflow.comparison (compare)."""

from __future__ import annotations

import argparse
import json
from types import ModuleType

from workflow.classifier import comparison
from workflow.common.cli import run


def _stage() -> ModuleType:
    """The torch-based stage functions, imported only by the subcommands using them (torch loads slowly)."""
    from workflow.classifier import stage as downstream

    return downstream


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train the classifier of one regime")
    train.add_argument("--regime", required=True)
    train.add_argument("--dataset", required=True)
    train.add_argument("--sources", type=json.loads, required=True, help="extra manifests by name (JSON)")
    train.add_argument("--labels", type=json.loads, required=True, help="dataset.labels (JSON)")
    train.add_argument("--settings", type=json.loads, required=True, help="classifier.training (JSON)")
    train.add_argument("--synthetic-per-real", type=float, required=True)
    train.add_argument("--model", required=True)
    train.add_argument("--report", required=True)
    train.add_argument(
        "--work-dir", required=True, help="checkpoint folder (resumed from, removed at the end)"
    )
    train.add_argument("--threads", type=int, default=1)

    evaluate = sub.add_parser("evaluate", help="test metrics, fairness and figures of one regime")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--training", required=True)
    evaluate.add_argument("--settings", type=json.loads, required=True, help="classifier.evaluation (JSON)")
    evaluate.add_argument("--fairness", type=json.loads, required=True, help="classifier.fairness (JSON)")
    for name in ("metrics", "fairness-out", "predictions", "roc", "subgroups"):
        evaluate.add_argument(f"--{name}", required=True)
    evaluate.add_argument("--threads", type=int, default=1)

    focus = sub.add_parser("focus", help="Grad-CAM focus metrics of one regime")
    focus.add_argument("--dataset", required=True)
    focus.add_argument("--model", required=True)
    focus.add_argument("--settings", type=json.loads, required=True, help="classifier.focus (JSON)")
    focus.add_argument("--mask-classes", type=json.loads, required=True, help="dataset.mask_classes (JSON)")
    focus.add_argument("--seed", type=int, required=True)
    focus.add_argument("--out", required=True)
    focus.add_argument("--overlays", required=True)
    focus.add_argument("--threads", type=int, default=1)

    compare = sub.add_parser("compare", help="one table across regimes")
    compare.add_argument("--regimes", nargs="+", required=True)
    compare.add_argument("--metrics", nargs="+", required=True)
    compare.add_argument("--fairness", nargs="+", required=True)
    compare.add_argument("--focus", nargs="+", required=True)
    compare.add_argument("--csv", required=True)
    compare.add_argument("--json", required=True)

    args = parser.parse_args(argv)
    commands = {
        "train": lambda: _stage().train(
            args.regime,
            args.dataset,
            args.sources,
            args.labels,
            args.settings,
            args.synthetic_per_real,
            args.model,
            args.report,
            args.work_dir,
            args.threads,
        ),
        "evaluate": lambda: _stage().evaluate(
            args.dataset,
            args.model,
            args.training,
            args.settings,
            args.fairness,
            {
                "metrics": args.metrics,
                "fairness": args.fairness_out,
                "predictions": args.predictions,
                "roc": args.roc,
                "subgroups": args.subgroups,
            },
            args.threads,
        ),
        "focus": lambda: _stage().focus(
            args.dataset,
            args.model,
            args.settings,
            args.mask_classes,
            args.seed,
            args.out,
            args.overlays,
            args.threads,
        ),
        "compare": lambda: comparison.compare(
            args.regimes, args.metrics, args.fairness, args.focus, args.csv, args.json
        ),
    }
    run(commands[args.command])


if __name__ == "__main__":
    main()
