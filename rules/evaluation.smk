# Evaluation stage, image quality: FID, KID and precision/recall of every generator's synthetic set against
# a real split, overall, per finding, per prompt and (volumes) per slice position, in one or more feature
# spaces (evaluation.extractor, evaluation.also), and conditional fidelity (the real-data classifier on the
# samples vs their prompts' labels) and, for mask-guided and mask-text generators, mask faithfulness (a
# segmenter trained on the real masks segments the samples: Dice per class) and, for 3D mask-text generators,
# volume similarity (MS-SSIM with the real volume of the same label volume); results/fid.json has a section
# per generator.
# Functions: workflow/evaluation/stage.py (one per rule); settings: workflow/evaluation/settings.py.
from workflow.classifier.regimes import real_classifier
from workflow.evaluation.settings import (
    ConditionalSettings,
    EvaluationSettings,
    MaskFaithfulnessSettings,
    VolumeSimilaritySettings,
    extractor_inputs,
)

EVALUATION = config["evaluation"]
QUALITY = "results/evaluation/{generator}"
CONDITIONAL = ConditionalSettings.of(config)
REAL_CLASSIFIER = real_classifier(config)


EXTRACTORS = extractor_inputs(config)
EVALUATION_OUTPUTS = [
    "results/fid.json",
    "results/fid_per_class.csv",
    *expand(f"{EDITS}/soundness.json", method=EDIT_METHODS),
]
CONDITIONAL_REPORTS = (
    expand(f"{QUALITY}/conditional_fidelity.json", generator=GENERATORS)
    if CONDITIONAL.enabled and REAL_CLASSIFIER
    else []
)
SEGMENTER = "results/evaluation/segmenter"
FAITHFULNESS = MaskFaithfulnessSettings.of(config)
FAITHFULNESS_REPORTS = (
    expand(f"{QUALITY}/mask_faithfulness.json", generator=MASK_GUIDED + MASK_TEXT)
    if FAITHFULNESS.enabled
    else []
)
VOLUME_REPORTS = expand(
    f"{QUALITY}/volume_similarity.json", generator=volume_generators(config)
)


rule image_metrics:
    input:
        dataset=DATASET,
        samples=samples_manifest("{generator}"),
        # the real images' prompt ids under the generator's own prompt variant, which its samples' ids number
        prompts=lambda wildcards: prompts_table(
            STUDY_GENERATORS[wildcards.generator].variant,
            STRATEGIES,
            EVALUATION["reference_split"],
        ),
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
        " --gpus {resources.gpu} --report {output.report} --table {output.table} 2> {log}"


rule conditional_fidelity:
    input:
        samples=samples_manifest("{generator}"),
        model=REAL_CLASSIFIER.get("model", []),
        metrics=REAL_CLASSIFIER.get("metrics", []),
    output:
        f"{QUALITY}/conditional_fidelity.json",
    log:
        "logs/evaluation/conditional_fidelity/{generator}.log",
    conda:
        "../envs/synthmed.yaml"
    threads: 2
    resources:
        gpu=EVALUATION["gpus"],
    params:
        settings=CONDITIONAL.to_json(),
    shell:
        "python -m scripts.evaluation conditional_fidelity --samples {input.samples} --model {input.model}"
        " --real-metrics {input.metrics} --settings {params.settings:q} --report {output}"
        " --gpus {resources.gpu} --threads {threads} 2> {log}"


rule train_segmenter:
    input:
        dataset=DATASET,
    output:
        model=directory(f"{SEGMENTER}/model"),
        report=f"{SEGMENTER}/train_report.json",
    log:
        "logs/evaluation/train_segmenter.log",
    conda:
        "../envs/synthmed.yaml"
    threads: 8
    resources:
        gpu=EVALUATION["mask_faithfulness"]["gpus"],
    params:
        settings=FAITHFULNESS.to_json(),
        checkpoints=f"{SEGMENTER}/checkpoints",
    # trap: the shell waits while training saves a checkpoint on SIGTERM (Slurm's time limit)
    shell:
        "trap '' TERM; python -m scripts.evaluation train_segmenter --dataset {input.dataset}"
        " --settings {params.settings:q} --gpus {resources.gpu} --model {output.model}"
        " --report {output.report} --checkpoints {params.checkpoints} 2> {log}"


rule mask_faithfulness:
    input:
        samples=samples_manifest("{generator}"),
        model=rules.train_segmenter.output.model,
        report=rules.train_segmenter.output.report,
    output:
        f"{QUALITY}/mask_faithfulness.json",
    log:
        "logs/evaluation/mask_faithfulness/{generator}.log",
    wildcard_constraints:
        generator=name_pattern(MASK_GUIDED + MASK_TEXT),
    conda:
        "../envs/synthmed.yaml"
    threads: 8
    resources:
        gpu=EVALUATION["mask_faithfulness"]["gpus"],
    params:
        settings=FAITHFULNESS.to_json(),
    shell:
        "python -m scripts.evaluation mask_faithfulness --generator {wildcards.generator}"
        " --samples {input.samples} --model {input.model} --segmenter-report {input.report}"
        " --settings {params.settings:q} --gpus {resources.gpu} --report {output} 2> {log}"


rule volume_similarity:
    input:
        samples=samples_manifest("{generator}"),
        dataset=DATASET,
    output:
        f"{QUALITY}/volume_similarity.json",
    log:
        "logs/evaluation/volume_similarity/{generator}.log",
    wildcard_constraints:
        generator=name_pattern(volume_generators(config)),
    conda:
        "../envs/synthmed.yaml"
    params:
        settings=VolumeSimilaritySettings.of(config).to_json(),
    shell:
        "python -m scripts.evaluation volume_similarity --generator {wildcards.generator}"
        " --samples {input.samples} --dataset {input.dataset} --settings {params.settings:q}"
        " --report {output} 2> {log}"


rule collect_image_metrics:
    input:
        reports=expand(rules.image_metrics.output.report, generator=GENERATORS),
        tables=expand(rules.image_metrics.output.table, generator=GENERATORS),
        conditional=CONDITIONAL_REPORTS,
        faithfulness=FAITHFULNESS_REPORTS,
        volumes=VOLUME_REPORTS,
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
        " --fid-table {output.table}"
        + (" --conditional {input.conditional}" if CONDITIONAL_REPORTS else "")
        + (" --faithfulness {input.faithfulness}" if FAITHFULNESS_REPORTS else "")
        + (" --volumes {input.volumes}" if VOLUME_REPORTS else "")
        + " 2> {log}"


# One per editing method (rules/editing.smk): the real classifier judges the edits when the study trains it.
rule counterfactual_soundness:
    input:
        counterfactuals=rules.collect_edits.output.manifest,
        plan=rules.plan_edits.output[0],
        model=REAL_CLASSIFIER.get("model", []),
        metrics=REAL_CLASSIFIER.get("metrics", []),
    output:
        f"{EDITS}/soundness.json",
    log:
        "logs/evaluation/counterfactual_soundness/{method}.log",
    conda:
        "../envs/synthmed.yaml"
    threads: 2
    resources:
        gpu=EVALUATION["gpus"],
    params:
        classifier=lambda wildcards, input: (
            f"--model {input.model} --real-metrics {input.metrics}"
            if input.model
            else ""
        ),
        settings=CONDITIONAL.to_json(),
    shell:
        "python -m scripts.evaluation counterfactual_soundness --counterfactuals {input.counterfactuals}"
        " --plan {input.plan} {params.classifier} --settings {params.settings:q} --report {output}"
        " --gpus {resources.gpu} --threads {threads} 2> {log}"
