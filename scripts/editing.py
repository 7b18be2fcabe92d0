"""Entry points of the editing stage (rules/editing.smk): one subcommand per rule, each calling the
function of the same name in workflow.editing.stage."""

import json

from workflow.common.cli import GPUS, Arg, command, main
from workflow.editing.settings import EditSettings, PlanSettings
from workflow.prompts.settings import PromptSettings

COMMANDS = [
    command(
        "plan_edits",
        "every (image, edit): captions, target labels, status and reason, seed, batch and shard",
        Arg("--dataset", help="results/data/dataset.parquet"),
        Arg("--prompts", help="the editing generator's prompts table of editing.split"),
        Arg("--model", help="the editing generator's fine-tuned model folder (its tokenizer)"),
        Arg("--ground-truth", optional=True, help="the phantoms' counterfactuals.csv (editing.ground_truth)"),
        Arg("--settings", PlanSettings.from_json, "editing plan settings (JSON)"),
        Arg("--prompt-settings", PromptSettings.from_json, "prompts section with the generator's strategies"),
        Arg("--labels", json.loads, "dataset.labels (JSON)"),
        "--plan",
    ),
    command(
        "edit_images",
        "one method's edits of one shard of the plan",
        "--plan",
        Arg("--model", help="the editing generator's fine-tuned model folder"),
        "--method",
        Arg("--settings", EditSettings.from_json, "editing method settings (JSON)"),
        Arg("--mask-classes", json.loads, "dataset.mask_classes (JSON)"),
        Arg("--shard", int),
        GPUS,
        "--images",
        "--table",
        Arg(
            "--clip-model",
            optional=True,
            help="the CLIP filter's model (editing.clip.model; tiny: its folder)",
        ),
        Arg("--inversions", optional=True, help="the inversion cache's folder (editing.cache_inversions)"),
    ),
    command(
        "collect_edits",
        "merge shard tables into the method's counterfactual manifest and its example grid",
        "--method",
        "--plan",
        "--counterfactuals",
        "--examples",
        "--cross-fades",
        Arg("parts"),
    ),
]

if __name__ == "__main__":
    main("workflow.editing.stage", __doc__, COMMANDS)
