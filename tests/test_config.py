"""The JSON schema of config.yaml: defaults are filled in, bad keys and values are named."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "resources" / "config.schema.yaml")


def _load(path):
    return yaml.safe_load((ROOT / path).read_text())


def test_default_config_is_valid_and_gets_defaults():
    config = _load("config.yaml")
    validate(config, SCHEMA)
    assert config["split"]["fractions"] == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert len(config["dataset"]["labels"]) == 14
    assert config["dataset"]["chexpert"]["tabular"]["pack_years"] == "Pack Years"


def test_empty_config_gets_every_section():
    config = {"dataset": {"chexpert": {"csv": "x.csv", "image_root": "."}}}
    validate(config, SCHEMA)
    assert config["preprocess"] == {"resolution": 64, "fit": "crop", "shards": 2, "color": "grayscale"}
    assert config["dataset"]["uncertain_policy"] == "zeros"


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "resources" / "presets").glob("*.yaml")))
def test_presets_are_valid(preset):
    validate(_load(f"resources/presets/{preset}"), SCHEMA)


@pytest.mark.parametrize(
    ("edit", "names"),
    [
        (lambda c: c["dataset"].update(uncertain_policy="maybe"), "maybe"),
        (lambda c: c["preprocess"].update(resolutoin=64), "resolutoin"),
        (lambda c: c.update(sedd=1), "sedd"),
        (lambda c: c["split"]["fractions"].update(test=0), "test"),
        (lambda c: c["dataset"].update(adapter="csv"), "csv"),
        # {} named no group, and the adapter fell back to the default groups without a word
        (lambda c: c["dataset"]["chexpert"].update(race_groups={}), "race_groups"),
        # one device per job: a second GPU sat idle
        (lambda c: c["classifier"].update(gpus=2), "gpus"),
    ],
)
def test_invalid_config_names_the_key(edit, names):
    config = copy.deepcopy(_load("config.yaml"))
    edit(config)
    with pytest.raises(WorkflowError, match=names):
        validate(config, SCHEMA)
