# Study report: what `snakemake --report results/report.html` shows beyond the outputs the stages mark with
# report() themselves (captions in resources/report/): HTML tables and, per generator, real vs synthetic
# grids. Functions: workflow/report/stage.py (one per rule); settings: workflow/report/settings.py.
from workflow.report.settings import ReportSettings

REPORT = "results/report"


REPORT_OUTPUTS = [
    *(
        f"{REPORT}/{name}"
        for name in [
            "split_summary.html",
            "image_quality.html",
            "classifier_regimes.html",
        ]
    ),
    *expand(f"{REPORT}/real_vs_synthetic/{{generator}}", generator=GENERATORS),
    *([f"{REPORT}/counterfactuals.html"] if EDIT_METHODS else []),
]


rule report_tables:
    input:
        split=rules.split_dataset.output.report,
        fid=rules.collect_image_metrics.output.fid,
        fid_table=rules.collect_image_metrics.output.table,
        comparison=rules.compare_classifiers.output.table,
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
            subcategory="All runs",
        ),
    log:
        "logs/report/report_tables.log",
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.report report_tables --split-report {input.split} --fid {input.fid}"
        " --fid-table {input.fid_table} --comparison {input.comparison} --split-page {output.split}"
        " --image-quality-page {output.image_quality} --regimes-page {output.regimes} 2> {log}"


rule real_vs_synthetic:
    input:
        dataset=DATASET,
        samples=samples_manifest("{generator}"),
    output:
        report(
            directory(f"{REPORT}/real_vs_synthetic/{{generator}}"),
            patterns=["{name}.png"],
            caption="../resources/report/real_vs_synthetic.rst",
            category="3. Diffusion",
            subcategory="{generator}",
        ),
    log:
        "logs/report/real_vs_synthetic/{generator}.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        labels=LABELS,
        settings=ReportSettings.of(config).to_json(),
    shell:
        "python -m scripts.report real_vs_synthetic --dataset {input.dataset} --samples {input.samples}"
        " --labels {params.labels:q} --settings {params.settings:q} --grids {output} 2> {log}"


rule counterfactual_tables:
    input:
        expand(rules.counterfactual_soundness.output[0], method=EDIT_METHODS),
    output:
        report(
            f"{REPORT}/counterfactuals.html",
            caption="../resources/report/soundness.rst",
            category="6. Counterfactuals",
            subcategory="All methods",
        ),
    log:
        "logs/report/counterfactual_tables.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        methods=EDIT_METHODS,
    shell:
        "python -m scripts.report counterfactual_tables --methods {params.methods:q}"
        " --soundness {input} --page {output} 2> {log}"
