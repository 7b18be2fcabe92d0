"""Tests of the ChestX-ray14 and PCam adapters on tiny datasets in their on-disk formats, and of reading
PCam's patches out of the HDF5 files in preprocessing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
from configs import dataset_settings, tables_opened
from dataset_layouts import CXR14_HEADER
from PIL import Image

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.data.adapters import build_manifest, table_files
from workflow.data.adapters.pcam import file_name
from workflow.data.preprocess import preprocess_rows
from workflow.data.settings import DatasetSettings, PreprocessSettings

CXR14_LABELS = ["No Finding", "Cardiomegaly", "Effusion", "Pleural Thickening", "Hernia"]
# Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age, Patient Gender, View Position
CXR14_ROWS = [
    ("00000001_000.png", "Cardiomegaly|Effusion", 0, 1, "058Y", "M", "PA"),
    ("00000001_001.png", "No Finding", 1, 1, "058Y", "M", "AP"),
    ("00000002_000.png", "Pleural_Thickening|Hernia", 0, 2, 414, "F", "PA"),
    ("00000003_000.png", "Effusion", 0, 3, 33, "F", "AP"),  # image missing
    ("00000004_000.png", "Cardiomegaly|Foo", 0, 4, 40, "M", "PA"),  # unknown finding
    ("00000005_000.png", "No Finding", 0, 5, 51, "F", "PA"),  # in neither official list
]
TRAIN_VAL = ["00000001_000.png", "00000001_001.png", "00000003_000.png", "00000004_000.png"]
TEST = ["00000002_000.png"]


def _settings(adapter: str, labels: list[str], section: dict[str, Any]) -> DatasetSettings:
    return dataset_settings(
        {"adapter": adapter, "labels": labels, "uncertain_policy": "zeros", "blank_policy": "zeros"}
        | {adapter: section}
    )


def _png(path: Path, value: int = 100, shape: tuple[int, ...] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


# --- ChestX-ray14 ---------------------------------------------------------------------------------------


def write_cxr14(root: Path, *, flat: bool = False) -> dict[str, Any]:
    """Data_Entry_2017.csv with NIH's header, the images (in images_00N/images/, or flat) and both lists."""
    lines = [CXR14_HEADER] + [",".join(map(str, row)) + ",2500,2048,0.168,0.168," for row in CXR14_ROWS]
    root.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    for i, row in enumerate(CXR14_ROWS):
        if row[0] != "00000003_000.png":
            _png(root / (row[0] if flat else f"images_00{1 + i % 2}/images/{row[0]}"))
    (root / "train_val_list.txt").write_text("\n".join(TRAIN_VAL) + "\n")
    (root / "test_list.txt").write_text("\n".join(TEST) + "\n\n")
    return {
        "csv": str(root / "Data_Entry_2017.csv"),
        "image_root": str(root),
        "train_val_list": str(root / "train_val_list.txt"),
        "test_list": str(root / "test_list.txt"),
    }


@pytest.fixture
def cxr14(tmp_path: Path) -> dict[str, Any]:
    return write_cxr14(tmp_path / "cxr14")


def test_cxr14_manifest_fields_labels_and_official_split(cxr14):
    result = build_manifest(_settings("chestxray14", CXR14_LABELS, cxr14))
    table = result.manifest.set_index("image_id")
    assert table.index.tolist() == ["00000001_000", "00000001_001", "00000002_000"]
    first = table.loc["00000001_000"]
    assert (first["patient_id"], first["study_id"], first["sex"], first["age"]) == ("1", "1/0", "male", 58.0)
    assert (first["view"], first["projection"], first["official_split"]) == ("frontal", "PA", "train_val")
    assert first["path"] == str(Path(cxr14["image_root"]) / "images_001/images/00000001_000.png")
    labels = table[[manifest.label_column(n) for n in CXR14_LABELS]]
    assert labels.loc["00000001_000"].tolist() == [0, 1, 1, 0, 0]
    assert labels.loc["00000001_001"].tolist() == [1, 0, 0, 0, 0]
    # "Pleural Thickening" in config reads the file's Pleural_Thickening
    assert labels.loc["00000002_000"].tolist() == [0, 0, 0, 1, 1]
    assert table.loc["00000002_000", "official_split"] == "test"
    assert math.isnan(table.loc["00000002_000", "age"])  # 414: an error of the 2017 file
    assert result.summary == {"ages_above_120_made_missing": 1}


