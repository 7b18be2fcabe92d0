# Config validation and the few helpers the rules share. No rule lives here.
import json
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../resources/config.schema.yaml")

DATA = "results/data"

# Rules run `python -m scripts.<stage>`; the repository root on PYTHONPATH makes `scripts` and the
# `workflow` library importable in any environment (venv, conda env, Slurm job) and working directory.
# (Braces are doubled twice: once for the f-string, once for Snakemake's own formatting.)
shell.prefix(f"export PYTHONPATH={workflow.basedir}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")

SHARDS = range(config["preprocess"]["shards"])


def as_json(section):
    """A config section as one JSON string, handed to a script's --settings argument."""
    return json.dumps(section, sort_keys=True)


def without_gpus(section, **extra):
    """A config section (plus ``extra`` keys) as JSON for a script, less its `gpus` key: the GPU count
    is the job's resource (`resources: gpu=`), not a setting of the computation."""
    return as_json({k: v for k, v in section.items() if k != "gpus"} | extra)


def final_outputs():
    """Everything `snakemake` builds by default: the end products of every stage."""
    return [
        f"{DATA}/dataset.parquet",
        f"{DATA}/data_report.json",
        *prompt_outputs(),
        *diffusion_outputs(),
        *classifier_outputs(),
        *evaluation_outputs(),
        *report_outputs(),
    ]


def adapter_tables():
    """The table files the selected dataset adapter reads (so Snakemake knows when to rebuild)."""
    adapter = config["dataset"]["adapter"]
    settings = config["dataset"][adapter]
    if adapter == "imagefolder":
        return [f"{settings['root']}/metadata.jsonl"]
    keys = {"mimic-cxr": ["metadata_csv", "labels_csv"], "volumes": ["table"]}.get(
        adapter, ["csv"]
    )
    tables = [settings[key] for key in keys]
    return [
        t for entry in tables for t in (entry if isinstance(entry, list) else [entry])
    ]


def preprocess_settings():
    """preprocess.* plus what preprocessing needs to know of dataset.*, as JSON."""
    dataset = config["dataset"]
    reader = dataset["volumes"]["reader"] if dataset["adapter"] == "volumes" else "auto"
    n_classes = len(dataset["mask_classes"])
    return as_json(
        config["preprocess"]
        | {"mask_classes": list(range(n_classes)), "volume_reader": reader}
    )
