"""Entry points of the diffusion stage (rules/diffusion.smk): one subcommand per rule, each calling the
function of the same name in workflow.diffusion.stage. finetune_sd is started by ``accelerate launch``."""

from workflow.common.cli import Arg, command, main
from workflow.diffusion.settings import (
    CacheSettings,
    MaskGuidedSampleSettings,
    MaskGuidedTrainSettings,
    SampleSettings,
    TinyVaeSettings,
    TrainSettings,
)
from workflow.prompts.settings import CaptionSettings

BASE_MODEL = Arg("--base-model", help="folder or hub id of the base model")
GPUS = Arg("--gpus", int, "GPUs of the job (0: CPU)")
COMMANDS = [
    command(
        "train_tiny_vae",
        "train the tiny SD's VAE on the training images (base_model tiny)",
        "--dataset",
        Arg("--base-model", help="the built tiny SD's folder"),
        Arg("--settings", TinyVaeSettings.from_json, "tiny VAE settings (JSON)"),
        GPUS,
        "--model",
    ),
    command(
        "cache_latents",
        "encode training images and prompts once",
        "--dataset",
        "--prompts",
        BASE_MODEL,
        Arg("--settings", CacheSettings.from_json, "cache settings (JSON)"),
        GPUS,
        "--cache",
    ),
    command(
        "finetune_sd",
        "fine-tune (full UNet or LoRA) on the cache; resumes by itself",
        "--cache",
        BASE_MODEL,
        Arg("--settings", TrainSettings.from_json, "train settings (JSON)"),
        GPUS,
        "--model",
        "--report",
        "--loss",
        "--grid",
        Arg("--checkpoints", help="checkpoint folder (kept across a killed job)"),
        Arg("--validation", help="folder of the validation grids during training"),
        Arg("--logs", help="folder of the training curves (diffusion.train.log_with)"),
    ),
    command(
        "plan_samples",
        "which images to sample: prompts, labels, seeds, shards",
        "--prompts",
        "--dataset",
        Arg("--settings", SampleSettings.from_json, "sample settings (JSON)"),
        Arg(
            "--captions",
            CaptionSettings.from_json,
            "prompts.demographics (demographic design)",
            optional=True,
        ),
        "--plan",
    ),
    command(
        "sample_images",
        "generate one shard of the plan",
        "--plan",
        "--model",
        Arg("--settings", SampleSettings.from_json, "sample settings (JSON)"),
        Arg("--shard", int),
        GPUS,
        "--images",
        "--table",
    ),
    command("collect_samples", "merge shard tables into the generator's manifest", "--samples", Arg("parts")),
    command(
        "train_mask_guided",
        "train segmentation-guided diffusion on the training images and masks; resumes by itself",
        "--dataset",
        Arg("--settings", MaskGuidedTrainSettings.from_json, "mask-guided train settings (JSON)"),
        GPUS,
        "--model",
        "--report",
        "--loss",
        Arg("--checkpoints", help="checkpoint folder (kept across a killed job)"),
    ),
    command(
        "sample_mask_guided",
        "one shard of the images generated once per real mask of a split",
        "--dataset",
        "--model",
        Arg("--settings", MaskGuidedSampleSettings.from_json, "mask-guided sample settings (JSON)"),
        GPUS,
        Arg("--shard", int),
        "--images",
        "--table",
    ),
    command(
        "collect_mask_guided",
        "merge a mask-guided generator's shard tables into its manifest",
        "--samples",
        Arg("parts"),
    ),
]

if __name__ == "__main__":
    main("workflow.diffusion.stage", __doc__, COMMANDS)
