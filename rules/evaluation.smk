# Evaluation stage, image quality: FID, KID and precision/recall of the synthetic set against a real split,
# overall, per finding, per prompt and (volumes) per slice position.
# Functions: workflow/image_metrics.py (file to file), workflow/image_features.py,
# workflow/feature_extractors.py.


include: "evaluation_functions.smk"


rule build_tiny_extractor:
    output:
        directory(TINY_EXTRACTOR),
    log:
        "logs/evaluation/build_tiny_extractor.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        seed=EVALUATION["tiny_seed"],
    shell:
        "python -m scripts.evaluation build-tiny-extractor --seed {params.seed} --out {output} 2> {log}"


rule image_metrics:
    input:
        dataset=rules.finalize_dataset.output.dataset,
        samples=rules.collect_samples.output[0],
        prompts=f"{PROMPTS}/{EVALUATION['reference_split']}.parquet",
        extractor=extractor_files(),
    output:
        json="results/fid.json",
        table="results/fid_per_class.csv",
    log:
        "logs/evaluation/image_metrics.log",
    conda:
        "../envs/synthmed.yaml"
    resources:
        gpu=EVALUATION["gpus"],
    params:
        settings=without_gpus(EVALUATION),
        extractor=extractor_option,
    shell:
        "python -m scripts.evaluation image-metrics --dataset {input.dataset} --samples {input.samples}"
        " --prompts {input.prompts} --settings {params.settings:q} {params.extractor}"
        " --json {output.json} --table {output.table} 2> {log}"
