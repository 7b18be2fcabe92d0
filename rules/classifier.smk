# Classifier stage: train per regime (real, synthetic, mixed, real+counterfactual) -> evaluate on the real
# test split (metrics, fairness, figures) -> Grad-CAM focus -> one comparison table across regimes.
# Functions: workflow/downstream.py (file to file), workflow/regimes.py, workflow/classifier.py,
# workflow/models.py, workflow/metrics.py, workflow/fairness.py, workflow/cam.py, workflow/plots.py,
# workflow/comparison.py.


include: "classifier_functions.smk"


rule train_classifier:
    input:
        unpack(regime_sources),
        weights_file(),
        dataset=f"{DATA}/dataset.parquet",
    output:
        model=f"{CLASSIFIER}/{{regime}}/model.pt",
        report=f"{CLASSIFIER}/{{regime}}/training.json",
    log:
        "logs/classifier/train_classifier/{regime}.log",
    conda:
        "../envs/synthmed.yaml"
    threads: 2
    resources:
        gpu=CLS["gpus"],
    params:
        sources=regime_sources_json,
        labels=as_json(config["dataset"]["labels"]),
        settings=as_json(CLS["training"]),
        synthetic_per_real=CLS["synthetic_per_real"],
        work_dir=f"{CLASSIFIER}/{{regime}}/checkpoints",
    shell:
        "python -m scripts.classifier train --regime {wildcards.regime:q} --dataset {input.dataset}"
        " --sources {params.sources:q} --labels {params.labels:q} --settings {params.settings:q}"
        " --synthetic-per-real {params.synthetic_per_real} --model {output.model} --report {output.report}"
        " --work-dir {params.work_dir:q} --threads {threads} 2> {log}"


rule evaluate_classifier:
    input:
        dataset=f"{DATA}/dataset.parquet",
        model=rules.train_classifier.output.model,
        training=rules.train_classifier.output.report,
    output:
        metrics=f"{CLASSIFIER}/{{regime}}/metrics.json",
        fairness=f"{CLASSIFIER}/{{regime}}/fairness.json",
        predictions=f"{CLASSIFIER}/{{regime}}/test_predictions.parquet",
        roc=report(
            f"{CLASSIFIER}/{{regime}}/roc.png",
            caption="../resources/report/roc.rst",
            category="5. Classifiers",
            subcategory="{regime}",
        ),
        subgroups=report(
            f"{CLASSIFIER}/{{regime}}/subgroup_auroc.png",
            caption="../resources/report/subgroups.rst",
            category="5. Classifiers",
            subcategory="{regime}",
        ),
    log:
        "logs/classifier/evaluate_classifier/{regime}.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=as_json(CLS["evaluation"]),
        fairness=as_json(CLS["fairness"]),
    shell:
        "python -m scripts.classifier evaluate --dataset {input.dataset} --model {input.model}"
        " --training {input.training} --settings {params.settings:q} --fairness {params.fairness:q}"
        " --metrics {output.metrics} --fairness-out {output.fairness} --predictions {output.predictions}"
        " --roc {output.roc} --subgroups {output.subgroups} --threads {threads} 2> {log}"


rule classifier_focus:
    input:
        dataset=f"{DATA}/dataset.parquet",
        model=rules.train_classifier.output.model,
    output:
        focus=f"{CLASSIFIER}/{{regime}}/focus.json",
        overlays=report(
            f"{CLASSIFIER}/{{regime}}/cam_examples.png",
            caption="../resources/report/cam.rst",
            category="5. Classifiers",
            subcategory="{regime}",
        ),
    log:
        "logs/classifier/classifier_focus/{regime}.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=as_json(CLS["focus"]),
        mask_classes=as_json(config["dataset"]["mask_classes"]),
        seed=CLS["evaluation"]["seed"],
    shell:
        "python -m scripts.classifier focus --dataset {input.dataset} --model {input.model}"
        " --settings {params.settings:q} --mask-classes {params.mask_classes:q} --seed {params.seed}"
        " --out {output.focus} --overlays {output.overlays} --threads {threads} 2> {log}"


rule compare_classifiers:
    input:
        metrics=expand(rules.evaluate_classifier.output.metrics, regime=REGIMES),
        fairness=expand(rules.evaluate_classifier.output.fairness, regime=REGIMES),
        focus=expand(rules.classifier_focus.output.focus, regime=REGIMES),
    output:
        csv=f"{CLASSIFIER}/comparison.csv",
        json=f"{CLASSIFIER}/comparison.json",
    log:
        "logs/classifier/compare_classifiers.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        regimes=REGIMES,
    shell:
        "python -m scripts.classifier compare --regimes {params.regimes:q} --metrics {input.metrics}"
        " --fairness {input.fairness} --focus {input.focus} --csv {output.csv} --json {output.json}"
        " 2> {log}"
