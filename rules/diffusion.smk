# Diffusion stage: cached latents -> fine-tuning (full UNet or LoRA, accelerate) -> sampling plan -> sharded,
# seeded sampling -> labelled synthetic dataset, per generator (workflow/diffusion/generators.py); with
# base_model tiny, the tiny SD's VAE is first trained on the training images (train_tiny_vae). Generators of
# kind mask-guided (segmentation-guided diffusion) are trained on the real masks and sampled once per mask
# instead (train_mask_guided, sharded sample_mask_guided, collect_mask_guided), into the same folders; one
# with model_from samples that generator's model (from edited masks: remove_classes) and trains none. Kind
# mask-text (DGM-VLC: masks and captions of its prompt variant; 2D images, or with spatial_dims 3 volumes and
# label volumes, one NIfTI per volume and its slices as the samples) has train_mask_text and sharded
# sample_mask_text, collected by collect_mask_guided too, and with diffusion.mask_text.differences.changes
# difference_maps (DGM-VLC's voxel difference maps of changed clinical fields).
# Functions: workflow/diffusion/stage.py (one per rule; the pixel generators' in pixel_stage.py, the difference
# maps' in differences.py); settings: workflow/diffusion/settings.py.
import re
import shlex

from workflow.diffusion.generators import (
    cache_file,
    differences_dir,
    generators,
    model_dir,
    name_pattern,
    names_of_kind,
    prompt_variants,
    samples_dir,
    samples_manifest,
    trained_mask_guided,
    volume_generators,
    with_differences,
)
from workflow.common.tiny_models import tiny_model_dir, trained_tiny_model_dir
from workflow.diffusion.settings import (
    CacheSettings,
    MaskGuidedSampleSettings,
    MaskGuidedTrainSettings,
    MaskTextDifferenceSettings,
    MaskTextSampleSettings,
    MaskTextTrainSettings,
    SampleSettings,
    TinyVaeSettings,
    TrainSettings,
)
from workflow.prompts.settings import CaptionSettings
from workflow.prompts.variants import prompts_table

DIFFUSION = config["diffusion"]
STUDY_GENERATORS = generators(config)
GENERATORS = list(STUDY_GENERATORS)
SD_GENERATORS = names_of_kind(config, "sd")
MASK_GUIDED = names_of_kind(config, "mask-guided")
MASK_TRAINED = trained_mask_guided(config)  # the others sample a model_from's model
MASK_SAMPLE_SETTINGS = {
    name: MaskGuidedSampleSettings.of(config, name).to_json() for name in MASK_GUIDED
}
MASK_TEXT = names_of_kind(config, "mask-text")
DIFFERENCES = with_differences(config)  # mask-text generators with difference maps
# its captions' phrases hold {value}: a params function, so Snakemake does not take it for a wildcard
DIFFERENCE_SETTINGS = MaskTextDifferenceSettings.of(config).to_json()
# shard jobs per generator whose shards collect_mask_guided merges (mask-guided and mask-text)
MASK_SHARDS = {
    name: DIFFUSION["mask_guided"]["sample"]["shards"] for name in MASK_GUIDED
} | {name: DIFFUSION["mask_text"]["sample"]["shards"] for name in MASK_TEXT}
STRATEGIES = config["prompts"]["strategies"]
# made now: a rule file included later may bind the same class names (the classifier's TrainSettings)
TRAIN_SETTINGS = {
    name: TrainSettings.of(config, generator.method).to_json()
    for name, generator in STUDY_GENERATORS.items()
}
# the demographic design captions its draws with prompts.demographics (no other design reads it)
CAPTIONS = (
    "--captions "
    + shlex.quote(
        CaptionSettings.from_dict(config["prompts"]["demographics"]).to_json()
    )
    if DIFFUSION["sample"]["design"]["kind"] == "demographic"
    else ""
)
SAMPLE_SETTINGS = {
    name: SampleSettings.of(config, generator.images_per_prompt).to_json()
    for name, generator in STUDY_GENERATORS.items()
}
SAMPLE_SHARDS = range(DIFFUSION["sample"]["shards"])
MODEL = model_dir("{generator}")
SAMPLES = samples_dir("{generator}")


wildcard_constraints:
    generator="|".join(map(re.escape, GENERATORS)),
    variant=name_pattern(prompt_variants(config)),


