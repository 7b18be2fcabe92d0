"""Prompt strategies: PRISM captions, LoRA-fairness demographics, DGM-VLC tabular text, MEP-LDM words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from configs import validated
from snakemake.utils import validate

from workflow.common.errors import InputError
from workflow.common.manifest import label_column
from workflow.prompts import strategies as prompts
from workflow.prompts.settings import ClassSettings, PromptSettings

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("No Finding", "Cardiomegaly", "Edema", "Pleural Effusion", "Support Devices")


def section(**changes) -> dict:
    """The prompts section with the schema's defaults filled in, then ``changes`` per subsection."""
    prompts_section = validated({})["prompts"]
    for key, value in changes.items():
        if isinstance(value, dict):
            prompts_section[key].update(value)
        else:
            prompts_section[key] = value
    return prompts_section


def defaults(**changes) -> PromptSettings:
    """The settings of rule build_prompts: :func:`section` as :class:`PromptSettings`."""
    return PromptSettings.of({"prompts": section(**changes)})


def rows(*records: dict) -> pd.DataFrame:
    """Dataset rows: ``positive`` names the findings that are 1; others 0, ``uncertain`` ones NaN."""
    table = []
    for record in records:
        record = dict(record)
        positive, uncertain = record.pop("positive", ()), record.pop("uncertain", ())
        labels = {
            label_column(n): 1.0 if n in positive else (np.nan if n in uncertain else 0.0) for n in LABELS
        }
        table.append({"age": np.nan, "sex": None, "race": None} | record | labels)
    return pd.DataFrame(table)


def test_prism_captions_exactly():
    frame = rows(
        {"positive": ("Cardiomegaly", "Support Devices")},
        {"positive": (), "uncertain": ("Edema",)},
        {"positive": ("No Finding",)},
        {"positive": ("Pleural Effusion", "Cardiomegaly")},
    )
    assert prompts.captions(frame, LABELS, defaults().labels, "prompts.labels").tolist() == [
        "Chest X-ray showing Cardiomegaly, Support Devices",
        "Normal chest X-ray with no significant findings",
        "Chest X-ray showing No Finding",
        "Chest X-ray showing Cardiomegaly, Pleural Effusion",
    ]


def test_demographic_prompts_exactly_and_grammatically():
    frame = rows(
        {"age": 54.0, "race": "White", "sex": "male", "positive": ("Cardiomegaly",)},
        {"age": 18.0, "race": "Asian", "sex": "female", "positive": ("No Finding",)},
        {"age": np.nan, "race": "Asian", "sex": "female", "positive": ("Edema", "Pleural Effusion")},
        {"age": 80.0, "race": "Other", "sex": None, "positive": ()},
        {"age": np.nan, "race": None, "sex": None, "positive": ("Edema", "Cardiomegaly", "Support Devices")},
    )
    texts = prompts.captions(frame, LABELS, defaults().demographics, "prompts.demographics").tolist()
    assert texts == [
        "Chest X-ray of a 54-year-old white male patient showing cardiomegaly",
        "Chest X-ray of an 18-year-old asian female patient showing no significant findings",
        "Chest X-ray of an asian female patient showing edema and pleural effusion",
        "Chest X-ray of an 80-year-old patient showing no significant findings",
        "Chest X-ray of a patient showing cardiomegaly, edema and support devices",
    ]
    assert not any("nan" in t or "  " in t for t in texts)


@pytest.mark.parametrize(
    ("word", "article"),
    [
        ("8-year-old", "an"), ("11-year-old", "an"), ("18-year-old", "an"), ("80-year-old", "an"),
        ("1-year-old", "a"), ("54-year-old", "a"), ("asian", "an"), ("white", "a"), ("unknown", "an"),
        ("university", "a"), ("European", "a"), ("hour", "an"), ("MRI", "an"), ("X-ray", "an"),
        ("MALE", "a"), ("NSCLC", "an"), ("SMOKER", "a"), ("UK", "a"), ("uterus", "a"), ("heart", "a"),
    ],
)  # fmt: skip
def test_indefinite_article(word, article):
    """Expected values are inflect 7.6's (checked once; inflect itself is not a dependency)."""
    assert prompts.indefinite_article(word) == article


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (0, "zero"), (5, "five"), (12, "twelve"), (20, "twenty"), (32, "thirty-two"), (100, "one hundred"),
        (101, "one hundred and one"), (1000, "one thousand"), (1005, "one thousand and five"),
        (1234, "one thousand, two hundred and thirty-four"), (999_999, "nine hundred and ninety-nine "
        "thousand, nine hundred and ninety-nine"),
    ],
)  # fmt: skip
def test_number_words_as_mep_ldm_spells_clusters(number, words):
    assert prompts.number_words(number) == words


DGM_VLC_FIELDS = [
    {"field": "diagnosis", "text": "DIAGNOSIS is {value},"},
    {"field": "age", "text": "Patient age: {value}."},
    {"field": "sex", "text": "Gender: {value}.", "values": {"male": "Male", "female": "Female"}},
    {"field": "ctd_type", "text": "CTD diagnosis: {value}.", "missing": ["Not Available"]},
    {"field": "ctd_days", "text": "CTD diagnosed {value} days ago.", "absolute": True},
    {"field": "pack_years", "text": "{value}", "missing": [99999, 0]},
    {"field": "alive", "text": "State of (Dead/Alive) within one year is {value},",
     "values": {"1": "Alive", "0": "Dead"}},
]  # fmt: skip


