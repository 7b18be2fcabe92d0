# Diffusion stage: cached latents -> fine-tuning (full UNet or LoRA, accelerate) -> sampling plan -> sharded,
# seeded sampling -> labelled synthetic dataset, per generator (workflow/diffusion/generators.py).
# Functions: workflow/diffusion/stage.py (one per rule); settings: workflow/diffusion/settings.py.
from workflow.diffusion.generators import (
    generator_names,
    model_dir,
    samples_dir,
    samples_manifest,
)
from workflow.diffusion.settings import CacheSettings, SampleSettings, TrainSettings

DIFFUSION = config["diffusion"]
GENERATORS = generator_names(config)
SAMPLE_SHARDS = range(DIFFUSION["sample"]["shards"])
MODEL = model_dir("{generator}")
SAMPLES = samples_dir("{generator}")


wildcard_constraints:
    generator="|".join(GENERATORS),


DIFFUSION_OUTPUTS = [
    *expand(
        f"{MODEL}/{{name}}",
        generator=GENERATORS,
        name=["model", "train_report.json", "loss.png", "validation.png"],
    ),
    *expand(samples_manifest("{generator}"), generator=GENERATORS),
]


rule cache_latents:
    input:
        dataset=DATASET,
        prompts=rules.build_prompts.output.train,
        base=tiny_model_inputs(config, "sd"),
    output:
        "results/models/cache/train.safetensors",
    log:
        "logs/diffusion/cache_latents.log",
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
        cache=rules.cache_latents.output[0],
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
    conda:
        "../envs/synthmed.yaml"
    resources:
        gpu=DIFFUSION["train"]["gpus"],
    params:
        base=lambda wildcards, input: input.base or DIFFUSION["base_model"],
        settings=TrainSettings.of(config).to_json(),
        processes=lambda wildcards, resources: max(resources.gpu, 1),
        mixed_precision=DIFFUSION["train"]["mixed_precision"],
        checkpoints=f"{MODEL}/checkpoints",
        validation=f"{MODEL}/grids",
    # trap: the shell and accelerate wait while training saves a checkpoint on SIGTERM (Slurm's time limit)
    shell:
        "trap '' TERM; accelerate launch --num_processes {params.processes} --num_machines 1"
        " --mixed_precision {params.mixed_precision} --dynamo_backend no"
        " -m scripts.diffusion finetune_sd --cache {input.cache} --base-model {params.base:q}"
        " --settings {params.settings:q} --gpus {resources.gpu} --model {output.model}"
        " --report {output.report} --loss {output.loss} --grid {output.grid}"
        " --checkpoints {params.checkpoints} --validation {params.validation} 2> {log}"


rule plan_samples:
    input:
        prompts=rules.build_prompts.output.train,
        dataset=DATASET,
    output:
        f"{SAMPLES}/plan.parquet",
    log:
        "logs/diffusion/plan_samples/{generator}.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=SampleSettings.of(config).to_json(),
    shell:
        "python -m scripts.diffusion plan_samples --prompts {input.prompts} --dataset {input.dataset}"
        " --settings {params.settings:q} --plan {output} 2> {log}"


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
        shard=r"\d+",
    conda:
        "../envs/synthmed.yaml"
    resources:
        gpu=DIFFUSION["sample"]["gpus"],
    params:
        settings=SampleSettings.of(config).to_json(),
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
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.diffusion collect_samples --samples {output} {input} 2> {log}"
