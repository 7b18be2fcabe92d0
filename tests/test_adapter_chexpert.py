from dataclasses import replace
from pathlib import Path

import dataset_layouts
import numpy as np
import pandas as pd
import pytest
from configs import dataset_settings, tables_opened
from PIL import Image

from workflow.common.errors import InputError
from workflow.data.adapters import build_manifest, table_files
from workflow.data.adapters.base import group_values
from workflow.data.adapters.chexpert import RACE_GROUPS, RACE_OTHER, RACE_UNKNOWN
from workflow.data.labels import CHEXPERT_LABELS

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS, "Site"]


def _write(root, rows):
    for row in rows:
        path = root / row[0]
        if "missing" not in row[0]:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    labels = {name: "" for name in CHEXPERT_LABELS}
    table = pd.DataFrame(
        [
            dict(zip(HEADER[:5], r[:5], strict=True)) | labels | {"Cardiomegaly": r[5], "Site": "s1"}
            for r in rows
        ],
        columns=HEADER,
    )
    table.to_csv(root / "train.csv", index=False)
    return root / "train.csv"


@pytest.fixture
def chexpert(tmp_path):
    rows = [
        ("CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP", 1.0),
        ("CheXpert-v1.0/train/patient00001/study1/view2_lateral.jpg", "Female", 68, "Lateral", "", -1.0),
        ("CheXpert-v1.0/train/patient00002/study2/view1_frontal.jpg", "Male", 40, "Frontal", "PA", None),
        ("CheXpert-v1.0/train/patient00003/study1/missing.jpg", "Male", 50, "Frontal", "PA", 0.0),
        ("CheXpert-v1.0/train/nopatient/study1/view1_frontal.jpg", "Male", 50, "Frontal", "PA", 0.0),
    ]
    return _write(tmp_path, rows), tmp_path


def _dataset(csv, root, **extra):
    settings = {"csv": str(csv), "image_root": str(root), "extra_columns": {"site": "Site"}} | extra
    return dataset_settings(
        {
            "adapter": "chexpert",
            "labels": list(CHEXPERT_LABELS),
            "uncertain_policy": "ones",
            "blank_policy": "zeros",
            "chexpert": settings,
        }
    )


def test_manifest_from_chexpert_csv(chexpert):
    csv, root = chexpert
    result = build_manifest(_dataset(csv, root))
    table = result.manifest.set_index("image_id")
    first = table.loc["CheXpert-v1.0/train/patient00001/study1/view1_frontal"]
    assert first["patient_id"] == "patient00001"
    assert first["study_id"] == "patient00001/study1"
    assert (first["sex"], first["age"], first["view"], first["projection"]) == ("female", 68, "frontal", "AP")
    assert first["site"] == "s1"
    assert first["path"] == str(root / "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg")
    lateral = table.loc["CheXpert-v1.0/train/patient00001/study1/view2_lateral"]
    assert lateral["label_Cardiomegaly"] == 1.0  # U-Ones
    assert table.loc["CheXpert-v1.0/train/patient00002/study2/view1_frontal", "label_Cardiomegaly"] == 0.0
    assert len(table) == 3


def test_rejections_have_rows_and_reasons(chexpert):
    csv, root = chexpert
    rejected = build_manifest(_dataset(csv, root)).rejected
    reasons = dict(zip(rejected["row"].tolist(), rejected["reason"], strict=True))
    assert reasons == {
        5: "image file not found",
        6: "Path has no 'patientNNNNN' part, so the patient id is unknown",
    }
    assert set(rejected["stage"]) == {"adapter"}
    assert set(rejected["source"]) == {str(csv)}


def test_frontal_only_is_a_filter_not_an_error(chexpert):
    csv, root = chexpert
    result = build_manifest(_dataset(csv, root, frontal_only=True))
    filtered = result.rejected[result.rejected["stage"] == "filter"]
    assert filtered["row"].tolist() == [3]
    assert "frontal_only" in filtered["reason"].iloc[0]
    assert (result.manifest["view"] == "frontal").all()


