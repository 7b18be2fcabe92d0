# Data stage: demo phantoms -> manifest -> patient-level split -> sharded preprocessing -> dataset.
# Functions: workflow/phantoms.py, workflow/adapters/, workflow/split.py, workflow/preprocess.py,
# workflow/dataset.py.

PHANTOM_DIR = f"{config['phantom']['out_dir']}/CheXpert-v1.0-phantom"


rule make_phantoms:
    output:
        csv=f"{PHANTOM_DIR}/train.csv",
        summary=f"{PHANTOM_DIR}/phantom.json",
    log:
        "logs/data/make_phantoms.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=as_json(config["phantom"]["settings"]),
        out_dir=lambda wildcards, output: Path(output.csv).parents[1],
    shell:
        "python -m scripts.make_phantoms --settings {params.settings:q} --out {params.out_dir} 2> {log}"


rule build_manifest:
    input:
        adapter_tables(),
    output:
        manifest=f"{DATA}/manifest.parquet",
        rejected=f"{DATA}/rejected_adapter.parquet",
    log:
        "logs/data/build_manifest.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        dataset=as_json(config["dataset"]),
    shell:
        "python -m scripts.data build --dataset {params.dataset:q}"
        " --manifest {output.manifest} --rejected {output.rejected} 2> {log}"


rule split_dataset:
    input:
        manifest=rules.build_manifest.output.manifest,
        rejected=rules.build_manifest.output.rejected,
    output:
        split=f"{DATA}/split.parquet",
        report=f"{DATA}/split_report.json",
    log:
        "logs/data/split_dataset.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        split=as_json(config["split"]),
        labels=as_json(config["dataset"]["labels"]),
        max_rejected=config["dataset"]["max_rejected_fraction"],
    shell:
        "python -m scripts.data split --manifest {input.manifest} --rejected {input.rejected}"
        " --settings {params.split:q} --labels {params.labels:q} --max-rejected {params.max_rejected}"
        " --out {output.split} --report {output.report} 2> {log}"


rule preprocess_shard:
    input:
        split=rules.split_dataset.output.split,
    output:
        table=f"{DATA}/shards/{{shard}}.parquet",
        rejected=f"{DATA}/shards/{{shard}}.rejected.parquet",
        images=directory(f"{DATA}/images/shard{{shard}}"),
    log:
        "logs/data/preprocess_shard/{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=preprocess_settings(),
    shell:
        "python -m scripts.data preprocess --split {input.split} --settings {params.settings:q}"
        " --shard {wildcards.shard} --images {output.images} --out {output.table}"
        " --rejected {output.rejected} 2> {log}"


rule merge_rejections:
    input:
        adapter=rules.build_manifest.output.rejected,
        shards=expand(f"{DATA}/shards/{{shard}}.rejected.parquet", shard=SHARDS),
    output:
        f"{DATA}/rejected.parquet",
    log:
        "logs/data/merge_rejections.log",
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.data merge-rejections --out {output} {input.adapter} {input.shards} 2> {log}"


rule finalize_dataset:
    input:
        shards=expand(f"{DATA}/shards/{{shard}}.parquet", shard=SHARDS),
        rejected=rules.merge_rejections.output[0],
    output:
        dataset=f"{DATA}/dataset.parquet",
        report=f"{DATA}/data_report.json",
    log:
        "logs/data/finalize_dataset.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        labels=as_json(config["dataset"]["labels"]),
        max_rejected=config["dataset"]["max_rejected_fraction"],
    shell:
        "python -m scripts.data finalize --rejected {input.rejected} --labels {params.labels:q}"
        " --max-rejected {params.max_rejected} --out {output.dataset} --report {output.report}"
        " {input.shards} 2> {log}"
