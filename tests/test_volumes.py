"""Tests for volume I/O, windowing, slicing and reassembly, and the ``volumes`` dataset adapter."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from configs import tables_opened

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.data.adapters import DatasetSpec, table_files
from workflow.data.adapters.volumes import build
from workflow.data.slicing import (
    assemble_volume,
    load_volume,
    mask_slice,
    render_slice,
    window_bounds,
)

# Left-anterior-superior voxel axes: canonical RAS flips axis 0 and keeps the shape (16, 16, 8).
AFFINE = np.array([[-0.8, 0.0, 0.0, 10.0], [0.0, 0.9, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
SPEC = DatasetSpec(
    labels=("Effusion", "Edema"), uncertain_policy="ones", blank_policy="zeros", tabular=("smoker",)
)
CT = {"modality": "ct", "window": {"mode": "hu", "center": 40, "width": 400}}


def ct_array() -> np.ndarray:
    """16x16x8 int16 volume spanning -1024..1023 HU."""
    return (np.arange(16 * 16 * 8) % 2048 - 1024).astype(np.int16).reshape(16, 16, 8)


def label_array(depth: int = 8) -> np.ndarray:
    """Label volume with a 8x8 blob (fraction 0.25) in slices 2..5."""
    label = np.zeros((16, 16, depth), dtype=np.uint8)
    label[4:12, 4:12, 2:6] = 1
    return label


def save(array: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, AFFINE), path)
    return path


def write_dicom_series(folder: Path, array_zyx: np.ndarray) -> None:
    """Write ``array_zyx`` as a CT DICOM series, one file per slice, LPS identity direction."""
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(array_zyx.astype(np.int16))
    image.SetSpacing((0.7, 0.6, 2.0))
    image.SetOrigin((-10.0, 4.0, 30.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.42"
    for k in range(image.GetDepth()):
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.3.{k + 1}",
            "0010|0020": "p4",
            "0020|000d": f"{uid}.1",
            "0020|000e": f"{uid}.2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.6\\0.7",
            "0018|0050": "2.0",
        }
        plane = image[:, :, k]
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Any]:
    """A table of five volumes: two usable (NIfTI + DICOM) and four that must be rejected."""
    save(ct_array(), tmp_path / "ct1.nii.gz")
    save(label_array(), tmp_path / "ct1_label.nii.gz")
    save(ct_array(), tmp_path / "ct2.nii.gz")
    save(label_array(depth=7), tmp_path / "ct2_label.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"this is not a NIfTI file")
    write_dicom_series(tmp_path / "dicom" / "series1", np.arange(4 * 6 * 5).reshape(4, 6, 5) - 50)
    rows = [
        ("ct1.nii.gz", "p1", "s1", "ct1_label.nii.gz", "F", 63, -1, 1, "yes"),
        ("missing.nii.gz", "p2", "s1", "", "M", 50, 1, 0, "no"),
        ("bad.nii.gz", "p3", "s1", "", "M", 51, 0, 0, "no"),
        ("dicom/series1", "p4", "s9", "", "m", "", "", 1, "no"),
        ("ct2.nii.gz", "p5", "s1", "ct2_label.nii.gz", "F", 40, 1, 1, "yes"),
        ("ct1.nii.gz", "", "s2", "", "F", 40, 1, 1, "yes"),
    ]
    names = ["volume", "patient_id", "study_id", "label_volume", "sex", "age", "Effusion"]
    table = pd.DataFrame(rows, columns=[*names, "edema_code", "smoker"])
    table.to_csv(tmp_path / "volumes.csv", index=False)
    settings = {
        **CT,
        "table": str(tmp_path / "volumes.csv"),
        "label_columns": {"Edema": "edema_code"},
        "tabular": {"smoker": "smoker"},
    }
    return {"root": tmp_path, "settings": settings}


def test_manifest_has_one_row_per_slice(dataset: dict[str, Any]) -> None:
    result = build(dataset["settings"], SPEC)
    table = manifest.normalise(result.manifest, SPEC.labels, SPEC.tabular)
    manifest.validate(table)
    ct1 = table[table["volume_id"] == "ct1"]
    assert list(ct1["slice_index"]) == list(range(8))
    assert list(ct1["image_id"]) == [f"ct1/slice{i:04d}" for i in range(8)]
    assert (ct1["slice_axis"] == 2).all()
    assert (ct1["mask_path"] == str(dataset["root"] / "ct1_label.nii.gz")).all()
    _, affine = load_volume(dataset["root"] / "ct1.nii.gz")
    assert all(np.array_equal(np.array(json.loads(a)), affine) for a in ct1["affine"])
    expected = AFFINE @ np.array([[-1, 0, 0, 15], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(affine, expected, rtol=1e-6)
    assert (ct1["window_low"] == -160.0).all() and (ct1["window_high"] == 240.0).all()
    assert (ct1["volume_shape"] == "[16, 16, 8]").all()
    # Labels are per volume, copied to each slice; -1 becomes 1 under uncertain_policy "ones".
    assert (ct1[manifest.label_column("Effusion")] == 1.0).all()
    assert (ct1[manifest.label_column("Edema")] == 1.0).all()
    assert (ct1["sex"] == "female").all() and (ct1["age"] == 63.0).all()
    assert (ct1[manifest.tabular_column("smoker")] == "yes").all()
    dicom = table[table["volume_id"] == "dicom/series1"]
    assert list(dicom["slice_index"]) == [0, 1, 2, 3]
    assert dicom["mask_path"].isna().all() and (dicom["study_id"] == "s9").all()
    assert (dicom["volume_shape"] == "[5, 6, 4]").all()
    assert (dicom[manifest.label_column("Effusion")] == 0.0).all()  # blank -> 0 (blank_policy)
    assert set(table["volume_id"]) == {"ct1", "dicom/series1"}


def test_rejections_give_reasons(dataset: dict[str, Any]) -> None:
    rejected = build(dataset["settings"], SPEC).rejected
    reasons = dict(zip(rejected["row"], rejected["reason"], strict=True))
    assert set(reasons) == {3, 4, 6, 7}
    assert reasons[3] == "volume file or folder not found"
    assert "could not be read as a NIfTI volume" in reasons[4] and "bad.nii.gz" in reasons[4]
    assert "shape (16, 16, 7)" in reasons[6] and "(16, 16, 8)" in reasons[6]
    assert reasons[7] == "patient id is empty"
    assert (rejected["stage"] == "adapter").all()


def test_non_integer_label_volume_is_rejected(tmp_path: Path) -> None:
    save(ct_array(), tmp_path / "ct.nii")
    save(label_array().astype(np.float32) * 0.5, tmp_path / "label.nii")
    pd.DataFrame({"volume": ["ct.nii"], "patient_id": ["p"], "label_volume": ["label.nii"]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    result = build({**CT, "table": str(tmp_path / "t.csv")}, DatasetSpec(labels=()))
    assert result.manifest.empty
    assert "not integer class ids" in result.rejected["reason"].iloc[0]


def test_min_label_fraction_keeps_labelled_slices(dataset: dict[str, Any]) -> None:
    settings = {**dataset["settings"], "min_label_fraction": 0.2, "slice_step": 1}
    result = build(settings, SPEC)
    assert list(result.manifest["slice_index"]) == [2, 3, 4, 5]
    # The DICOM row has no label volume, which min_label_fraction needs.
    assert "no label volume" in " ".join(result.rejected["reason"])


def test_slice_step_and_axis(dataset: dict[str, Any]) -> None:
    settings = {**dataset["settings"], "slice_axis": 0, "slice_step": 5}
    ct1 = build(settings, SPEC).manifest.query("volume_id == 'ct1'")
    assert list(ct1["slice_index"]) == [0, 5, 10, 15]
    assert (ct1["slice_axis"] == 0).all()


def test_hu_window_maps_window_edges_to_0_and_255() -> None:
    low, high = window_bounds(np.zeros((2, 2, 2)), {"mode": "hu", "center": 40, "width": 400})
    assert (low, high) == (-160.0, 240.0)
    volume = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0]).reshape(5, 1, 1)
    image = render_slice(volume, 0, 2, low, high)
    assert image.dtype == np.uint8
    assert list(np.rot90(image, -1).ravel()) == [0, 0, 128, 255, 255]


def test_percentile_window() -> None:
    volume = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    window = {"mode": "percentile", "low": 0.5, "high": 99.5}
    assert window_bounds(volume, window) == pytest.approx(tuple(np.percentile(volume, [0.5, 99.5])))
    volume[:5] = 0
    nonzero = window_bounds(volume, {**window, "nonzero": True})
    assert nonzero == pytest.approx(tuple(np.percentile(volume[volume != 0], [0.5, 99.5])))
    with pytest.raises(InputError, match="blank"):
        window_bounds(np.ones((3, 3, 3)), window)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_render_assemble_round_trip(tmp_path: Path, axis: int) -> None:
    volume, affine = load_volume(save(ct_array(), tmp_path / "ct.nii.gz"))
    low, high = -160.0, 240.0
    slices = {i: render_slice(volume, i, axis, low, high) for i in range(volume.shape[axis])}
    image = assemble_volume(slices, volume.shape, axis, json.dumps(affine.tolist()))
    windowed = np.rint(np.clip((volume.astype(np.float64) - low) * 255.0 / (high - low), 0, 255))
    assert np.array_equal(np.asarray(image.dataobj), windowed.astype(np.uint8))
    assert np.array_equal(image.affine, affine)
    label, _ = load_volume(save(label_array(), tmp_path / "label.nii.gz"))
    masks = {i: mask_slice(label, i, axis) for i in range(2, 4)}
    rebuilt = np.asarray(assemble_volume(masks, label.shape, axis, affine).dataobj)
    assert rebuilt.sum() == sum(m.sum() for m in masks.values())
    assert np.array_equal(np.take(rebuilt, 3, axis=axis), np.take(label, 3, axis=axis))


@pytest.mark.parametrize("axis", [0, 2])
def test_manifest_rows_alone_reassemble_the_volume(dataset: dict[str, Any], axis: int) -> None:
    """``path``, window, ``slice_*``, ``affine`` and ``volume_shape`` are all it takes to rebuild a volume."""
    result = build({**dataset["settings"], "slice_axis": axis}, SPEC)
    table = manifest.normalise(result.manifest, SPEC.labels, SPEC.tabular)
    for volume_id, rows in table.groupby("volume_id"):
        first = rows.iloc[0]
        volume, affine = load_volume(first["path"])
        images, masks = {}, {}
        for row in rows.itertuples():
            index, row_axis = int(row.slice_index), int(row.slice_axis)
            images[index] = render_slice(volume, index, row_axis, row.window_low, row.window_high)
            if not pd.isna(row.mask_path):
                masks[index] = mask_slice(load_volume(row.mask_path)[0], index, row_axis)
        rebuilt = assemble_volume(images, first["volume_shape"], int(first["slice_axis"]), first["affine"])
        low, high = first["window_low"], first["window_high"]
        windowed = np.rint(np.clip((volume.astype(np.float64) - low) * 255.0 / (high - low), 0, 255))
        assert np.array_equal(np.asarray(rebuilt.dataobj), windowed.astype(np.uint8)), volume_id
        assert np.array_equal(rebuilt.affine, affine)
        if masks:
            label = assemble_volume(masks, first["volume_shape"], axis, first["affine"])
            assert np.array_equal(np.asarray(label.dataobj), load_volume(first["mask_path"])[0])


@pytest.mark.parametrize(
    ("shape", "affine", "message"),
    [
        ("[16, 16]", AFFINE, "three positive whole sizes"),
        ("[16, 16, 8.5]", AFFINE, "three positive whole sizes"),
        ("[16, 16, 0]", AFFINE, "three positive whole sizes"),
        ("16x16x8", AFFINE, "volume shape '16x16x8' is not valid JSON"),
        ("[16, 16, 8]", "[[1, 0], [0, 1]]", "finite 4x4 matrix"),
        ("[16, 16, 8]", "eye(4)", "affine 'eye(4)' is not valid JSON"),
    ],
)
def test_assemble_volume_rejects_bad_shape_and_affine(shape: str, affine: Any, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        assemble_volume({}, shape, 2, affine)


def test_upright_axial_slice_has_anterior_at_top() -> None:
    volume = np.zeros((4, 6, 2))
    volume[:, -1, :] = 1.0  # most anterior row of voxels
    image = render_slice(volume, 0, 2, 0.0, 1.0)
    assert image.shape == (6, 4) and (image[0] == 255).all() and image[1:].sum() == 0


def test_nibabel_and_sitk_readers_agree(tmp_path: Path) -> None:
    path = save(ct_array(), tmp_path / "ct.nii.gz")
    by_nibabel, affine_nib = load_volume(path, reader="nibabel")
    by_sitk, affine_sitk = load_volume(path, reader="sitk")
    assert by_nibabel.dtype == np.float32 and by_nibabel.shape == (16, 16, 8)
    assert np.array_equal(by_nibabel, by_sitk)
    np.testing.assert_allclose(affine_nib, affine_sitk, atol=1e-5)


def test_dicom_series_shape_and_orientation(tmp_path: Path) -> None:
    array = np.arange(4 * 6 * 5).reshape(4, 6, 5) - 50
    write_dicom_series(tmp_path / "series", array)
    volume, affine = load_volume(tmp_path / "series")
    assert volume.shape == (5, 6, 4)
    # DICOM voxel axes point left and posterior (LPS); RAS canonical flips both.
    assert np.array_equal(volume, array.transpose(2, 1, 0)[::-1, ::-1, :])
    np.testing.assert_allclose(np.diag(affine)[:3], [0.7, 0.6, 2.0], atol=1e-4)


def test_load_volume_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothere\.nii"):
        load_volume(tmp_path / "nothere.nii")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        load_volume(tmp_path / "empty")
    with pytest.raises(InputError, match="nibabel cannot read it"):
        load_volume(tmp_path / "empty", reader="nibabel")
    data = save(ct_array(), tmp_path / "ct.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz"):
        load_volume(tmp_path / "cut.nii.gz")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"modality": "pet"}, "dataset.volumes.modality"),
        ({"window": {"mode": "linear"}}, "dataset.volumes.window.mode"),
        ({"window": {"mode": "hu", "width": -1}}, "dataset.volumes.window.width"),
        ({"slice_axis": 3}, "dataset.volumes.slice_axis"),
        ({"slice_step": 0}, "dataset.volumes.slice_step"),
        ({"min_label_fraction": 2}, "dataset.volumes.min_label_fraction"),
        ({"reader": "itk"}, "dataset.volumes.reader"),
        ({"slice_axes": 1}, "dataset.volumes has unknown setting"),
        ({"modality": "mri", "window": {"mode": "hu"}}, "dataset.volumes.window.mode"),
        ({"columns": {"volume": "path_col"}}, "dataset.volumes.columns.volume = 'path_col'"),
        ({"columns": {"volume": None}}, "dataset.volumes.columns.volume is not set"),
        ({"columns": {"patient_id": None}}, "dataset.volumes.columns.patient_id is not set"),
        ({"columns": {"sex": "Sex"}}, "dataset.volumes.columns.sex = 'Sex'"),
        ({"columns": {"path": "volume"}}, "dataset.volumes.columns has unknown key(s) ['path']"),
        ({"columns": ["volume"]}, "dataset.volumes.columns must map"),
        ({"label_columns": {"Edema": "edema"}}, "set dataset.volumes.label_columns.Edema"),
        ({"label_columns": ["Edema"]}, "dataset.volumes.label_columns must map"),
        ({"tabular": {"smoker": "Smoker"}}, "dataset.volumes.tabular.smoker = 'Smoker'"),
    ],
)
def test_bad_settings_name_the_key(dataset: dict[str, Any], change: dict[str, Any], key: str) -> None:
    with pytest.raises(InputError, match=re.escape(key)):
        build({**dataset["settings"], **change}, SPEC)


def test_age_that_is_not_a_number_names_the_row(dataset: dict[str, Any]) -> None:
    table = pd.read_csv(dataset["settings"]["table"]).astype({"age": object})
    table.loc[2, "age"] = "51y"
    table.to_csv(dataset["settings"]["table"], index=False)
    with pytest.raises(InputError, match=r"volumes\.csv' row 4 column 'age' holds '51y'"):
        build(dataset["settings"], SPEC)


def test_volume_id_column_and_repeated_ids(dataset: dict[str, Any]) -> None:
    table = pd.read_csv(dataset["settings"]["table"])
    table["case"] = ["A", "B", "C", "A", "D", "E"]
    table.to_csv(dataset["settings"]["table"], index=False)
    result = build({**dataset["settings"], "columns": {"volume_id": "case"}}, SPEC)
    assert set(result.manifest["volume_id"]) == {"A"}
    assert result.manifest["image_id"].iloc[0] == "A/slice0000"
    reasons = dict(zip(result.rejected["row"], result.rejected["reason"], strict=True))
    assert reasons[5] == (
        "volume id repeats an earlier row; set dataset.volumes.columns.volume_id to a unique column"
    )


def test_reads_exactly_the_table_the_rules_track(dataset: dict[str, Any], monkeypatch) -> None:
    opened = tables_opened(monkeypatch, lambda: build(dataset["settings"], SPEC))
    assert opened == set(table_files("volumes", dataset["settings"])) == {dataset["settings"]["table"]}


def _one_volume(tmp_path: Path, label: np.ndarray, label_affine: np.ndarray) -> dict[str, Any]:
    save(ct_array(), tmp_path / "ct.nii")
    nib.save(nib.Nifti1Image(label, label_affine), tmp_path / "label.nii")
    pd.DataFrame({"volume": ["ct.nii"], "patient_id": ["p"], "label_volume": ["label.nii"]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    return {**CT, "table": str(tmp_path / "t.csv")}


TILTED = AFFINE.copy()
TILTED[:3, :3] = (
    np.array([[1, 0, 0], [0, 0.98, -0.199], [0, 0.199, 0.98]]) @ AFFINE[:3, :3]
)  # tilted 11.5 deg


@pytest.mark.parametrize(
    ("label_affine", "message"),
    [
        (
            AFFINE @ np.diag([1.0, 1.0, 2.0, 1.0]),
            "voxel spacing (0.8, 0.9, 5) mm differs from the image volume's",
        ),
        (TILTED, "orientation"),
        (
            AFFINE + np.array([[0, 0, 0, 4.0]] + [[0, 0, 0, 0]] * 3),
            "origin (2, -5, 3) mm differs from the image volume's (-2, -5, 3) mm",
        ),
    ],
    ids=["spacing", "orientation", "origin"],
)
def test_label_volume_on_another_grid_is_rejected(tmp_path: Path, label_affine: np.ndarray, message: str):
    result = build(_one_volume(tmp_path, label_array(), label_affine), DatasetSpec(labels=()))
    assert result.manifest.empty
    reason = result.rejected["reason"].iloc[0]
    assert (
        message in reason and "label.nii" in reason and "resample it onto the image volume's grid" in reason
    )


def test_label_volume_stored_in_another_orientation_on_the_same_grid_is_accepted(tmp_path: Path) -> None:
    flip = np.array([[-1.0, 0, 0, 15], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # voxel i -> 15 - i
    settings = _one_volume(tmp_path, label_array()[::-1].copy(), AFFINE @ flip)
    result = build(settings, DatasetSpec(labels=(), mask_classes=("background", "organ")))
    assert result.rejected.empty and len(result.manifest) == 8


def test_label_ids_outside_mask_classes_are_rejected(tmp_path: Path) -> None:
    label = label_array()
    label[0, 0, 0] = 5
    result = build(_one_volume(tmp_path, label, AFFINE), DatasetSpec(labels=(), mask_classes=("bg", "organ")))
    reason = result.rejected["reason"].iloc[0]
    assert result.manifest.empty and "label.nii" in reason
    assert "class ids [5] outside dataset.mask_classes ['bg', 'organ'] (ids 0..1)" in reason