def test_missing_column_and_file_name_the_config_key(chexpert, tmp_path):
    csv, root = chexpert
    with pytest.raises(InputError, match=r"dataset\.chexpert\.csv = .*file not found"):
        build_manifest(_dataset(tmp_path / "nope.csv", root))
    pd.read_csv(csv).drop(columns=["Age"]).to_csv(csv, index=False)
    with pytest.raises(InputError, match=r"lacks column\(s\) \['Age'\]"):
        build_manifest(_dataset(csv, root))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"extra_columns": {"site": "Scanner"}}, "dataset.chexpert.extra_columns.site = 'Scanner'"),
        ({"tabular": {"bmi": "BMI"}}, "dataset.chexpert.tabular.bmi = 'BMI'"),
    ],
)
def test_missing_mapped_column_names_the_config_key_and_file(chexpert, extra, message):
    csv, root = chexpert
    with pytest.raises(InputError) as caught:
        build_manifest(_dataset(csv, root, **extra))
    assert message in str(caught.value)
    assert f"'{csv}' has no such column" in str(caught.value)


def test_unknown_extra_column_key_is_an_error(chexpert):
    csv, root = chexpert
    with pytest.raises(
        InputError, match=r"dataset\.chexpert\.extra_columns has unknown key\(s\) \['scanner'\]"
    ):
        build_manifest(_dataset(csv, root, extra_columns={"scanner": "Site"}))


def test_age_that_is_not_a_number_names_the_row(chexpert):
    csv, root = chexpert
    table = pd.read_csv(csv).astype({"Age": object})
    table.loc[2, "Age"] = "forty"
    table.to_csv(csv, index=False)
    with pytest.raises(InputError, match=r"train\.csv' row 4 column 'Age' holds 'forty'"):
        build_manifest(_dataset(csv, root))


def test_unknown_adapter_is_a_clear_error():
    with pytest.raises(InputError, match=r"dataset\.adapter = 'dicomweb' is unknown"):
        build_manifest(
            dataset_settings(
                {"adapter": "dicomweb", "labels": [], "uncertain_policy": "zeros", "blank_policy": "zeros"}
            )
        )


def test_reads_exactly_the_tables_the_rules_track(chexpert, monkeypatch):
    csv, root = chexpert
    valid = root / "valid.csv"
    row = pd.read_csv(csv).iloc[:1]
    row.assign(Path=row["Path"].str.replace("patient00001", "patient00099")).to_csv(valid, index=False)
    dataset = _dataset(csv, root)
    dataset = replace(dataset, chexpert=dataset.chexpert | {"csv": [str(csv), str(valid)]})
    opened = tables_opened(monkeypatch, lambda: build_manifest(dataset))
    assert opened == set(table_files("chexpert", dataset.chexpert)) == {str(csv), str(valid)}


# --- race and ethnicity from CheXpert's demographics file (LoRA-fairness) ----------------------------------


def _demographics(root, rows, name="demo.csv"):
    table = pd.DataFrame(rows, columns=["PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE", "ETHNICITY"])
    path = root / name
    table.to_excel(path, index=False) if name.endswith(".xlsx") else table.to_csv(path, index=False)
    return path


def _with_demographics(csv, root, path, **extra):
    dataset = _dataset(csv, root, **extra)
    return replace(dataset, chexpert=dataset.chexpert | {"demographics_csv": str(path)} | extra)


@pytest.mark.parametrize("name", ["demo.csv", "CHEXPERT DEMO.xlsx"])
def test_race_is_joined_by_patient_grouped_and_missing_rows_are_kept_and_counted(chexpert, name):
    csv, root = chexpert
    path = _demographics(
        root,
        [
            ("patient00001", "Female", 68, "White, non-Hispanic", "Non-Hispanic/Non-Latino"),
            ("patient00001", "Female", 68, "White, non-Hispanic", "Non-Hispanic/Non-Latino"),  # repeated
            ("patient00099", "Male", 30, "Black or African American", "Hispanic/Latino"),
        ],
        name,
    )
    result = build_manifest(_with_demographics(csv, root, path))
    table = result.manifest.set_index("patient_id")
    assert table.loc["patient00001", "race"].tolist() == ["white", "white"]
    assert table.loc["patient00001", "ethnicity"].tolist() == ["Non-Hispanic/Non-Latino"] * 2
    assert pd.isna(table.loc["patient00002", "race"]) and pd.isna(table.loc["patient00002", "ethnicity"])
    assert len(result.manifest) == 3  # patient00002 has no demographics row and is kept
    summary = result.summary["demographics"]
    assert summary["images_without_demographics_row"] == 1
    assert summary["patients_without_demographics_row"] == 1
    assert summary["images_per_race_group"] == {"(missing)": 1, "white": 2}
    assert summary["race_group_of_value"] == {
        "Black or African American": "black",
        "White, non-Hispanic": "white",
    }