def _tabular_settings() -> dict:
    fields = [{"values": {}, "missing": [], "absolute": False} | f for f in DGM_VLC_FIELDS]
    return defaults(tabular={"fields": fields}).tabular


def test_tabular_text_skips_missing_values_and_cleans_sentinels():
    frame = pd.DataFrame(
        {
            "age": [65.0, np.nan],
            "sex": ["male", None],
            "tab_diagnosis": ["IPF", "CTD-ILD"],
            "tab_ctd_type": ["Not Available", "RA"],
            "tab_ctd_days": [np.nan, -120.0],
            "tab_pack_years": [99999, 0],
            "tab_alive": [1.0, 0.0],
        }
    )
    assert prompts.tabular_captions(frame, _tabular_settings()).tolist() == [
        "Lung CT scan : DIAGNOSIS is IPF, Patient age: 65. Gender: Male. "
        "State of (Dead/Alive) within one year is Alive.",
        "Lung CT scan : DIAGNOSIS is CTD-ILD, CTD diagnosis: RA. CTD diagnosed 120 days ago. "
        "State of (Dead/Alive) within one year is Dead.",
    ]


def test_tabular_field_absent_from_the_data_names_the_key():
    settings = _tabular_settings()
    with pytest.raises(InputError, match=r"prompts.tabular.fields\[0\].field = 'diagnosis'"):
        prompts.tabular_captions(pd.DataFrame({"tab_other": [1]}), settings)


@pytest.mark.parametrize(
    ("section", "template", "key"),
    [
        ("labels", "Chest X-ray showing {finding}", "prompts.labels.template"),
        ("demographics", "A {age:.1f}-year-old {sex}", "prompts.demographics.template"),
        ("mep", "morphology type {cluster} of {organ}", "prompts.mep.template"),
    ],
)
def test_unknown_template_field_names_the_key(section, template, key):
    settings = defaults(strategies=[section], **{section: {"template": template}})
    frame = rows({"positive": ("Edema",)}).assign(cluster=pd.array([1], dtype="Int64"), class_name=None)
    with pytest.raises(InputError, match=rf"{key} uses unknown template field") as err:
        prompts.build(frame, LABELS, settings)
    assert "the fields are {" in str(err.value)


def test_mep_prompts_for_chest_xray_and_histology():
    frame = pd.DataFrame(
        {"cluster": pd.array([5, 32, None], dtype="Int64"), "class_name": ["Cancer", "Healthy", "Cancer"]}
    )
    cxr = prompts.mep_captions(frame, defaults().mep)
    assert cxr.tolist()[:2] == ["Chest X-Ray image with morphology type five", "Chest X-Ray image with "
                                "morphology type thirty-two"]  # fmt: skip
    assert pd.isna(cxr.iloc[2])
    histology = {"template": "Histology image of {label} tissue, morphology type {cluster}"}
    texts = prompts.mep_captions(frame, defaults(mep=histology).mep).tolist()
    assert texts[0] == "Histology image of cancer tissue, morphology type five"


def test_mep_label_needs_a_class_column():
    frame = pd.DataFrame({"cluster": pd.array([1], dtype="Int64"), "class_name": pd.array([None], "string")})
    settings = defaults(mep={"template": "Histology image of {label} tissue, morphology type {cluster}"})
    with pytest.raises(InputError, match=r"prompts\.classes\.column"):
        prompts.mep_captions(frame, settings.mep)


def test_strategies_combine_in_order_and_outliers_get_no_prompt():
    frame = rows({"positive": ("Edema",)}, {"positive": ()}).assign(
        cluster=pd.array([2, None], dtype="Int64"), class_name=None
    )
    settings = defaults(strategies=["labels", "mep"], mep={"template": "morphology type {cluster}"})
    texts = prompts.build(frame, LABELS, settings)
    assert texts.iloc[0] == "Chest X-ray showing Edema, morphology type two"
    assert pd.isna(texts.iloc[1])


def test_prompt_ids_are_stable_per_text():
    texts = pd.Series(["b", "a", None, "b", "c"], dtype="string")
    assert prompts.prompt_ids(texts).tolist() == [1, 0, pd.NA, 1, 2]
    assert prompts.prompt_ids(texts.iloc[::-1]).tolist() == [2, 1, pd.NA, 0, 1]


def test_class_names_are_renamed_values():
    frame = pd.DataFrame({"label_Tumor": [1.0, 0.0, np.nan]})
    classes = ClassSettings(column="label_Tumor", names={"1": "cancer", "0": "healthy"})
    assert prompts.class_names(frame, classes).tolist() == ["cancer", "healthy", pd.NA]
    with pytest.raises(InputError, match=r"prompts\.classes\.column = 'grade'"):
        prompts.class_names(frame, ClassSettings(column="grade", names={}))


def test_demo_config_prompts_section_is_valid():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(config, str(ROOT / "resources" / "config.schema.yaml"))
    assert config["prompts"]["mep"]["model"] == "tiny"
    assert defaults().strategies == ("labels",)
