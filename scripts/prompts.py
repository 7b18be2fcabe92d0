"""Entry points of the prompts stage (rules/prompts.smk): one subcommand per rule, each calling the function
of the same name in workflow.prompts.stage."""

import json

from workflow.common.cli import GPUS, Arg, command, main
from workflow.prompts.settings import ClusterSettings, EmbedSettings, PromptSettings

LABELS = Arg("--labels", json.loads, "dataset.labels (JSON)")
COMMANDS = [
    command(
        "embed_images",
        "CLS-token embeddings of one shard of the images",
        "--dataset",
        Arg("--model", help="hub id or model folder"),
        Arg("--settings", EmbedSettings.from_json, "embedding settings (JSON)"),
        Arg("--shard", int),
        GPUS,
        Arg("--threads", int),
        "--embeddings",
    ),
    command("merge_embeddings", "merge embedding shards, sorted by image id", "--embeddings", Arg("parts")),
    command(
        "cluster_embeddings",
        "outlier rule, k-means morphology clusters and montages",
        "--embeddings",
        "--dataset",
        Arg("--settings", ClusterSettings.from_json, "clustering settings (JSON)"),
        LABELS,
        "--clusters",
        "--report",
        "--montages",
    ),
    command(
        "build_prompts",
        "one prompts table per split",
        "--dataset",
        Arg("--clusters", help="clusters table (mep strategy only)", optional=True),
        Arg("--settings", PromptSettings.from_json, "prompts section (JSON)"),
        LABELS,
        "--train",
        "--val",
        "--test",
        "--report",
    ),
    command(
        "build_prompt_variant",
        "the study's selected images captioned with a sub-list of its strategies",
        Arg("--prompts", help="the study's prompts tables (train, val, test)", many=True),
        "--dataset",
        Arg("--settings", PromptSettings.from_json, "prompts section with the variant's strategies (JSON)"),
        LABELS,
        "--train",
        "--val",
        "--test",
        "--report",
    ),
    command(
        "export_imagefolder",
        "diffusers image folder of the selected training images",
        Arg("--prompts", help="the train split's prompts table"),
        "--dataset",
        LABELS,
        "--folder",
    ),
]

if __name__ == "__main__":
    main("workflow.prompts.stage", __doc__, COMMANDS)
