# Config validation, what the rules share, and the one rule of every tiny stand-in model.
# Rules files hold no functions (`snakemake --lint`): what a rule needs to know of the config comes from
# the library (workflow/<stage>/settings.py, workflow/common/tiny_models.py, ...).
import json

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


LABELS = json.dumps(config["dataset"]["labels"])
DATASET = "results/data/dataset.parquet"


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
        seed=lambda wildcards: tiny_model_seed(config, wildcards.name),
    shell:
        "python -m scripts.common build_tiny_model --name {wildcards.name} --seed {params.seed}"
        " --out {output} 2> {log}"
