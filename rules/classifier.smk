# Classifier stage: train per run (a regime and the source of its extra images) -> evaluate on the real test
# split (metrics, fairness, figures) -> Grad-CAM focus -> one comparison table across runs.
# Functions: workflow/classifier/stage.py (one per rule); settings: workflow/classifier/settings.py;
# runs: workflow/classifier/regimes.py.
import re

from workflow.classifier.regimes import RESULTS, run_sources, runs
from workflow.classifier.settings import (
    EvaluationSettings,
    FairnessSettings,
    FocusSettings,
    TrainSettings,
)

CLASSIFIER = RESULTS
CLS = config["classifier"]
RUNS = runs(config)
RUN = f"{CLASSIFIER}/{{run}}"


wildcard_constraints:
    run="|".join(re.escape(run) for run in RUNS),


CLASSIFIER_OUTPUTS = [
    *expand(
        f"{RUN}/{{name}}",
        run=RUNS,
        name=["metrics.json", "fairness.json", "focus.json"],
    ),
    f"{CLASSIFIER}/comparison.csv",
    f"{CLASSIFIER}/comparison.json",
]
TRAINING = TrainSettings.of(config)


rule train_classifier:
    input:
        unpack(lambda wildcards: run_sources(config, wildcards.run)),
        TRAINING.weights_inputs(),
        dataset=DATASET,
    output:
        model=f"{RUN}/model.pt",
        report=f"{RUN}/training.json",
    log:
        "logs/classifier/train_classifier/{run}.log",
    conda:
        "../envs/synthmed.yaml"
    threads: 2
    resources:
        gpu=CLS["gpus"],
    params:
        sources=lambda wildcards: json.dumps(run_sources(config, wildcards.run)),
        labels=LABELS,
        settings=TRAINING.to_json(),
        synthetic_per_real=CLS["synthetic_per_real"],
        work_dir=f"{RUN}/checkpoints",
        logs=f"{RUN}/logs",
    # trap: the shell waits while training saves a checkpoint on SIGTERM (Slurm's time limit)
    shell:
        "trap '' TERM; python -m scripts.classifier train_classifier --run {wildcards.run:q}"
        " --dataset {input.dataset}"
        " --sources {params.sources:q} --labels {params.labels:q} --settings {params.settings:q}"
        " --synthetic-per-real {params.synthetic_per_real} --model {output.model}"
        " --report {output.report} --work-dir {params.work_dir:q} --gpus {resources.gpu}"
        " --threads {threads}"
        " --logs {params.logs:q} 2> {log}"


rule evaluate_classifier:
    input:
        dataset=DATASET,
        model=rules.train_classifier.output.model,
        training=rules.train_classifier.output.report,
    output:
        metrics=f"{RUN}/metrics.json",
        fairness=f"{RUN}/fairness.json",
        predictions=f"{RUN}/test_predictions.parquet",
        roc=report(
            f"{RUN}/roc.png",
            caption="../resources/report/roc.rst",
            category="5. Classifiers",
            subcategory="{run}",
        ),
        subgroups=report(
            f"{RUN}/subgroup_auroc.png",
            caption="../resources/report/subgroups.rst",
            category="5. Classifiers",
            subcategory="{run}",
        ),
    log:
        "logs/classifier/evaluate_classifier/{run}.log",
    conda:
        "../envs/synthmed.yaml"
    resources:
        gpu=CLS["gpus"],
    params:
        settings=EvaluationSettings.of(config).to_json(),
        fairness=FairnessSettings.of(config).to_json(),
    shell:
        "python -m scripts.classifier evaluate_classifier --dataset {input.dataset} --model {input.model}"
        " --training-report {input.training} --settings {params.settings:q}"
        " --fairness-settings {params.fairness:q} --metrics-report {output.metrics}"
        " --fairness-report {output.fairness} --predictions {output.predictions} --roc {output.roc}"
        " --subgroups {output.subgroups} --gpus {resources.gpu} --threads {threads} 2> {log}"


rule classifier_focus:
    input:
        dataset=DATASET,
        model=rules.train_classifier.output.model,
    output:
        focus=f"{RUN}/focus.json",
        overlays=report(
            f"{RUN}/cam_examples.png",
            caption="../resources/report/cam.rst",
            category="5. Classifiers",
            subcategory="{run}",
        ),
    log:
        "logs/classifier/classifier_focus/{run}.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=FocusSettings.of(config).to_json(),
    shell:
        "python -m scripts.classifier classifier_focus --dataset {input.dataset} --model {input.model}"
        " --settings {params.settings:q} --focus {output.focus} --overlays {output.overlays}"
        " --threads {threads} 2> {log}"


rule compare_classifiers:
    input:
        metrics=expand(rules.evaluate_classifier.output.metrics, run=RUNS),
        fairness=expand(rules.evaluate_classifier.output.fairness, run=RUNS),
        focus=expand(rules.classifier_focus.output.focus, run=RUNS),
    output:
        table=f"{CLASSIFIER}/comparison.csv",
        summary=f"{CLASSIFIER}/comparison.json",
    log:
        "logs/classifier/compare_classifiers.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        runs=RUNS,
    shell:
        "python -m scripts.classifier compare_classifiers --runs {params.runs:q}"
        " --metrics-reports {input.metrics} --fairness-reports {input.fairness}"
        " --focus-reports {input.focus} --table {output.table} --summary {output.summary} 2> {log}"
