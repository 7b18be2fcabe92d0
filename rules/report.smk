# Study report: what `snakemake --report results/report.html` shows beyond the outputs the stages mark with
# report() themselves (captions in resources/report/): HTML tables and real vs synthetic grids.
# Functions: workflow/study_report.py.


include: "report_functions.smk"


rule report_tables:
    input:
        split=rules.split_dataset.output.report,
        fid=rules.image_metrics.output.json,
        fid_table=rules.image_metrics.output.table,
        comparison=rules.compare_classifiers.output.csv,
    output:
        split=report(
            f"{REPORT}/split_summary.html",
            caption="../resources/report/split.rst",
            category="1. Data",
        ),
        image_quality=report(
            f"{REPORT}/image_quality.html",
            caption="../resources/report/image_quality.rst",
            category="4. Image quality",
        ),
        regimes=report(
            f"{REPORT}/classifier_regimes.html",
            caption="../resources/report/regimes.rst",
            category="5. Classifiers",
            subcategory="All regimes",
        ),
    log:
        "logs/report/report_tables.log",
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.report tables --split-report {input.split} --fid {input.fid}"
        " --fid-table {input.fid_table} --comparison {input.comparison} --split-out {output.split}"
        " --image-quality-out {output.image_quality} --regimes-out {output.regimes} 2> {log}"


rule real_vs_synthetic:
    input:
        dataset=rules.finalize_dataset.output.dataset,
        samples=rules.collect_samples.output[0],
    output:
        report(
            directory(f"{REPORT}/real_vs_synthetic"),
            patterns=["{name}.png"],
            caption="../resources/report/real_vs_synthetic.rst",
            category="3. Diffusion",
            subcategory="Real vs synthetic",
        ),
    log:
        "logs/report/real_vs_synthetic.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        labels=as_json(config["dataset"]["labels"]),
        per_row=config["report"]["images_per_row"],
        seed=config["report"]["seed"],
    shell:
        "python -m scripts.report real-vs-synthetic --dataset {input.dataset} --samples {input.samples}"
        " --labels {params.labels:q} --per-row {params.per_row} --seed {params.seed} --out {output}"
        " 2> {log}"