def test_cxr14_bad_rows_are_rejected_with_reasons(cxr14):
    rejected = build_manifest(_settings("chestxray14", CXR14_LABELS, cxr14)).rejected
    reasons = {r.image_id: (r.row, r.stage, r.reason) for r in rejected.itertuples()}
    assert reasons == {
        "00000003_000": (5, "adapter", "image file not found under dataset.chestxray14.image_root"),
        "00000004_000": (
            6,
            "adapter",
            "Finding Labels names 'foo', which is not a ChestX-ray14 finding",
        ),
        "00000005_000": (
            7,
            "adapter",
            "image is in neither dataset.chestxray14.train_val_list nor dataset.chestxray14.test_list",
        ),
    }


def test_cxr14_flat_image_folder_and_no_official_lists(tmp_path):
    settings = write_cxr14(tmp_path, flat=True)
    del settings["train_val_list"], settings["test_list"]
    result = build_manifest(_settings("chestxray14", ["Effusion"], settings))
    assert len(result.manifest) == 4  # without lists, 00000005 is not rejected
    assert result.manifest["official_split"].isna().all()
    assert result.manifest["path"].iloc[0] == str(tmp_path / "00000001_000.png")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"labels": ["Pleural Other"]}, r"dataset.labels \['Pleural Other'\] are not ChestX-ray14 findings"),
        ({"test_list": None}, r"dataset.chestxray14.test_list is not set; the official split needs both"),
        ({"duplicate": True}, r"holds 00000001_000.png twice"),
        ({"both": True}, r"00000002_000.png is in both dataset.chestxray14.train_val_list and"),
        ({"image_root": "/nonexistent"}, r"image_root = '/nonexistent' is not a folder"),
    ],
)
def test_cxr14_config_and_list_errors_name_the_key(cxr14, edit, message):
    labels = edit.pop("labels", CXR14_LABELS)
    if edit.pop("duplicate", False):
        _png(Path(cxr14["image_root"]) / "copy" / "00000001_000.png")
    if edit.pop("both", False):
        Path(cxr14["train_val_list"]).write_text("\n".join([*TRAIN_VAL, *TEST]))
    with pytest.raises(InputError, match=message):
        build_manifest(_settings("chestxray14", labels, cxr14 | edit))


# --- PCam -----------------------------------------------------------------------------------------------

PCAM_SIZES = {"train": 4, "valid": 2, "test": 3}