DIFFUSION_OUTPUTS = [
    *expand(
        f"{MODEL}/{{name}}",
        generator=SD_GENERATORS,
        name=["model", "train_report.json", "loss.png", "validation.png"],
    ),
    *expand(
        f"{MODEL}/{{name}}",
        generator=MASK_TRAINED + MASK_TEXT,
        name=["model", "train_report.json", "loss.png"],
    ),
    *expand(samples_manifest("{generator}"), generator=GENERATORS),
    *expand(differences_dir("{generator}"), generator=DIFFERENCES),
]


# Only with base_model tiny: the stages then take this folder as the base model (tiny_model_inputs).
rule train_tiny_vae:
    input:
        dataset=DATASET,
        base=tiny_model_dir("sd"),
    output:
        directory(trained_tiny_model_dir("sd")),
    log:
        "logs/diffusion/train_tiny_vae.log",
    conda:
        "../envs/synthmed.yaml"
    threads: 8  # Snakemake sets OMP_NUM_THREADS (torch's CPU threads) to the threads granted (<= --cores)
    resources:
        gpu=DIFFUSION["tiny_vae"]["gpus"],
    params:
        settings=TinyVaeSettings.of(config).to_json(),
    shell:
        "python -m scripts.diffusion train_tiny_vae --dataset {input.dataset} --base-model {input.base}"
        " --settings {params.settings:q} --gpus {resources.gpu} --model {output} 2> {log}"


rule cache_latents:
    input:
        dataset=DATASET,
        prompts=lambda wildcards: prompts_table(wildcards.variant, STRATEGIES, "train"),
        base=tiny_model_inputs(config, "sd"),
    output:
        cache_file("{variant}"),
    log:
        "logs/diffusion/cache_latents/{variant}.log",
    conda:
        "../envs/synthmed.yaml"
    resources:
        gpu=DIFFUSION["cache"]["gpus"],
    params:
        base=lambda wildcards, input: input.base or DIFFUSION["base_model"],
        settings=CacheSettings.of(config).to_json(),
    shell:
        "python -m scripts.diffusion cache_latents --dataset {input.dataset} --prompts {input.prompts}"
        " --base-model {params.base:q} --settings {params.settings:q} --gpus {resources.gpu}"
        " --cache {output} 2> {log}"


rule finetune_sd:
    input:
        cache=lambda wildcards: cache_file(
            STUDY_GENERATORS[wildcards.generator].variant
        ),
        base=tiny_model_inputs(config, "sd"),
    output:
        model=directory(f"{MODEL}/model"),
        report=f"{MODEL}/train_report.json",
        loss=report(
            f"{MODEL}/loss.png",
            caption="../resources/report/loss.rst",
            category="3. Diffusion",
            subcategory="{generator}",
        ),
        grid=report(
            f"{MODEL}/validation.png",
            caption="../resources/report/validation.rst",
            category="3. Diffusion",
            subcategory="{generator}",
        ),
    log:
        "logs/diffusion/finetune_sd/{generator}.log",
    wildcard_constraints:
        generator=name_pattern(SD_GENERATORS),
    conda:
        "../envs/synthmed.yaml"
    threads: 8  # as train_tiny_vae: without it, CPU training ran on one thread
    resources:
        gpu=DIFFUSION["train"]["gpus"],
    params:
        base=lambda wildcards, input: input.base or DIFFUSION["base_model"],
        settings=lambda wildcards: TRAIN_SETTINGS[wildcards.generator],
        processes=lambda wildcards, resources: max(resources.gpu, 1),
        checkpoints=f"{MODEL}/checkpoints",
        validation=f"{MODEL}/grids",
        logs=f"{MODEL}/logs",
    # trap: the shell and accelerate wait while training saves a checkpoint on SIGTERM (Slurm's time limit);
    # the library resolves diffusion.train.mixed_precision (auto: bf16 where the GPU has it) and hands it to
    # accelerate's Accelerator, whose argument overrides the launcher's --mixed_precision
    shell:
        "trap '' TERM; accelerate launch --num_processes {params.processes} --num_machines 1"
        " --mixed_precision no --dynamo_backend no"
        " -m scripts.diffusion finetune_sd --cache {input.cache} --base-model {params.base:q}"
        " --settings {params.settings:q} --gpus {resources.gpu} --model {output.model}"
        " --report {output.report} --loss {output.loss} --grid {output.grid}"
        " --checkpoints {params.checkpoints} --validation {params.validation}"
        " --logs {params.logs} 2> {log}"


