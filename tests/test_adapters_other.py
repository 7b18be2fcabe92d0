"""Tests of the MIMIC-CXR, generic CSV and image-folder adapters on tiny fake datasets."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from configs import dataset_settings, tables_opened
from PIL import Image

from workflow.common.errors import InputError
from workflow.data.adapters import DatasetSpec, build_manifest, imagefolder, mimic, table_files
from workflow.data.adapters import csv as csv_adapter
from workflow.data.settings import DatasetSettings

LABELS = ["Cardiomegaly", "Edema"]
NAN = float("nan")
POLICIES = [  # (policy, value of an uncertain label)
    ("zeros", 0.0),
    ("ones", 1.0),
    ("ignore", NAN),
]


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), color=128).save(path)
    return path


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _dataset(adapter: str, settings: dict[str, Any], uncertain: str = "zeros") -> DatasetSettings:
    return dataset_settings(
        {
            "adapter": adapter,
            "labels": LABELS,
            "uncertain_policy": uncertain,
            "blank_policy": "zeros",
            adapter: settings,
        }
    )


def _reasons(rejected: pd.DataFrame) -> dict[int, tuple[str, str, str | None]]:
    """Rejections keyed by row: (stage, reason, image_id)."""
    return {
        int(r.row): (r.stage, r.reason, None if pd.isna(r.image_id) else r.image_id)
        for r in rejected.itertuples()
    }


# --- MIMIC-CXR ----------------------------------------------------------------------------------------


def write_mimic(tmp_path: Path) -> dict[str, Any]:
    """A small MIMIC-CXR-JPG layout with labels and MIMIC-IV demographics; its dataset.mimic-cxr settings."""
    root = tmp_path / "mimic-cxr-jpg"
    metadata = pd.DataFrame(
        {
            "dicom_id": ["d1", "d2", "d3", "d4", "d5", "d6", "d7"],
            "subject_id": [10000032, 10000032, 11000764, None, 10000898, 11000764, 11000764],
            "study_id": [50414267, 50414267, 57375967, 57375967, 50771383, 57375967, 57375967],
            "ViewPosition": ["PA", "LATERAL", "AP", "AP", "PA", "AP", "LL"],
            "Rows": [3056, 3056, 2544, 2544, 3056, 2544, 2544],
        }
    )
    for row in metadata.itertuples():
        if row.dicom_id in {"d1", "d2", "d3", "d5", "d7"}:
            subject = f"{int(row.subject_id)}"
            _image(
                root
                / "files"
                / f"p{subject[:2]}"
                / f"p{subject}"
                / f"s{row.study_id}"
                / f"{row.dicom_id}.jpg"
            )
    metadata_csv = tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz"
    metadata.to_csv(metadata_csv, index=False)
    labels_csv = tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz"
    pd.DataFrame(
        {
            "subject_id": [10000032, 11000764],
            "study_id": [50414267, 57375967],
            "Cardiomegaly": [1.0, -1.0],
            "Edema": [-1.0, None],
        }
    ).to_csv(labels_csv, index=False)
    patients_csv = tmp_path / "patients.csv"
    pd.DataFrame(
        {
            "subject_id": [10000032, 11000764, 11000764],
            "gender": ["F", "M", "M"],
            "anchor_age": [52, 76, 76],
            "anchor_year_group": ["2014 - 2016", "2011 - 2013", "2011 - 2013"],
        }
    ).to_csv(patients_csv, index=False)
    return {
        "metadata_csv": str(metadata_csv),
        "labels_csv": str(labels_csv),
        "image_root": str(root),
        "demographics_csv": str(patients_csv),
        "tabular": {"rows": "Rows", "year_group": "anchor_year_group"},
    }


@pytest.fixture
def mimic_data(tmp_path: Path) -> dict[str, Any]:
    return write_mimic(tmp_path)


@pytest.mark.parametrize(("policy", "uncertain"), POLICIES)
def test_mimic_happy_path(mimic_data: dict[str, Any], policy: str, uncertain: float) -> None:
    result = build_manifest(_dataset("mimic-cxr", mimic_data, policy))
    table = result.manifest.set_index("image_id")
    assert list(table.index) == [
        "p10000032/s50414267/d1",
        "p10000032/s50414267/d2",
        "p11000764/s57375967/d3",
        "p11000764/s57375967/d7",
    ]
    first = table.loc["p10000032/s50414267/d1"]
    assert first["path"] == f"{mimic_data['image_root']}/files/p10/p10000032/s50414267/d1.jpg"
    assert (first["patient_id"], first["study_id"]) == ("10000032", "50414267")
    assert (first["view"], first["projection"], first["sex"], first["age"]) == (
        "frontal",
        "PA",
        "female",
        52.0,
    )
    assert (first["tab_rows"], first["tab_year_group"]) == (3056, "2014 - 2016")
    assert first["label_Cardiomegaly"] == 1.0
    assert _same(first["label_Edema"], uncertain)
    assert table.loc["p10000032/s50414267/d2", "view"] == "lateral"
    last = table.loc["p11000764/s57375967/d7"]
    assert (last["view"], last["projection"], last["sex"], last["age"]) == ("lateral", "LL", "male", 76.0)
    assert _same(last["label_Cardiomegaly"], uncertain)
    assert last["label_Edema"] == 0.0  # blank -> zeros


def test_mimic_rejections(mimic_data: dict[str, Any]) -> None:
    result = mimic.build({**mimic_data, "views": ["pa", "AP"]}, DatasetSpec(tuple(LABELS)))
    assert _reasons(result.rejected) == {
        3: ("filter", "view LATERAL excluded by dataset.mimic-cxr.views", "p10000032/s50414267/d2"),
        5: ("adapter", "subject_id is empty", None),
        6: ("adapter", "study has no label row in dataset.mimic-cxr.labels_csv", "p10000898/s50771383/d5"),
        7: ("adapter", "image file not found under dataset.mimic-cxr.image_root", "p11000764/s57375967/d6"),
        8: ("filter", "view LL excluded by dataset.mimic-cxr.views", "p11000764/s57375967/d7"),
    }
    assert set(result.rejected["source"]) == {mimic_data["metadata_csv"]}
    assert list(result.manifest["image_id"]) == ["p10000032/s50414267/d1", "p11000764/s57375967/d3"]


def test_mimic_without_demographics(mimic_data: dict[str, Any]) -> None:
    settings = {k: v for k, v in mimic_data.items() if k not in {"demographics_csv", "tabular"}}
    table = build_manifest(_dataset("mimic-cxr", settings)).manifest
    assert table["sex"].isna().all() and table["age"].isna().all()
    assert len(table) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"demographics_columns": {"sex": "sex"}}, "dataset.mimic-cxr.demographics_columns.sex = 'sex'"),
        ({"tabular": {"bmi": "BMI"}}, "dataset.mimic-cxr.tabular.bmi = 'BMI'"),
        ({"metadata_csv": "nowhere.csv"}, "dataset.mimic-cxr.metadata_csv = 'nowhere.csv': file not found"),
        ({"labels_csv": None}, "dataset.mimic-cxr.labels_csv is not set"),
        ({"views": []}, "dataset.mimic-cxr.views is empty"),
    ],
)
def test_mimic_config_errors(mimic_data: dict[str, Any], change: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        mimic.build({**mimic_data, **change}, DatasetSpec(tuple(LABELS)))


def test_mimic_label_file_errors(mimic_data: dict[str, Any]) -> None:
    with pytest.raises(InputError, match=r"dataset\.mimic-cxr\.labels_csv.*'Pneumonia'"):
        mimic.build(mimic_data, DatasetSpec(("Pneumonia",)))
    labels = pd.read_csv(mimic_data["labels_csv"])
    pd.concat([labels, labels.iloc[[0]]]).to_csv(mimic_data["labels_csv"], index=False)
    with pytest.raises(InputError, match=r"row 4 repeats subject_id 10000032 study_id 50414267"):
        mimic.build(mimic_data, DatasetSpec(tuple(LABELS)))


def test_mimic_conflicting_demographics(mimic_data: dict[str, Any]) -> None:
    patients = pd.read_csv(mimic_data["demographics_csv"])
    patients.loc[2, "anchor_age"] = 77
    patients.to_csv(mimic_data["demographics_csv"], index=False)
    with pytest.raises(InputError, match="different values for subject_id 11000764"):
        mimic.build(mimic_data, DatasetSpec(tuple(LABELS)))


# --- generic CSV --------------------------------------------------------------------------------------


@pytest.fixture
def csv_data(tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "study"
    for name in ("a", "b", "d", "e"):
        _image(folder / "images" / f"{name}.png")
    _image(folder / "masks" / "a.png")
    table = folder / "index.csv"
    pd.DataFrame(
        {
            "file": [
                "images/a.png",
                "images/b.png",
                "images/c.png",
                "images/d.png",
                "images/e.png",
                "images/a.png",
            ],
            "subject": [1, 2, 3, None, 5, 1],
            "mask": ["masks/a.png", None, None, None, "masks/e.png", "masks/a.png"],
            "Gender": ["F", "male", "M", "F", "x", "F"],
            "Age": [63, None, 40, 50, 51, 63],
            "Card": [1, -1, 0, 0, 1, 1],
            "Edema": [-1, None, 1, 0, 0, -1],
            "BMI": [22.5, None, 30.1, 25, 24, 22.5],
            "Scanner": ["GE", "Siemens", "GE", "GE", "GE", "GE"],
        }
    ).to_csv(table, index=False)
    return {
        "csv": str(table),
        "columns": {
            "path": "file",
            "patient_id": "subject",
            "mask": "mask",
            "sex": "Gender",
            "age": "Age",
            "site": "Scanner",
        },
        "label_columns": {"Cardiomegaly": "Card"},
        "tabular": {"bmi": "BMI"},
    }


@pytest.mark.parametrize(("policy", "uncertain"), POLICIES)
def test_csv_happy_path(csv_data: dict[str, Any], policy: str, uncertain: float) -> None:
    result = build_manifest(_dataset("csv", csv_data, policy))
    table = result.manifest.set_index("image_id")
    assert list(table.index) == ["images/a", "images/b"]
    folder = Path(csv_data["csv"]).parent
    a = table.loc["images/a"]
    assert (a["path"], a["mask_path"]) == (str(folder / "images/a.png"), str(folder / "masks/a.png"))
    assert (a["patient_id"], a["sex"], a["age"], a["site"], a["tab_bmi"]) == ("1", "female", 63.0, "GE", 22.5)
    assert a["label_Cardiomegaly"] == 1.0
    assert _same(a["label_Edema"], uncertain)
    b = table.loc["images/b"]
    assert (b["patient_id"], b["sex"]) == ("2", "male")
    assert pd.isna(b["age"]) and pd.isna(b["mask_path"]) and pd.isna(b["tab_bmi"])
    assert _same(b["label_Cardiomegaly"], uncertain)
    assert b["label_Edema"] == 0.0


def test_csv_rejections(csv_data: dict[str, Any]) -> None:
    result = csv_adapter.build(csv_data, DatasetSpec(tuple(LABELS)))
    assert _reasons(result.rejected) == {
        4: ("adapter", "image file not found", "images/c"),
        5: ("adapter", "patient id is empty", "images/d"),
        6: ("adapter", "mask file not found", "images/e"),
        7: (
            "adapter",
            "image id repeats an earlier row; set dataset.csv.columns.image_id to a unique column",
            "images/a",
        ),
    }
    assert set(result.rejected["source"]) == {csv_data["csv"]}


def test_csv_image_root_and_image_id_column(csv_data: dict[str, Any], tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    Path(csv_data["csv"]).parent.rename(moved)
    settings = {
        **csv_data,
        "csv": str(moved / "index.csv"),
        "image_root": str(moved),
        "columns": {"path": "file", "patient_id": "subject", "image_id": "Scanner"},
    }
    result = csv_adapter.build(settings, DatasetSpec(tuple(LABELS)))
    assert list(result.manifest["image_id"]) == ["GE", "Siemens"]
    assert result.manifest["path"].iloc[0] == str(moved / "images/a.png")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"columns": {"path": "file", "patient_id": "subject", "sex": "Sex"}},
            "dataset.csv.columns.sex = 'Sex'",
        ),
        ({"columns": {"path": "File", "patient_id": "subject"}}, "dataset.csv.columns.path = 'File'"),
        ({"columns": {"path": "file"}}, "dataset.csv.columns.patient_id is not set"),
        ({"label_columns": {}}, "set dataset.csv.label_columns.Cardiomegaly"),
        ({"tabular": {"bmi": "bmi"}}, "dataset.csv.tabular.bmi = 'bmi'"),
    ],
)
def test_csv_config_errors_name_key_and_file(
    csv_data: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError) as caught:
        csv_adapter.build({**csv_data, **change}, DatasetSpec(tuple(LABELS)))
    assert message in str(caught.value)
    assert csv_data["csv"] in str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"columns": {"path": "file", "patient": "subject"}},
            "dataset.csv.columns has unknown key(s) ['patient']",
        ),
        ({"columns": {"path": None, "patient_id": "subject"}}, "dataset.csv.columns.path is not set"),
        ({"csv": "missing.csv"}, "dataset.csv.csv = 'missing.csv': file not found"),
    ],
)
def test_csv_other_config_errors(csv_data: dict[str, Any], change: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as caught:
        csv_adapter.build({**csv_data, **change}, DatasetSpec(tuple(LABELS)))
    assert message in str(caught.value)


def test_csv_age_must_be_a_number(csv_data: dict[str, Any]) -> None:
    table = pd.read_csv(csv_data["csv"]).astype({"Age": object})
    table.loc[3, "Age"] = "fifty"
    table.to_csv(csv_data["csv"], index=False)
    with pytest.raises(InputError) as caught:
        csv_adapter.build(csv_data, DatasetSpec(tuple(LABELS)))
    assert f"'{csv_data['csv']}' row 5 column 'Age' holds 'fifty'" in str(caught.value)


# --- image folder -------------------------------------------------------------------------------------


def _write_jsonl(root: Path, lines: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")


@pytest.fixture
def folder_data(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "folder"
    for name in ("0001", "0002", "0004"):
        _image(root / "img" / f"{name}.jpg")
    records = [
        {
            "file_name": "img/0001.jpg",
            "patient": "P7",
            "sex": "Female",
            "Cardiomegaly": 1,
            "Edema": -1,
            "text": "big heart",
        },
        {
            "file_name": "img/0002.jpg",
            "patient": "P8",
            "sex": "M",
            "Cardiomegaly": -1,
            "Edema": None,
            "text": "edema?",
        },
        {"file_name": "img/0003.jpg", "patient": "P9", "Cardiomegaly": 0, "Edema": 0},
        {"file_name": "img/0004.jpg", "patient": None, "Cardiomegaly": 0, "Edema": 0},
    ]
    _write_jsonl(root, [json.dumps(r) for r in records])
    return {
        "root": str(root),
        "columns": {"patient_id": "patient", "sex": "sex"},
        "tabular": {"report": "text"},
    }


@pytest.mark.parametrize(("policy", "uncertain"), POLICIES)
def test_imagefolder_happy_path(folder_data: dict[str, Any], policy: str, uncertain: float) -> None:
    result = build_manifest(_dataset("imagefolder", folder_data, policy))
    table = result.manifest.set_index("image_id")
    assert list(table.index) == ["img/0001", "img/0002"]
    first = table.loc["img/0001"]
    assert first["path"] == str(Path(folder_data["root"]) / "img/0001.jpg")
    assert (first["patient_id"], first["sex"], first["tab_report"]) == ("P7", "female", "big heart")
    assert first["label_Cardiomegaly"] == 1.0
    assert _same(first["label_Edema"], uncertain)
    second = table.loc["img/0002"]
    assert (second["patient_id"], second["sex"]) == ("P8", "male")
    assert _same(second["label_Cardiomegaly"], uncertain)
    assert second["label_Edema"] == 0.0


def test_imagefolder_rejections(folder_data: dict[str, Any]) -> None:
    result = imagefolder.build(folder_data, DatasetSpec(tuple(LABELS)))
    assert _reasons(result.rejected) == {
        3: ("adapter", "image file not found", "img/0003"),
        4: ("adapter", "patient id is empty", "img/0004"),
    }
    assert set(result.rejected["source"]) == {str(Path(folder_data["root"]) / "metadata.jsonl")}


def test_imagefolder_without_patient_id(folder_data: dict[str, Any]) -> None:
    with pytest.raises(InputError) as caught:
        imagefolder.build({**folder_data, "columns": {}}, DatasetSpec(tuple(LABELS)))
    message = str(caught.value)
    assert "dataset.imagefolder.columns.patient_id is not set" in message
    assert "split by patient" in message and "metadata.jsonl" in message


def test_imagefolder_missing_metadata(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"dataset\.imagefolder\.root = '.*empty' has no metadata\.jsonl"):
        imagefolder.build({"root": str(tmp_path / "empty")}, DatasetSpec(tuple(LABELS)))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"file_name": "a.png"}', '{"file_name": "b.png"}', '{"file_name": "c.png",}'],
            "line 3 is not valid JSON",
        ),
        (['{"file_name": "a.png"}', "", '{"file_name": "c.png"}'], "line 2 is blank"),
        (['{"file_name": "a.png"}', '["b.png"]'], "line 2 holds a list, not a JSON object"),
        ([], "is empty; it needs one JSON object per image"),
    ],
)
def test_imagefolder_bad_jsonl(tmp_path: Path, lines: list[str], message: str) -> None:
    _write_jsonl(tmp_path, lines)
    with pytest.raises(InputError) as caught:
        imagefolder.build({"root": str(tmp_path), "columns": {"patient_id": "p"}}, DatasetSpec(()))
    assert message in str(caught.value)
    assert "metadata.jsonl" in str(caught.value)


def test_imagefolder_missing_configured_key(folder_data: dict[str, Any]) -> None:
    settings = {**folder_data, "columns": {"patient_id": "subject"}}
    with pytest.raises(InputError, match=r"dataset\.imagefolder\.columns\.patient_id = 'subject'"):
        imagefolder.build(settings, DatasetSpec(tuple(LABELS)))


# --- the tables each adapter reads ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adapter", "fixture"), [("mimic-cxr", "mimic_data"), ("csv", "csv_data"), ("imagefolder", "folder_data")]
)
def test_adapter_reads_exactly_the_tables_the_rules_track(adapter, fixture, request, monkeypatch):
    """Every table file an adapter opens is one of table_files(), the inputs of rule build_manifest (so
    editing it rebuilds the manifest), and every listed file is read."""
    settings = request.getfixturevalue(fixture)
    opened = tables_opened(monkeypatch, lambda: build_manifest(_dataset(adapter, settings)))
    assert opened == {str(Path(p)) for p in table_files(adapter, settings)}