def test_race_groups_are_configurable():
    values = pd.Series(
        [
            "White or Caucasian",
            "Asian - Historical Conv",
            "Native Hawaiian or Other Pacific Islander",
            "Race and Ethnicity Unknown",
            "Patient Refused",
            None,
            "Black, Hispanic",
        ]
    )
    default = group_values(values, RACE_GROUPS, other=RACE_OTHER, unknown=RACE_UNKNOWN)
    assert default.tolist() == ["white", "asian", "other", pd.NA, pd.NA, pd.NA, "black"]
    custom = group_values(
        values, {"pacific": ["pacific"], "white": ["white"]}, other=None, unknown=["refused"]
    )
    assert custom.tolist() == ["white", pd.NA, "pacific", pd.NA, pd.NA, pd.NA, pd.NA]


def test_frontal_only_with_race_from_the_demographics_file_as_lora_fairness_uses_it(tmp_path):
    """The LoRA-fairness data: CheXpert phantoms with CHEXPERT DEMO.xlsx, frontal views only."""
    paths = dataset_layouts.chexpert(tmp_path, {"n_patients": 14, "image_size": 32, "seed": 2})
    table = pd.read_csv(paths["csv"])
    lateral = table.iloc[[0]].assign(
        **{
            "Path": table["Path"].iloc[0].replace("view1_frontal", "view2_lateral"),
            "Frontal/Lateral": "Lateral",
        }
    )
    Image.open(Path(paths["image_root"]) / table["Path"].iloc[0]).save(
        Path(paths["image_root"]) / lateral["Path"].iloc[0]
    )
    pd.concat([table, lateral]).to_csv(paths["csv"], index=False)
    settings = dataset_settings(
        {
            "adapter": "chexpert",
            "labels": list(CHEXPERT_LABELS),
            "uncertain_policy": "zeros",
            "blank_policy": "zeros",
            "chexpert": paths | {"frontal_only": True},
        }
    )
    result = build_manifest(settings)
    assert (result.manifest["view"] == "frontal").all() and len(result.manifest) == len(table)
    assert result.rejected["reason"].tolist() == ["lateral view excluded by dataset.chexpert.frontal_only"]
    assert set(result.manifest["race"].dropna()) <= {"white", "black", "asian", "other"}
    missing = result.manifest["patient_id"].isin(["patient00007", "patient00014"])
    assert result.manifest.loc[missing, "race"].isna().all()
    assert result.manifest.loc[~missing, "ethnicity"].notna().all()


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        ([("patient00001", "F", 1, "White", "")], {"extra_columns": {"race": "Site"}}, r"both give race"),
        (
            [("patient00001", "F", 1, "White", ""), ("patient00001", "F", 1, "Asian", "")],
            {},
            r"different values for PATIENT patient00001; dataset.chexpert.demographics_csv needs one row",
        ),
        (
            [("P1", "F", 1, "White", "")],
            {},
            r"no PATIENT matches a patient id of the CSVs \(e.g. 'patient00001'",
        ),
    ],
)
def test_demographics_errors_name_the_file_and_key(chexpert, rows, extra, message):
    csv, root = chexpert
    with pytest.raises(InputError, match=message):
        build_manifest(_with_demographics(csv, root, _demographics(root, rows), **extra))


def test_demographics_file_is_a_table_the_rules_track(chexpert, monkeypatch):
    csv, root = chexpert
    dataset = _with_demographics(
        csv, root, _demographics(root, [("patient00001", "F", 1, "White", "")], "d.xlsx")
    )
    opened = tables_opened(monkeypatch, lambda: build_manifest(dataset))
    assert opened == set(table_files("chexpert", dataset.chexpert)) == {str(csv), str(root / "d.xlsx")}