rule plan_samples:
    input:
        prompts=lambda wildcards: prompts_table(
            STUDY_GENERATORS[wildcards.generator].variant, STRATEGIES, "train"
        ),
        dataset=DATASET,
    output:
        f"{SAMPLES}/plan.parquet",
    log:
        "logs/diffusion/plan_samples/{generator}.log",
    wildcard_constraints:
        generator=name_pattern(SD_GENERATORS),
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=lambda wildcards: SAMPLE_SETTINGS[wildcards.generator],
        captions=lambda wildcards: CAPTIONS,  # a function: the template's {fields} are not wildcards
    shell:
        "python -m scripts.diffusion plan_samples --prompts {input.prompts} --dataset {input.dataset}"
        " --settings {params.settings:q} {params.captions} --plan {output} 2> {log}"


rule sample_images:
    input:
        plan=rules.plan_samples.output[0],
        model=rules.finetune_sd.output.model,
        base=tiny_model_inputs(config, "sd"),
    output:
        table=f"{SAMPLES}/shards/{{shard}}.parquet",
        images=directory(f"{SAMPLES}/images/shard{{shard}}"),
    log:
        "logs/diffusion/sample_images/{generator}/{shard}.log",
    wildcard_constraints:
        generator=name_pattern(SD_GENERATORS),
        shard=r"\d+",
    conda:
        "../envs/synthmed.yaml"
    threads: 8  # as train_tiny_vae
    resources:
        gpu=DIFFUSION["sample"]["gpus"],
    params:
        settings=lambda wildcards: SAMPLE_SETTINGS[wildcards.generator],
    shell:
        "python -m scripts.diffusion sample_images --plan {input.plan} --model {input.model}"
        " --settings {params.settings:q} --shard {wildcards.shard} --gpus {resources.gpu}"
        " --images {output.images} --table {output.table} 2> {log}"


rule collect_samples:
    input:
        expand(
            rules.sample_images.output.table,
            shard=SAMPLE_SHARDS,
            allow_missing=True,
        ),
    output:
        samples_manifest("{generator}"),
    log:
        "logs/diffusion/collect_samples/{generator}.log",
    wildcard_constraints:
        generator=name_pattern(SD_GENERATORS),
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.diffusion collect_samples --samples {output} {input} 2> {log}"


rule train_mask_guided:
    input:
        dataset=DATASET,
    output:
        model=directory(f"{MODEL}/model"),
        report=f"{MODEL}/train_report.json",
        loss=report(
            f"{MODEL}/loss.png",
            caption="../resources/report/loss.rst",
            category="3. Diffusion",
            subcategory="{generator}",
        ),
    log:
        "logs/diffusion/train_mask_guided/{generator}.log",
    wildcard_constraints:
        generator=name_pattern(MASK_TRAINED),
    conda:
        "../envs/synthmed.yaml"
    threads: 8  # as train_tiny_vae
    resources:
        gpu=DIFFUSION["mask_guided"]["train"]["gpus"],
    params:
        settings=MaskGuidedTrainSettings.of(config).to_json(),
        checkpoints=f"{MODEL}/checkpoints",
    # trap: the shell waits while training saves a checkpoint on SIGTERM (Slurm's time limit)
    shell:
        "trap '' TERM; python -m scripts.diffusion train_mask_guided --dataset {input.dataset}"
        " --settings {params.settings:q} --gpus {resources.gpu} --model {output.model}"
        " --report {output.report} --loss {output.loss} --checkpoints {params.checkpoints} 2> {log}"


rule sample_mask_guided:
    input:
        dataset=DATASET,
        model=lambda wildcards: (
            f"{model_dir(STUDY_GENERATORS[wildcards.generator].trained_as)}/model"
        ),
    output:
        table=f"{SAMPLES}/shards/{{shard}}.parquet",
        images=directory(f"{SAMPLES}/images/masks{{shard}}"),
    log:
        "logs/diffusion/sample_mask_guided/{generator}/{shard}.log",
    wildcard_constraints:
        generator=name_pattern(MASK_GUIDED),
        shard=r"\d+",
    conda:
        "../envs/synthmed.yaml"
    threads: 8  # as train_tiny_vae
    resources:
        gpu=DIFFUSION["mask_guided"]["sample"]["gpus"],
    params:
        settings=lambda wildcards: MASK_SAMPLE_SETTINGS[wildcards.generator],
    shell:
        "python -m scripts.diffusion sample_mask_guided --dataset {input.dataset} --model {input.model}"
        " --settings {params.settings:q} --gpus {resources.gpu} --shard {wildcards.shard}"
        " --images {output.images} --table {output.table} 2> {log}"


