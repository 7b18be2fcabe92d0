"""Entry points of the evaluation stage (rules/evaluation.smk): one subcommand per rule, each calling the
function of the same name in workflow.evaluation.stage."""

import json

from workflow.common.cli import Arg, command, main
from workflow.evaluation.settings import ConditionalSettings, EvaluationSettings

COMMANDS = [
    command(
        "image_metrics",
        "FID, KID, precision/recall of one generator's synthetic set",
        Arg("--dataset", help="results/data/dataset.parquet"),
        Arg("--samples", help="the generator's manifest"),
        Arg("--prompts", help="prompts table of the reference split"),
        Arg("--settings", EvaluationSettings.from_json, "evaluation section (JSON)"),
        Arg(
            "--extractors",
            json.loads,
            "JSON: extractor kind -> its local model folder or weights file (those the workflow tracks)",
        ),
        "--report",
        "--table",
    ),
    command(
        "conditional_fidelity",
        "the real-data classifier on one generator's samples, against their prompts' labels",
        Arg("--samples", help="the generator's manifest"),
        Arg("--model", help="results/classifier/real/model.pt"),
        Arg("--real-metrics", help="results/classifier/real/metrics.json"),
        Arg("--settings", ConditionalSettings.from_json, "evaluation.conditional_fidelity (JSON)"),
        "--report",
        Arg("--threads", int),
    ),
    command(
        "counterfactual_soundness",
        "soundness of one counterfactual set: effectiveness by the real-data classifier, per-edit measures",
        Arg("--counterfactuals", help="results/counterfactuals/<method>/manifest.parquet"),
        Arg("--plan", help="results/counterfactuals/plan.parquet"),
        Arg("--model", optional=True, help="results/classifier/real/model.pt"),
        Arg("--real-metrics", optional=True, help="results/classifier/real/metrics.json"),
        Arg("--settings", ConditionalSettings.from_json, "evaluation.conditional_fidelity (JSON)"),
        "--report",
        Arg("--threads", int),
    ),
    command(
        "collect_image_metrics",
        "every generator's image quality in results/fid.json and fid_per_class.csv",
        Arg("--generators", many=True),
        Arg("--reports", many=True),
        Arg("--tables", many=True),
        "--fid",
        "--fid-table",
        Arg("--conditional", many=True, optional=True, help="conditional_fidelity.json per generator"),
    ),
]

if __name__ == "__main__":
    main("workflow.evaluation.stage", __doc__, COMMANDS)
