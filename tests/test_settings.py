"""Typed settings and the tables the rules read, tied to the config schema so that they cannot drift."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from configs import ROOT, validated

from workflow.classifier.regimes import EXTERNAL, SOURCES, run_sources, runs
from workflow.common.errors import InputError
from workflow.common.settings import RESOURCE_KEYS, Settings, config_key, section
from workflow.common.tiny_models import TINY_MODELS, build_tiny_model, tiny_model_inputs, tiny_model_seed
from workflow.data.settings import SplitSettings
from workflow.diffusion.generators import generator_names, samples_manifest

SCHEMA = yaml.safe_load((ROOT / "resources" / "config.schema.yaml").read_text())
STAGES = ["data", "prompts", "diffusion", "editing", "classifier", "evaluation", "report"]
PRESETS = sorted((ROOT / "resources" / "presets").glob("*.yaml"))


def settings_classes() -> list[type[Settings]]:
    """Every settings class of the stages' ``settings`` modules (and the phantoms')."""
    found = {}
    for stage in STAGES:
        module = importlib.import_module(f"workflow.{stage}.settings")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Settings) and cls is not Settings and cls.__module__ == module.__name__:
                found[cls.__qualname__] = cls
    found["PhantomSettings"] = importlib.import_module("workflow.data.phantoms").PhantomSettings
    return list(found.values())


def schema_section(path: tuple[str, ...]) -> dict:
    node = SCHEMA
    for key in path:
        node = node["properties"][key]
    return node


def overrides_of(cls: type[Settings]) -> bool:
    return "of" in cls.__dict__


# phantom.settings is a free-form mapping, checked key by key by PhantomSettings.from_dict
SECTION_CLASSES = [
    c for c in settings_classes() if c.SECTION and not overrides_of(c) and c.__name__ != "PhantomSettings"
]


@pytest.mark.parametrize("cls", SECTION_CLASSES, ids=lambda c: c.__name__)
def test_a_section_class_has_exactly_the_schema_keys(cls):
    """Classes read straight from their section (``SECTION``) have one field per schema key (resources
    aside): a key added to the schema without its field, or the other way round, fails here."""
    keys = set(schema_section(cls.SECTION)["properties"]) - RESOURCE_KEYS
    assert {config_key(f) for f in dataclasses.fields(cls)} == keys


@pytest.mark.parametrize(
    "cls", [c for c in settings_classes() if c.SECTION or overrides_of(c)], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("config_file", [ROOT / "config.yaml", *PRESETS], ids=lambda p: p.stem)
def test_every_rule_class_reads_the_demo_and_every_preset(cls, config_file):
    """``of`` builds each class a rule uses from the demo config and from every preset, and its JSON
    round-trips (nested classes are built by their parents)."""
    config = validated(yaml.safe_load(Path(config_file).read_text()))
    if cls.SECTION and cls.SECTION[0] not in config:
        pytest.skip(f"{config_file.name} has no {cls.SECTION[0]} section")
    settings = cls.of(config)
    assert cls.from_json(settings.to_json()) == settings


def test_fields_of_projection_classes_are_schema_keys():
    """Classes that combine keys of several sections (their own ``of``) name every field after a schema key
    somewhere in the config, so a reader can find it."""
    keys = set()

    def collect(node: dict) -> None:
        for key, child in node.get("properties", {}).items():
            keys.add(key)
            collect(child)
        if isinstance(node.get("items"), dict):
            collect(node["items"])

    collect(SCHEMA)
    derived = {"outlier_features", "volume_reader"}  # documented in their classes: from prompts.mep.outliers
    for cls in settings_classes():
        if cls.__name__ == "PhantomSettings":  # phantom.settings is free-form, checked by its from_dict
            continue
        names = {config_key(f) for f in dataclasses.fields(cls)}
        assert names - keys <= derived, cls.__name__


def test_unknown_and_missing_keys_name_the_config_key():
    with pytest.raises(InputError, match=r"split: unknown setting\(s\) \['seeds'\]"):
        SplitSettings.from_dict({"fractions": {}, "seed": 1, "seeds": 2})
    with pytest.raises(InputError, match=r"split\.seed is missing"):
        SplitSettings.from_dict({"fractions": {}})


def test_resource_keys_never_reach_the_settings():
    config = validated({"diffusion": {"train": {"gpus": 4}}})
    from workflow.diffusion.settings import TrainSettings

    assert "gpus" not in TrainSettings.of(config).to_dict()
    assert TrainSettings.of(config) == TrainSettings.of(validated({"diffusion": {"train": {"gpus": 0}}}))


def test_regime_table_matches_the_schema():
    items = schema_section(("classifier",))["properties"]["regimes"]["items"]["enum"]
    assert list(SOURCES) == items


def test_runs_name_every_regime_per_source():
    config = validated({"classifier": {"regimes": ["real", "synthetic", "mixed"]}})
    (generator,) = generator_names(config)
    assert runs(config) == ["real", f"synthetic/{generator}", f"mixed/{generator}"]
    assert run_sources(config, f"mixed/{generator}") == {"synthetic": samples_manifest(generator)}
    assert run_sources(config, "real") == {}
    counterfactual = {"regimes": ["real+counterfactual"], "counterfactuals": "cf.parquet"}
    config = validated({"classifier": counterfactual})
    assert runs(config) == [f"real+counterfactual/{EXTERNAL}"]
    assert run_sources(config, f"real+counterfactual/{EXTERNAL}") == {"counterfactual": "cf.parquet"}
    with pytest.raises(InputError, match=r"classifier\.counterfactuals"):
        runs(validated({"classifier": {"regimes": ["real+counterfactual"]}}))


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tiny_model_table_points_at_config_keys_and_builders(name, tmp_path):
    """Each stand-in's selecting key and seed key exist in the validated config, its builder exists, and the
    stand-in is an input exactly when its key says tiny."""
    model = TINY_MODELS[name]
    config = validated({})
    *parent, key = model.selected_by
    assert key in section(config, tuple(parent))
    assert isinstance(tiny_model_seed(config, name), int)
    module, function = model.builder.split(":")
    assert callable(getattr(importlib.import_module(module), function))
    section(config, tuple(parent))[key] = "tiny"
    folder = f"results/models/tiny/{name}-trained" if model.trained_by else f"results/models/tiny/{name}"
    assert tiny_model_inputs(config, name) == [folder]
    section(config, tuple(parent))[key] = "some/model"
    assert tiny_model_inputs(config, name) == []
    if model.trained_by:  # the rule that trains it exists and writes the folder the stages take
        rules = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
        body = rules.split(f"rule {model.trained_by}:\n", 1)[1].split("\nrule ", 1)[0]
        assert f"trained_tiny_model_dir({name!r})" in body.replace('"', "'")


def test_a_tiny_model_is_built_atomically_with_its_card(tmp_path):
    out = tmp_path / "dinov2"
    build_tiny_model("dinov2", 0, str(out))
    assert (out / "synthmed_model.json").is_file() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dinov2"]
