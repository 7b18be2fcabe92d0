# Prompts stage: dataset -> (DINO embeddings -> morphology clusters, for the mep strategy) -> one prompts
# table per split -> diffusers image folder of the training set.
# Functions: workflow/prompts/stage.py (one per rule); settings: workflow/prompts/settings.py.
from workflow.prompts.settings import ClusterSettings, EmbedSettings, PromptSettings
from workflow.prompts.variants import PROMPTS, SPLITS, variant_strategies

MEP = config["prompts"]["mep"]
USES_MEP = "mep" in config["prompts"]["strategies"]
CLUSTERS = f"{PROMPTS}/clusters.parquet"
PROMPT_OUTPUTS = [
    *expand(f"{PROMPTS}/{{split}}.parquet", split=SPLITS),
    f"{PROMPTS}/prompt_report.json",
    f"{PROMPTS}/train_imagefolder",
    *([f"{PROMPTS}/cluster_report.json", f"{PROMPTS}/montages"] if USES_MEP else []),
]


rule embed_images:
    input:
        dataset=DATASET,
        model=tiny_model_inputs(config, "vit"),
    output:
        f"{PROMPTS}/embeddings/{{shard}}.parquet",
    log:
        "logs/prompts/embed_images/{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/synthmed.yaml"
    threads: 8
    resources:
        gpu=MEP["gpus"],
    params:
        model=lambda wildcards, input: input.model or MEP["model"],  # the tiny stand-in, or hub id
        settings=EmbedSettings.of(config).to_json(),
    shell:
        "python -m scripts.prompts embed_images --dataset {input.dataset} --model {params.model:q}"
        " --settings {params.settings:q} --shard {wildcards.shard} --gpus {resources.gpu}"
        " --threads {threads}"
        " --embeddings {output} 2> {log}"


rule merge_embeddings:
    input:
        expand(rules.embed_images.output[0], shard=range(MEP["shards"])),
    output:
        f"{PROMPTS}/embeddings.parquet",
    log:
        "logs/prompts/merge_embeddings.log",
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.prompts merge_embeddings --embeddings {output} {input} 2> {log}"


rule cluster_embeddings:
    input:
        embeddings=rules.merge_embeddings.output[0],
        dataset=DATASET,
    output:
        clusters=CLUSTERS,
        report=f"{PROMPTS}/cluster_report.json",
        montages=report(
            directory(f"{PROMPTS}/montages"),
            patterns=["{name}.png"],
            caption="../resources/report/montages.rst",
            category="2. Prompts",
            subcategory="Morphology clusters",
        ),
    log:
        "logs/prompts/cluster_embeddings.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=ClusterSettings.of(config).to_json(),
        labels=LABELS,
    shell:
        "python -m scripts.prompts cluster_embeddings --embeddings {input.embeddings}"
        " --dataset {input.dataset} --settings {params.settings:q} --labels {params.labels:q}"
        " --clusters {output.clusters} --report {output.report} --montages {output.montages} 2> {log}"


rule build_prompts:
    input:
        dataset=DATASET,
        clusters=CLUSTERS if USES_MEP else [],
    output:
        train=f"{PROMPTS}/train.parquet",
        val=f"{PROMPTS}/val.parquet",
        test=f"{PROMPTS}/test.parquet",
        report=f"{PROMPTS}/prompt_report.json",
    log:
        "logs/prompts/build_prompts.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        # a function, so the templates' {fields} are not taken for wildcards
        settings=lambda wildcards: PromptSettings.of(config).to_json(),
        labels=LABELS,
        clusters=f"--clusters {CLUSTERS}" if USES_MEP else "",
    shell:
        "python -m scripts.prompts build_prompts --dataset {input.dataset} {params.clusters}"
        " --settings {params.settings:q} --labels {params.labels:q} --train {output.train}"
        " --val {output.val} --test {output.test} --report {output.report} 2> {log}"


rule build_prompt_variant:
    input:
        prompts=expand(f"{PROMPTS}/{{split}}.parquet", split=SPLITS),
        dataset=DATASET,
    output:
        train=f"{PROMPTS}/variants/{{variant}}/train.parquet",
        val=f"{PROMPTS}/variants/{{variant}}/val.parquet",
        test=f"{PROMPTS}/variants/{{variant}}/test.parquet",
        report=f"{PROMPTS}/variants/{{variant}}/prompt_report.json",
    log:
        "logs/prompts/build_prompt_variant/{variant}.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=lambda wildcards: PromptSettings.of(
            config, variant_strategies(wildcards.variant)
        ).to_json(),
        labels=LABELS,
    shell:
        "python -m scripts.prompts build_prompt_variant --prompts {input.prompts}"
        " --dataset {input.dataset} --settings {params.settings:q} --labels {params.labels:q}"
        " --train {output.train} --val {output.val} --test {output.test} --report {output.report}"
        " 2> {log}"


rule export_imagefolder:
    input:
        prompts=rules.build_prompts.output.train,
        dataset=DATASET,
    output:
        directory(f"{PROMPTS}/train_imagefolder"),
    log:
        "logs/prompts/export_imagefolder.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        labels=LABELS,
    shell:
        "python -m scripts.prompts export_imagefolder --prompts {input.prompts} --dataset {input.dataset}"
        " --labels {params.labels:q} --folder {output} 2> {log}"
