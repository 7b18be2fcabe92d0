# Helpers of rules/diffusion.smk (kept apart from the rules, as `snakemake --lint` asks).

DIFFUSION = config["diffusion"]
TINY_SD = "results/models/tiny-sd"
SD_RUN = f"results/models/sd-{DIFFUSION['method']}"
SAMPLES = "results/samples"
SAMPLE_SHARDS = range(DIFFUSION["sample"]["shards"])


def tiny_sd_input():
    """The tiny model folder as an input when diffusion.base_model is `tiny`; none otherwise."""
    return [TINY_SD] if DIFFUSION["base_model"] == "tiny" else []


def tiny_option(wildcards, input):
    """`--tiny FOLDER` when the rule has the tiny model as input."""
    return f"--tiny {input.base}" if input.base else ""


def launch_processes(wildcards, resources):
    """accelerate processes of finetune_sd: one per GPU of the job, one (on the CPU) without GPUs."""
    return max(resources.gpu, 1)


def diffusion_outputs():
    """The end products of the diffusion stage."""
    return [
        f"{SD_RUN}/model",
        f"{SD_RUN}/train_report.json",
        f"{SD_RUN}/loss.png",
        f"{SD_RUN}/validation.png",
        f"{SAMPLES}/manifest.parquet",
    ]
