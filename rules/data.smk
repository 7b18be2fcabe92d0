# Data stage: demo phantoms -> manifest -> patient-level split -> sharded preprocessing -> dataset.
# Functions: workflow/data/stage.py (one per rule); settings: workflow/data/settings.py.
from pathlib import Path

from workflow.data.adapters import table_files
from workflow.data.phantoms import PhantomSettings
from workflow.data.settings import (
    DatasetSettings,
    PreprocessSettings,
    RejectionSettings,
    SplitSettings,
)

DATA = "results/data"
PHANTOM_DIR = f"{config['phantom']['out_dir']}/CheXpert-v1.0-phantom"
DATA_SHARDS = range(config["preprocess"]["shards"])
ADAPTER = config["dataset"]["adapter"]
DATA_OUTPUTS = [DATASET, f"{DATA}/data_report.json"]


rule make_phantoms:
    output:
        csv=f"{PHANTOM_DIR}/train.csv",
        summary=f"{PHANTOM_DIR}/phantom.json",
        counterfactuals=f"{PHANTOM_DIR}/counterfactuals.csv",  # the true counterfactuals (editing)
    log:
        "logs/data/make_phantoms.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=PhantomSettings.of(config).to_json(),
        out=lambda wildcards, output: Path(output.csv).parents[1],
    shell:
        "python -m scripts.data make_phantoms --settings {params.settings:q} --out {params.out} 2> {log}"


rule make_phantom_volumes:
    output:
        table=f"{config['phantom']['out_dir']}/CT-phantom/volumes.csv",  # dataset.volumes.table
        counterfactuals=f"{config['phantom']['out_dir']}/CT-phantom/counterfactuals.csv",
    log:
        "logs/data/make_phantom_volumes.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=PhantomSettings.of(config).to_json(),
        out=lambda wildcards, output: Path(output.table).parents[1],
    shell:
        "python -m scripts.data make_phantom_volumes --settings {params.settings:q} --out {params.out} 2> {log}"


rule build_manifest:
    input:
        table_files(ADAPTER, config["dataset"][ADAPTER]),
    output:
        manifest=f"{DATA}/manifest.parquet",
        rejected=f"{DATA}/rejected_adapter.parquet",
    log:
        "logs/data/build_manifest.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        dataset=DatasetSettings.of(config).to_json(),
    shell:
        "python -m scripts.data build_manifest --dataset {params.dataset:q}"
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
        settings=SplitSettings.of(config).to_json(),
        checks=RejectionSettings.of(config).to_json(),
    shell:
        "python -m scripts.data split_dataset --manifest {input.manifest} --rejected {input.rejected}"
        " --settings {params.settings:q} --checks {params.checks:q} --split {output.split}"
        " --report {output.report} 2> {log}"


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
        settings=PreprocessSettings.of(config).to_json(),
    shell:
        "python -m scripts.data preprocess_shard --split {input.split} --settings {params.settings:q}"
        " --shard {wildcards.shard} --images {output.images} --table {output.table}"
        " --rejected {output.rejected} 2> {log}"


rule merge_rejections:
    input:
        adapter=rules.build_manifest.output.rejected,
        shards=expand(rules.preprocess_shard.output.rejected, shard=DATA_SHARDS),
    output:
        f"{DATA}/rejected.parquet",
    log:
        "logs/data/merge_rejections.log",
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.data merge_rejections --rejected {output} {input.adapter} {input.shards}"
        " 2> {log}"


rule finalize_dataset:
    input:
        shards=expand(rules.preprocess_shard.output.table, shard=DATA_SHARDS),
        rejected=rules.merge_rejections.output[0],
    output:
        dataset=DATASET,
        report=f"{DATA}/data_report.json",
    log:
        "logs/data/finalize_dataset.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        checks=RejectionSettings.of(config).to_json(),
    shell:
        "python -m scripts.data finalize_dataset --rejected {input.rejected} --checks {params.checks:q}"
        " --dataset {output.dataset} --report {output.report} {input.shards} 2> {log}"
