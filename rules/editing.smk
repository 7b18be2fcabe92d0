# Editing stage: edit plan (images x edits, captions by the generator's prompt strategies, refused edits) ->
# sharded edits per method with the fine-tuned generator (difference maps, per-edit measures) -> the method's
# counterfactual manifest. Its soundness.json is written by the evaluation stage (the real classifier judges).
# Functions: workflow/editing/stage.py (one per rule); settings: workflow/editing/settings.py.
import re

from workflow.common.tiny_models import tiny_model_inputs
from workflow.diffusion.generators import model_dir
from workflow.editing.edits import (
    counterfactual_manifest,
    counterfactuals_dir,
    editing_generator,
    editing_methods,
    inversions_dir,
    plan_file,
)
from workflow.editing.settings import EditSettings, PlanSettings
from workflow.prompts.settings import PromptSettings
from workflow.prompts.variants import prompts_table

EDITING = config["editing"]
EDIT_METHODS = editing_methods(config)
EDIT_GENERATOR = editing_generator(config) if EDIT_METHODS else None
EDIT_SHARDS = range(EDITING["shards"])
EDITS = counterfactuals_dir("{method}")
# the generator's captions: the same strategies it was trained on
EDIT_PROMPTS = (
    PromptSettings.of(config, EDIT_GENERATOR.strategies).to_json()
    if EDIT_GENERATOR
    else ""
)


wildcard_constraints:
    method="|".join(map(re.escape, EDIT_METHODS)) or "(?!)",


EDITING_OUTPUTS = [
    *expand(counterfactual_manifest("{method}"), method=EDIT_METHODS),
    *expand(f"{EDITS}/examples.png", method=EDIT_METHODS),
    *expand(f"{EDITS}/cross_fades.html", method=EDIT_METHODS),
]


rule plan_edits:
    input:
        dataset=DATASET,
        prompts=(
            prompts_table(EDIT_GENERATOR.variant, STRATEGIES, EDITING["split"])
            if EDIT_GENERATOR
            else []
        ),
        truth=EDITING["ground_truth"] or [],
        model=f"{model_dir(EDIT_GENERATOR.name)}/model" if EDIT_GENERATOR else [],
    output:
        plan_file(),
    log:
        "logs/editing/plan_edits.log",
    conda:
        "../envs/synthmed.yaml"
    params:
        truth=lambda wildcards, input: (
            f"--ground-truth {input.truth}" if input.truth else ""
        ),
        settings=PlanSettings.of(config).to_json(),
        prompts=lambda wildcards: EDIT_PROMPTS,  # a function: the templates' {fields} are not wildcards
        labels=LABELS,
    shell:
        "python -m scripts.editing plan_edits --dataset {input.dataset} --prompts {input.prompts}"
        " --model {input.model}"
        " {params.truth} --settings {params.settings:q} --prompt-settings {params.prompts:q}"
        " --labels {params.labels:q} --plan {output} 2> {log}"


rule edit_images:
    input:
        plan=rules.plan_edits.output[0],
        model=f"{model_dir(EDIT_GENERATOR.name)}/model" if EDIT_GENERATOR else [],
        clip=tiny_model_inputs(config, "clip"),
        lpips=EDITING["lpips"]["weights"] or [],
    output:
        table=f"{EDITS}/shards/{{shard}}.parquet",
        images=directory(f"{EDITS}/images/shard{{shard}}"),
    log:
        "logs/editing/edit_images/{method}/{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/synthmed.yaml"
    threads: 8  # as sample_images
    resources:
        gpu=EDITING["gpus"],
    params:
        settings=EditSettings.of(config).to_json(),
        mask_classes=json.dumps(config["dataset"]["mask_classes"]),
        clip=lambda wildcards, input: (
            f"--clip-model {input.clip or EDITING['clip']['model']}"
            if EDITING["clip"]["model"]
            else ""
        ),
        # a cache shared by every method and shard, not an output: Snakemake would delete it before each job
        inversions=(
            f"--inversions {inversions_dir()}" if EDITING["cache_inversions"] else ""
        ),
    shell:
        "python -m scripts.editing edit_images --plan {input.plan} --model {input.model}"
        " --method {wildcards.method} --settings {params.settings:q}"
        " --mask-classes {params.mask_classes:q} --shard {wildcards.shard} --gpus {resources.gpu}"
        " --images {output.images} --table {output.table} {params.clip} {params.inversions} 2> {log}"


rule collect_edits:
    input:
        plan=rules.plan_edits.output[0],
        parts=expand(
            rules.edit_images.output.table,
            shard=EDIT_SHARDS,
            allow_missing=True,
        ),
    output:
        manifest=counterfactual_manifest("{method}"),
        examples=report(
            f"{EDITS}/examples.png",
            caption="../resources/report/counterfactuals.rst",
            category="6. Counterfactuals",
            subcategory="{method}",
        ),
        cross_fades=report(
            f"{EDITS}/cross_fades.html",
            caption="../resources/report/cross_fades.rst",
            category="6. Counterfactuals",
            subcategory="{method}",
        ),
    log:
        "logs/editing/collect_edits/{method}.log",
    conda:
        "../envs/synthmed.yaml"
    shell:
        "python -m scripts.editing collect_edits --method {wildcards.method} --plan {input.plan}"
        " --counterfactuals {output.manifest} --examples {output.examples}"
        " --cross-fades {output.cross_fades} {input.parts} 2> {log}"
