# Evaluation stage, image quality: FID, KID and precision/recall of every generator's synthetic set against
# a real split, overall, per finding, per prompt and (volumes) per slice position, in one or more feature
# spaces (evaluation.extractor, evaluation.also); results/fid.json has a section per generator.
# Functions: workflow/evaluation/stage.py (one per rule); settings: workflow/evaluation/settings.py.
from workflow.evaluation.settings import EvaluationSettings, extractor_inputs

EVALUATION = config["evaluation"]
QUALITY = "results/evaluation/{generator}"


EXTRACTORS = extractor_inputs(config)
EVALUATION_OUTPUTS = ["results/fid.json", "results/fid_per_class.csv"]


rule image_metrics:
    input:
        dataset=DATASET,
        samples=samples_manifest("{generator}"),
        prompts=f"{PROMPTS}/{EVALUATION['reference_split']}.parquet",
        extractors=list(EXTRACTORS.values()),
    output:
        report=f"{QUALITY}/image_metrics.json",
        table=f"{QUALITY}/per_group.csv",
    log:
        "logs/evaluation/image_metrics/{generator}.log",
    conda:
        "../envs/synthmed.yaml"
    resources:
        gpu=EVALUATION["gpus"],
    params:
        settings=EvaluationSettings.of(config).to_json(),
        extractors=json.dumps(EXTRACTORS),
    shell:
        "python -m scripts.evaluation image_metrics --dataset {input.dataset} --samples {input.samples}"
        " --prompts {input.prompts} --settings {params.settings:q} --extractors {params.extractors:q}"
        " --report {output.report} --table {output.table} 2> {log}"


rule collect_image_metrics:
    input:
        reports=expand(rules.image_metrics.output.report, generator=GENERATORS),
        tables=expand(rules.image_metrics.output.table, generator=GENERATORS),
    output:
        fid="results/fid.json",
        table="results/fid_per_class.csv",
    log:
        "logs/evaluation/collect_image_metrics.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        generators=GENERATORS,
    shell:
        "python -m scripts.evaluation collect_image_metrics --generators {params.generators:q}"
        " --reports {input.reports} --tables {input.tables} --fid {output.fid}"
        " --fid-table {output.table} 2> {log}"
