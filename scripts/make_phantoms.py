"""Command-line entry point of the demo dataset (rules/data.smk); the work is in workflow.phantoms."""

from __future__ import annotations

import argparse
import json

from workflow.common.cli import run
from workflow.data import phantoms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", type=json.loads, default={}, help="phantom.settings section (JSON)")
    parser.add_argument("--out", required=True, help="folder that receives CheXpert-v1.0-phantom/")
    args = parser.parse_args(argv)
    run(lambda: phantoms.generate(phantoms.PhantomSettings.from_dict(args.settings), args.out))


if __name__ == "__main__":
    main()
