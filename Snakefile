# synthmed: language-guided diffusion on medical images, one reproducible workflow.
# This file is the table of contents; each stage lives in rules/<stage>.smk.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the demo study; `--configfile resources/presets/X.yaml` replaces it (not merged into it).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/prompts.smk"
include: "rules/diffusion.smk"
include: "rules/editing.smk"
include: "rules/classifier.smk"
include: "rules/evaluation.smk"
include: "rules/report.smk"


# `snakemake --report results/report.html`: this text opens the report; rules mark outputs with report().
report: "resources/report/workflow.rst"


rule all:
    default_target: True
    input:
        DATA_OUTPUTS,
        PROMPT_OUTPUTS,
        DIFFUSION_OUTPUTS,
        EDITING_OUTPUTS,
        CLASSIFIER_OUTPUTS,
        EVALUATION_OUTPUTS,
        REPORT_OUTPUTS,