rule train_mask_text:
    input:
        dataset=DATASET,
        prompts=lambda wildcards: prompts_table(
            STUDY_GENERATORS[wildcards.generator].variant, STRATEGIES, "train"
        ),
    output:
        model=directory(f"{MODEL}/model"),
        report=f"{MODEL}/train_report.json",
        loss=report(
            f"{MODEL}/loss.png",
            caption="../resources/report/loss.rst",
            category="3. Diffusion",
            subcategory="{generator}",
        ),
    log:
        "logs/diffusion/train_mask_text/{generator}.log",
    wildcard_constraints:
        generator=name_pattern(MASK_TEXT),
    conda:
        "../envs/synthmed.yaml"
    threads: 8  # as train_tiny_vae
    resources:
        gpu=DIFFUSION["mask_text"]["train"]["gpus"],
    params:
        settings=MaskTextTrainSettings.of(config).to_json(),
        checkpoints=f"{MODEL}/checkpoints",
    # trap: the shell waits while training saves a checkpoint on SIGTERM (Slurm's time limit)
    shell:
        "trap '' TERM; python -m scripts.diffusion train_mask_text --dataset {input.dataset}"
        " --prompts {input.prompts} --settings {params.settings:q} --gpus {resources.gpu}"
        " --model {output.model} --report {output.report} --loss {output.loss}"
        " --checkpoints {params.checkpoints} 2> {log}"


rule sample_mask_text:
    input:
        dataset=DATASET,
        prompts=lambda wildcards: prompts_table(
            STUDY_GENERATORS[wildcards.generator].variant,
            STRATEGIES,
            DIFFUSION["mask_text"]["sample"]["split"],
        ),
        model=f"{MODEL}/model",
    output:
        table=f"{SAMPLES}/shards/{{shard}}.parquet",
        images=directory(f"{SAMPLES}/images/masks{{shard}}"),
    log:
        "logs/diffusion/sample_mask_text/{generator}/{shard}.log",
    wildcard_constraints:
        generator=name_pattern(MASK_TEXT),
        shard=r"\d+",
    conda:
        "../envs/synthmed.yaml"
    threads: 8  # as train_tiny_vae
    resources:
        gpu=DIFFUSION["mask_text"]["sample"]["gpus"],
    params:
        settings=MaskTextSampleSettings.of(config).to_json(),
    shell:
        "python -m scripts.diffusion sample_mask_text --dataset {input.dataset} --prompts {input.prompts}"
        " --model {input.model} --settings {params.settings:q} --gpus {resources.gpu}"
        " --shard {wildcards.shard} --images {output.images} --table {output.table} 2> {log}"


rule difference_maps:
    input:
        dataset=DATASET,
        prompts=lambda wildcards: prompts_table(
            STUDY_GENERATORS[wildcards.generator].variant,
            STRATEGIES,
            DIFFUSION["mask_text"]["differences"]["split"],
        ),
        model=f"{MODEL}/model",
    output:
        report(
            directory(differences_dir("{generator}")),
            patterns=["{name}.png"],
            caption="../resources/report/differences.rst",
            category="3. Diffusion",
            subcategory="{generator}",
        ),
    log:
        "logs/diffusion/difference_maps/{generator}.log",
    wildcard_constraints:
        generator=name_pattern(DIFFERENCES),
    conda:
        "../envs/synthmed.yaml"
    threads: 8  # as train_tiny_vae
    resources:
        gpu=DIFFUSION["mask_text"]["differences"]["gpus"],
    params:
        settings=lambda wildcards: DIFFERENCE_SETTINGS,
    shell:
        "python -m scripts.diffusion difference_maps --dataset {input.dataset} --prompts {input.prompts}"
        " --model {input.model} --settings {params.settings:q} --gpus {resources.gpu}"
        " --maps {output} 2> {log}"


rule collect_mask_guided:
    input:
        lambda wildcards: expand(
            rules.sample_mask_guided.output.table,
            shard=range(MASK_SHARDS[wildcards.generator]),
            generator=wildcards.generator,
        ),
    output:
        samples_manifest("{generator}"),
    log:
        "logs/diffusion/collect_mask_guided/{generator}.log",
    wildcard_constraints:
        generator=name_pattern(MASK_GUIDED + MASK_TEXT),
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.diffusion collect_mask_guided --samples {output} {input} 2> {log}"