def write_pcam(root: Path, size: int = 8) -> dict[str, Any]:
    """The six PCam files with ``size`` x ``size`` RGB patches (patch i of a split filled with 10 * i)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in PCAM_SIZES.items():
        patches = np.stack([np.full((size, size, 3), (10 * i, 50, 200), np.uint8) for i in range(n)])
        with h5py.File(root / file_name(split, "x"), "w") as handle:
            handle.create_dataset("x", data=patches)
        with h5py.File(root / file_name(split, "y"), "w") as handle:
            handle.create_dataset("y", data=(np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))
    return {"root": str(root)}


@pytest.fixture
def pcam(tmp_path: Path) -> dict[str, Any]:
    return write_pcam(tmp_path / "pcam")


def test_pcam_manifest_points_into_the_h5_files(pcam):
    result = build_manifest(_settings("pcam", ["Tumor"], pcam))
    table = result.manifest
    assert len(table) == sum(PCAM_SIZES.values()) and result.rejected.empty
    assert table["image_id"].iloc[:2].tolist() == ["train/000000", "train/000001"]
    assert (table["patient_id"] == table["image_id"]).all()
    assert table.groupby("official_split").size().to_dict() == {"test": 3, "train": 4, "val": 2}
    valid = table[table["official_split"] == "val"]
    assert valid["path"].unique().tolist() == [str(Path(pcam["root"]) / file_name("valid", "x"))]
    assert valid["slice_index"].tolist() == [0, 1] and (valid["slice_axis"] == 0).all()
    assert table["label_Tumor"].iloc[:4].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_pcam_patches_are_read_from_the_h5_file_in_colour_or_gray(pcam, tmp_path):
    table = build_manifest(_settings("pcam", ["Tumor"], pcam)).manifest.iloc[[2, 3]]
    for color, mode in (("rgb", "RGB"), ("grayscale", "L")):
        settings = PreprocessSettings(resolution=8, fit="crop", shards=1, color=color)
        kept, rejected = preprocess_rows(table, settings, tmp_path / color, source="split.parquet")
        assert rejected.empty
        with Image.open(kept["image"].iloc[1]) as image:
            assert image.mode == mode and image.size == (8, 8)
            expected = Image.fromarray(np.full((8, 8, 3), (30, 50, 200), np.uint8)).convert(mode)
            assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_pcam_patch_outside_its_file_is_a_rejection_not_a_crash(pcam, tmp_path):
    table = build_manifest(_settings("pcam", ["Tumor"], pcam)).manifest.iloc[[0]]
    table = table.assign(slice_index=pd.array([99], dtype="Int64"))
    settings = PreprocessSettings(resolution=8, fit="crop", shards=1)
    kept, rejected = preprocess_rows(table, settings, tmp_path / "o", source="s")
    assert kept.empty and "image 99 is outside the 4 images" in rejected["reason"].iloc[0]


def _gzipped(root: Path) -> None:
    target = root / file_name("test", "y")
    target.rename(target.with_name(target.name + ".gz"))


def _bad_labels(root: Path) -> None:
    with h5py.File(root / file_name("valid", "y"), "w") as handle:
        handle.create_dataset("y", data=np.array([0, 2], np.uint8).reshape(2, 1, 1, 1))


def _short_labels(root: Path) -> None:
    with h5py.File(root / file_name("train", "y"), "w") as handle:
        handle.create_dataset("y", data=np.zeros((3, 1, 1, 1), np.uint8))


def _wrong_key(root: Path) -> None:
    with h5py.File(root / file_name("train", "x"), "w") as handle:
        handle.create_dataset("images", data=np.zeros((4, 8, 8, 3), np.uint8))


def _not_hdf5(root: Path) -> None:
    (root / file_name("train", "x")).write_bytes(b"\x1f\x8b gzip, not HDF5")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_gzipped, r"has no camelyonpatch_level_2_split_test_y.h5; unpack .*test_y.h5.gz with gunzip"),
        (_bad_labels, r"patch 1 has label 2; PCam labels are 0 \(normal\) or 1 \(tumour\)"),
        (_short_labels, r"has shape \(3, 1, 1, 1\), but camelyonpatch_level_2_split_train_x.h5 holds 4"),
        (_wrong_key, r"has no dataset 'x' \(found \['images'\]\)"),
        (_not_hdf5, r"is not a readable HDF5 file"),
    ],
)
def test_pcam_bad_files_are_clear_errors(pcam, damage, message):
    damage(Path(pcam["root"]))
    with pytest.raises(InputError, match=message):
        build_manifest(_settings("pcam", ["Tumor"], pcam))


def test_pcam_needs_exactly_one_finding(pcam):
    with pytest.raises(InputError, match=r"PCam has one finding .* e.g. dataset.labels: \[Tumor\]"):
        build_manifest(_settings("pcam", ["Tumor", "Normal"], pcam))


# --- the tables each adapter reads ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adapter", "labels", "fixture"), [("chestxray14", ["Edema"], "cxr14"), ("pcam", ["T"], "pcam")]
)
def test_adapter_reads_exactly_the_tables_the_rules_track(adapter, labels, fixture, request, monkeypatch):
    """Every file an adapter opens is one of table_files(), the inputs of rule build_manifest (so editing it
    rebuilds the manifest), and every listed file is read."""
    settings = request.getfixturevalue(fixture)
    opened = tables_opened(monkeypatch, lambda: build_manifest(_settings(adapter, labels, settings)))
    assert opened == {str(Path(p)) for p in table_files(adapter, settings)}
    assert len(opened) == {"chestxray14": 3, "pcam": 6}[adapter]
