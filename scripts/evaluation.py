"""Entry points of the evaluation stage (rules/evaluation.smk): one subcommand per rule, each calling the
function of the same name in workflow.evaluation.stage."""

import json

from workflow.common.cli import GPUS, Arg, command, main
from workflow.evaluation.settings import (
    ConditionalSettings,
    EvaluationSettings,
    MaskFaithfulnessSettings,
    VolumeSimilaritySettings,
)

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
        GPUS,
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
        GPUS,
        Arg("--threads", int),
    ),
    command(
        "train_segmenter",
        "train the mask-faithfulness segmenter on the real training images and masks; resumes by itself",
        Arg("--dataset", help="results/data/dataset.parquet"),
        Arg("--settings", MaskFaithfulnessSettings.from_json, "evaluation.mask_faithfulness (JSON)"),
        GPUS,
        "--model",
        "--report",
        Arg("--checkpoints", help="checkpoint folder (kept across a killed job)"),
    ),
    command(
        "mask_faithfulness",
        "Dice per class of a mask-guided generator's images against their conditioning masks",
        Arg("--generator", help="the generator's name (its section of results/fid.json)"),
        Arg("--samples", help="the generator's manifest"),
        Arg("--model", help="results/evaluation/segmenter/model"),
        Arg("--segmenter-report", help="results/evaluation/segmenter/train_report.json"),
        Arg("--settings", MaskFaithfulnessSettings.from_json, "evaluation.mask_faithfulness (JSON)"),
        GPUS,
        "--report",
    ),
    command(
        "volume_similarity",
        "MS-SSIM of a 3D generator's volumes with the real volumes of the same label volumes",
        Arg("--generator", help="the generator's name (its section of results/fid.json)"),
        Arg("--samples", help="the generator's manifest"),
        "--dataset",
        Arg("--settings", VolumeSimilaritySettings.from_json, "evaluation.volume_similarity (JSON)"),
        "--report",
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
        GPUS,
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
        Arg(
            "--faithfulness",
            many=True,
            optional=True,
            help="mask_faithfulness.json per mask-guided or mask-text generator",
        ),
        Arg("--volumes", many=True, optional=True, help="volume_similarity.json per 3D generator"),
    ),
]

if __name__ == "__main__":
    main("workflow.evaluation.stage", __doc__, COMMANDS)
