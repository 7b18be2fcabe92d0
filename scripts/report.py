"""Entry points of the study report's own tables and figures (rules/report.smk): one subcommand per rule, each
calling the function of the same name in workflow.report.stage."""

import json

from workflow.common.cli import Arg, command, main
from workflow.report.settings import ReportSettings

COMMANDS = [
    command(
        "report_tables",
        "HTML tables: split, image quality, classifier runs",
        Arg("--split-report", help="results/data/split_report.json"),
        Arg("--fid", help="results/fid.json"),
        Arg("--fid-table", help="results/fid_per_class.csv"),
        Arg("--comparison", help="results/classifier/comparison.csv"),
        "--split-page",
        "--image-quality-page",
        "--regimes-page",
    ),
    command(
        "counterfactual_tables",
        "HTML table: the soundness of every editing method's counterfactuals",
        Arg("--methods", many=True, help="editing.methods"),
        Arg("--soundness", many=True, help="results/counterfactuals/<method>/soundness.json per method"),
        "--page",
    ),
    command(
        "real_vs_synthetic",
        "one real vs synthetic image grid per finding, for one generator",
        Arg("--dataset", help="results/data/dataset.parquet"),
        Arg("--samples", help="the generator's manifest"),
        Arg("--labels", json.loads, "dataset.labels (JSON)"),
        Arg("--settings", ReportSettings.from_json, "report section (JSON)"),
        "--grids",
    ),
]

if __name__ == "__main__":
    main("workflow.report.stage", __doc__, COMMANDS)
