# Config validation, the helpers the rules share, and the one rule of every tiny stand-in model.
from pathlib import Path

from snakemake.utils import validate

from workflow.common.tiny_models import (
    TINY_MODELS,
    tiny_model_dir,
    tiny_model_inputs,
    tiny_model_seed,
)

validate(config, schema="../resources/config.schema.yaml")

# Rules run `python -m scripts.<stage>`; the repository root on PYTHONPATH makes `scripts` and the
# `workflow` library importable in any environment (venv, conda env, Slurm job) and working directory.
# (Braces are doubled twice: once for the f-string, once for Snakemake's own formatting.)
shell.prefix(f"export PYTHONPATH={workflow.basedir}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


def final_outputs():
    """Everything `snakemake` builds by default: the end products of every stage."""
    return [
        *data_outputs(),
        *prompt_outputs(),
        *diffusion_outputs(),
        *classifier_outputs(),
        *evaluation_outputs(),
        *report_outputs(),
    ]


def tiny_seed(wildcards):
    """The seed of a tiny stand-in's random weights (its config key: workflow.common.tiny_models)."""
    return tiny_model_seed(config, wildcards.name)


rule build_tiny_model:
    output:
        directory(tiny_model_dir("{name}")),
    log:
        "logs/common/build_tiny_model/{name}.log",
    wildcard_constraints:
        name="|".join(TINY_MODELS),
    conda:
        "../envs/synthmed.yaml"
    params:
        seed=tiny_seed,
    shell:
        "python -m scripts.common build_tiny_model --name {wildcards.name} --seed {params.seed}"
        " --out {output} 2> {log}"
