"""Entry points of the classifier stage (rules/classifier.smk): one subcommand per rule, each calling the
function of the same name in workflow.classifier.stage."""

import json

from workflow.classifier.settings import EvaluationSettings, FairnessSettings, FocusSettings, TrainSettings
from workflow.common.cli import GPUS, Arg, command, main

THREADS = Arg("--threads", int, "CPU threads of the job")
COMMANDS = [
    command(
        "train_classifier",
        "train the classifier of one run",
        Arg("--run", help="<regime> or <regime>/<source>"),
        "--dataset",
        Arg("--sources", json.loads, "extra manifests by kind (JSON)"),
        Arg("--labels", json.loads, "dataset.labels (JSON)"),
        Arg("--settings", TrainSettings.from_json, "classifier.training (JSON)"),
        Arg("--synthetic-per-real", float),
        "--model",
        "--report",
        Arg("--work-dir", help="checkpoint folder (resumed from, removed at the end)"),
        GPUS,
        THREADS,
        Arg("--logs", help="folder of the training curves (classifier.training.log_with)"),
    ),
    command(
        "evaluate_classifier",
        "test metrics, fairness and figures of one run",
        "--dataset",
        "--model",
        "--training-report",
        Arg("--settings", EvaluationSettings.from_json, "classifier.evaluation (JSON)"),
        Arg("--fairness-settings", FairnessSettings.from_json, "classifier.fairness (JSON)"),
        "--metrics-report",
        "--fairness-report",
        "--predictions",
        "--roc",
        "--subgroups",
        GPUS,
        THREADS,
    ),
    command(
        "classifier_focus",
        "Grad-CAM focus metrics of one run",
        "--dataset",
        "--model",
        Arg("--settings", FocusSettings.from_json, "classifier.focus and what it needs (JSON)"),
        "--focus",
        "--overlays",
        THREADS,
    ),
    command(
        "compare_classifiers",
        "one table across runs",
        Arg("--runs", help="the runs, in order", many=True),
        Arg("--metrics-reports", help="their metrics.json", many=True),
        Arg("--fairness-reports", help="their fairness.json", many=True),
        Arg("--focus-reports", help="their focus.json", many=True),
        "--table",
        "--summary",
    ),
]

if __name__ == "__main__":
    main("workflow.classifier.stage", __doc__, COMMANDS)
