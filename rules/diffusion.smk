# Diffusion stage: (tiny demo SD) -> cached latents -> fine-tuning (full UNet or LoRA, accelerate) ->
# sampling plan -> sharded, seeded sampling -> labelled synthetic dataset.
# Functions: workflow/sd_models.py, workflow/latent_cache.py, workflow/finetune.py, workflow/export.py,
# workflow/sampling.py.


include: "diffusion_functions.smk"


rule build_tiny_sd:
    output:
        directory(TINY_SD),
    log:
        "logs/diffusion/build_tiny_sd.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        seed=DIFFUSION["tiny_seed"],
    shell:
        "python -m scripts.diffusion tiny --seed {params.seed} --out {output} 2> {log}"


rule cache_latents:
    input:
        dataset=rules.finalize_dataset.output.dataset,
        prompts=rules.build_prompts.output.train,
        base=tiny_sd_input(),
    output:
        "results/models/cache/train.safetensors",
    log:
        "logs/diffusion/cache_latents.log",
    conda:
        "../envs/synthmed.yaml"
    resources:
        gpu=DIFFUSION["cache"]["gpus"],
    params:
        base=DIFFUSION["base_model"],
        tiny=tiny_option,
        settings=without_gpus(DIFFUSION["cache"], resolution=DIFFUSION["resolution"]),
    shell:
        "python -m scripts.diffusion cache --dataset {input.dataset} --prompts {input.prompts}"
        " --base-model {params.base:q} {params.tiny} --settings {params.settings:q}"
        " --gpus {resources.gpu} --out {output} 2> {log}"


rule finetune_sd:
    input:
        cache=rules.cache_latents.output[0],
        base=tiny_sd_input(),
    output:
        model=directory(f"{SD_RUN}/model"),
        report=f"{SD_RUN}/train_report.json",
        loss=report(
            f"{SD_RUN}/loss.png",
            caption="../resources/report/loss.rst",
            category="3. Diffusion",
            subcategory="Fine-tuning",
        ),
        grid=report(
            f"{SD_RUN}/validation.png",
            caption="../resources/report/validation.rst",
            category="3. Diffusion",
            subcategory="Fine-tuning",
        ),
    log:
        "logs/diffusion/finetune_sd.log",
    conda:
        "../envs/synthmed.yaml"
    resources:
        gpu=DIFFUSION["train"]["gpus"],
    params:
        base=DIFFUSION["base_model"],
        tiny=tiny_option,
        settings=without_gpus(
            DIFFUSION["train"], method=DIFFUSION["method"], lora=DIFFUSION["lora"]
        ),
        processes=launch_processes,
        mixed_precision=DIFFUSION["train"]["mixed_precision"],
        checkpoints=f"{SD_RUN}/checkpoints",
        validation=f"{SD_RUN}/grids",
    shell:
        "accelerate launch --num_processes {params.processes} --num_machines 1"
        " --mixed_precision {params.mixed_precision} --dynamo_backend no"
        " -m scripts.diffusion train --cache {input.cache} --base-model {params.base:q}"
        " {params.tiny} --settings {params.settings:q} --gpus {resources.gpu}"
        " --model {output.model} --report {output.report} --loss {output.loss} --grid {output.grid}"
        " --checkpoints {params.checkpoints} --validation {params.validation} 2> {log}"


rule plan_samples:
    input:
        prompts=rules.build_prompts.output.train,
        dataset=rules.finalize_dataset.output.dataset,
    output:
        f"{SAMPLES}/plan.parquet",
    log:
        "logs/diffusion/plan_samples.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=without_gpus(DIFFUSION["sample"], resolution=DIFFUSION["resolution"]),
    shell:
        "python -m scripts.diffusion plan --prompts {input.prompts} --dataset {input.dataset}"
        " --settings {params.settings:q} --out {output} 2> {log}"


rule sample_images:
    input:
        plan=rules.plan_samples.output[0],
        model=rules.finetune_sd.output.model,
        base=tiny_sd_input(),
    output:
        table=f"{SAMPLES}/shards/{{shard}}.parquet",
        images=directory(f"{SAMPLES}/images/shard{{shard}}"),
    log:
        "logs/diffusion/sample_images/{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/synthmed.yaml"
    resources:
        gpu=DIFFUSION["sample"]["gpus"],
    params:
        settings=without_gpus(DIFFUSION["sample"], resolution=DIFFUSION["resolution"]),
    shell:
        "python -m scripts.diffusion sample --plan {input.plan} --model {input.model}"
        " --settings {params.settings:q} --shard {wildcards.shard} --gpus {resources.gpu}"
        " --images {output.images} --out {output.table} 2> {log}"


rule collect_samples:
    input:
        expand(f"{SAMPLES}/shards/{{shard}}.parquet", shard=SAMPLE_SHARDS),
    output:
        f"{SAMPLES}/manifest.parquet",
    log:
        "logs/diffusion/collect_samples.log",
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.diffusion collect --out {output} {input} 2> {log}"
