"""Entry points of the data stage (rules/data.smk): one subcommand per rule, each calling the function of the
same name in workflow.data.stage."""

from workflow.common.cli import Arg, command, main
from workflow.data.phantoms import PhantomSettings
from workflow.data.settings import DatasetSettings, PreprocessSettings, RejectionSettings, SplitSettings

COMMANDS = [
    command(
        "make_phantoms",
        "the demo dataset: chest X-ray phantoms in CheXpert's layout",
        Arg("--settings", PhantomSettings.from_json, "phantom.settings (JSON)"),
        Arg("--out", help="folder that receives CheXpert-v1.0-phantom/"),
    ),
    command(
        "make_phantom_volumes",
        "3D CT phantoms (NIfTI, label volumes, volumes.csv) for the volumes adapter",
        Arg("--settings", PhantomSettings.from_json, "phantom.settings (JSON)"),
        Arg("--out", help="folder that receives CT-phantom/"),
    ),
    command(
        "build_manifest",
        "run the dataset adapter",
        Arg("--dataset", DatasetSettings.from_json, "dataset section (JSON)"),
        "--manifest",
        "--rejected",
    ),
    command(
        "split_dataset",
        "patient-level stratified split",
        "--manifest",
        "--rejected",
        Arg("--settings", SplitSettings.from_json, "split section (JSON)"),
        Arg("--checks", RejectionSettings.from_json, "dataset.labels and max_rejected_fraction (JSON)"),
        "--split",
        "--report",
    ),
    command(
        "preprocess_shard",
        "preprocess one shard of images",
        "--split",
        Arg("--settings", PreprocessSettings.from_json, "preprocess section (JSON)"),
        Arg("--shard", int),
        "--images",
        "--table",
        "--rejected",
    ),
    command("merge_rejections", "concatenate rejection lists", "--rejected", Arg("parts")),
    command(
        "finalize_dataset",
        "merge shards into the final dataset after checks",
        "--rejected",
        Arg("--checks", RejectionSettings.from_json, "dataset.labels and max_rejected_fraction (JSON)"),
        "--dataset",
        "--report",
        Arg("shards"),
    ),
]

if __name__ == "__main__":
    main("workflow.data.stage", __doc__, COMMANDS)
