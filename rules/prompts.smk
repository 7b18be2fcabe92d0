# Prompts stage: dataset -> (DINO embeddings -> morphology clusters, for the mep strategy) -> one prompts
# table per split -> diffusers image folder of the training set.
# Functions: workflow/prompt_stage.py (file to file), workflow/prompts.py, workflow/embeddings.py,
# workflow/outliers.py, workflow/clustering.py, workflow/balancing.py.


include: "prompts_functions.smk"


rule build_tiny_vit:
    output:
        directory(TINY_VIT),
    log:
        "logs/prompts/build_tiny_vit.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        seed=config["prompts"]["seed"],
    shell:
        "python -m scripts.prompts tiny-model --seed {params.seed} --out {output} 2> {log}"


rule embed_images:
    input:
        dataset=rules.finalize_dataset.output.dataset,
        model=mep_model_files(),
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
        model=mep_model,
        settings=embed_settings(),
    shell:
        "python -m scripts.prompts embed --dataset {input.dataset} --model {params.model:q}"
        " --settings {params.settings:q} --shard {wildcards.shard} --threads {threads} --out {output}"
        " 2> {log}"


rule merge_embeddings:
    input:
        expand(f"{PROMPTS}/embeddings/{{shard}}.parquet", shard=range(MEP["shards"])),
    output:
        f"{PROMPTS}/embeddings.parquet",
    log:
        "logs/prompts/merge_embeddings.log",
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.prompts merge-embeddings --out {output} {input} 2> {log}"


rule cluster_embeddings:
    input:
        embeddings=rules.merge_embeddings.output[0],
        dataset=rules.finalize_dataset.output.dataset,
    output:
        clusters=f"{PROMPTS}/clusters.parquet",
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
        settings=cluster_settings(),
        labels=as_json(config["dataset"]["labels"]),
    shell:
        "python -m scripts.prompts cluster --embeddings {input.embeddings} --dataset {input.dataset}"
        " --settings {params.settings:q} --labels {params.labels:q} --out {output.clusters}"
        " --report {output.report} --montages {output.montages} 2> {log}"


rule build_prompts:
    input:
        dataset=rules.finalize_dataset.output.dataset,
        clusters=cluster_tables(),
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
        settings=prompt_settings,
        labels=as_json(config["dataset"]["labels"]),
        clusters=clusters_option,
    shell:
        "python -m scripts.prompts build --dataset {input.dataset} {params.clusters}"
        " --settings {params.settings:q} --labels {params.labels:q} --train {output.train}"
        " --val {output.val} --test {output.test} --report {output.report} 2> {log}"


rule export_imagefolder:
    input:
        prompts=rules.build_prompts.output.train,
        dataset=rules.finalize_dataset.output.dataset,
    output:
        directory(f"{PROMPTS}/train_imagefolder"),
    log:
        "logs/prompts/export_imagefolder.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        labels=as_json(config["dataset"]["labels"]),
    shell:
        "python -m scripts.prompts export --prompts {input.prompts} --dataset {input.dataset}"
        " --labels {params.labels:q} --out {output} 2> {log}"
