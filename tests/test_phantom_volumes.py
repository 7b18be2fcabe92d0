"""The 3D CT phantoms: files, determinism, true counterfactuals, and the volumes adapter reading them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from configs import dataset_settings
from dataset_layouts import LAYOUTS
from scipy import ndimage

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.data import phantom_volumes, phantoms, stage
from workflow.data.adapters import DatasetSpec, build_manifest
from workflow.data.adapters.volumes import build
from workflow.data.phantom_render import MASK_CLASSES

SMALL = {"n_patients": 8, "seed": 3, "volumes": 4, "volume_size": 16}
CT = {"modality": "ct", "window": {"mode": "hu", "center": -300, "width": 1400}}
CLASSES = list(MASK_CLASSES)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return LAYOUTS["volumes"](tmp_path_factory.mktemp("volumes"), SMALL)


def _array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def test_volumes_labels_and_table(layout: dict[str, str]) -> None:
    root, table = Path(layout["root"]), pd.read_csv(layout["table"], dtype=str, keep_default_na=False)
    assert list(table.columns) == list(phantom_volumes.TABLE_COLUMNS)
    assert list(table["patient_id"]) == [f"patient{k:05d}" for k in range(1, 5)]
    for row in table.to_dict("records"):
        patient = phantoms.sample_patient(
            phantoms.PhantomSettings.from_dict(SMALL), int(row["patient_id"][7:])
        )
        assert (row["sex"], row["age"], row["smoking_status"]) == (
            patient.sex,
            str(patient.age),
            patient.smoking,
        )
        image, affine = _array(root / row["volume"])
        label, label_affine = _array(root / row["label_volume"])
        assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == label.shape == (16,) * 3
        assert np.array_equal(affine, label_affine) and nib.aff2axcodes(affine) == ("R", "A", "S")
        assert np.allclose(nib.affines.voxel_sizes(affine), np.asarray(phantom_volumes.FIELD_OF_VIEW_MM) / 16)
        assert {1, 2} <= set(np.unique(label)) <= set(MASK_CLASSES.values())
        assert image[label == 1].mean() < -600 < 0 < image[label == 2].mean()  # air-filled lungs, heart
        assert (row["Support Devices"] == "1.0") == (3 in label)


def test_same_settings_give_byte_identical_files(layout: dict[str, str], tmp_path: Path) -> None:
    stage.make_phantom_volumes(phantoms.PhantomSettings.from_dict(SMALL), str(tmp_path))
    first, second = Path(layout["root"]), tmp_path / phantom_volumes.DATASET
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


def test_counterfactual_rows_switch_one_field(layout: dict[str, str]) -> None:
    root = Path(layout["root"])
    sources = pd.read_csv(layout["table"], dtype=str, keep_default_na=False).set_index("volume")
    cfs = pd.read_csv(root / "counterfactuals.csv", dtype=str, keep_default_na=False)
    assert len(cfs) == SMALL["volumes"] and set(cfs["field"]) <= set(phantom_volumes.COUNTERFACTUAL_FIELDS)
    for cf in cfs.to_dict("records"):
        source = sources.loc[cf["source_volume"]]
        changed = {k for k in source.index if k != "label_volume" and source[k] != cf[k]}
        assert changed - {"No Finding", "Lung Opacity"} == {cf["field"]}  # truth: Consolidation is an opacity
        image, _ = _array(root / cf["volume"])
        assert not np.array_equal(image, _array(root / cf["source_volume"])[0])


def _patient(number: int = 2) -> tuple[phantoms.Patient, phantom_volumes.Clinical, np.ndarray]:
    settings = phantoms.PhantomSettings.from_dict(SMALL)
    patient = phantoms.sample_patient(settings, number)
    clinical = phantom_volumes.Clinical("never", patient.anatomy.bone)
    return patient, clinical, phantom_volumes.volume_noise(settings, number, patient.site)


@pytest.mark.parametrize(
    ("switch", "region"),
    [
        ("smoking", "lungs"),
        ("age", "bone"),
        ("Consolidation", "lungs"),
        ("Pleural Effusion", "lungs"),
        ("Pneumothorax", "lungs"),
        ("Cardiomegaly", "heart"),
        ("Support Devices", "devices"),
    ],
)
def test_counterfactual_changes_only_its_region(switch: str, region: str) -> None:
    """Same patient and noise: a switched field or finding changes the voxels where it lies, nothing else."""
    patient, clinical, noise = _patient()
    findings = replace(patient.studies[0].findings, present=frozenset())
    image, label = phantom_volumes.render_volume(patient.anatomy, findings, clinical, noise)
    if switch == "smoking":
        changed = (findings, replace(clinical, smoking="current"))
    elif switch == "age":
        changed = (findings, replace(clinical, bone=clinical.bone - 10 * phantom_volumes.BONE_PER_YEAR))
    else:
        changed = (replace(findings, present=frozenset({switch})), clinical)
    image2, label2 = phantom_volumes.render_volume(patient.anatomy, *changed, noise)
    change = np.abs(image2.astype(int) - image)
    assert change.any()
    if region == "bone":  # bone darkens (spine, ribs), not the lungs or heart
        assert (image2 <= image).all()
        inside = label == 0
    else:
        inside = ndimage.binary_dilation((label2 == MASK_CLASSES[region]) | (label == MASK_CLASSES[region]))
    assert change[inside].sum() > 0.95 * change.sum()  # the rest: partial-volume voxels at the edges
    assert np.array_equal(label, label2) == (region in ("lungs", "bone"))


def test_volumes_adapter_reads_the_phantoms(layout: dict[str, str]) -> None:
    section = {**CT, **layout, "tabular": {"smoking_status": "smoking_status", "pack_years": "pack_years"}}
    result = build_manifest(
        dataset_settings(
            {"adapter": "volumes", "labels": ["Cardiomegaly", "Support Devices"], "volumes": section}
            | {"mask_classes": CLASSES, "uncertain_policy": "zeros", "blank_policy": "zeros"}
        )
    )
    table = result.manifest
    assert result.rejected.empty and len(table) == SMALL["volumes"] * SMALL["volume_size"]
    assert set(table["volume_id"]) == {f"images/patient{k:05d}" for k in range(1, 5)}
    assert set(table["sex"]) <= {"female", "male"} and table["mask_path"].notna().all()
    truth = pd.read_csv(layout["table"]).set_index("patient_id")
    for patient, rows in table.groupby("patient_id"):
        assert (rows[manifest.label_column("Cardiomegaly")] == truth.loc[patient, "Cardiomegaly"]).all()
        assert (rows["volume_shape"] == "[16, 16, 16]").all()


def test_build_manifest_checks_labels_against_dataset_mask_classes(layout: dict[str, str]) -> None:
    section = {**CT, **layout}
    dataset = {
        "adapter": "volumes",
        "labels": ["Cardiomegaly"],
        "volumes": section,
        "uncertain_policy": "zeros",
    }
    result = build_manifest(
        dataset_settings(dataset | {"mask_classes": CLASSES[:3], "blank_policy": "zeros"})
    )
    assert list(result.rejected["image_id"]) == ["images/patient00001"]  # the one with a support device
    assert "class ids [3] outside dataset.mask_classes" in result.rejected["reason"].iloc[0]


def test_phantom_labels_outside_mask_classes_are_rejected(layout: dict[str, str]) -> None:
    spec = DatasetSpec(labels=("Cardiomegaly",), mask_classes=("background", "lungs"))
    result = build({**CT, **layout}, spec)
    assert result.manifest.empty and len(result.rejected) == SMALL["volumes"]
    reason = result.rejected["reason"].iloc[0]
    assert (
        "labels/patient00001.nii" in reason and "class ids [2" in reason and "dataset.mask_classes" in reason
    )


@pytest.mark.parametrize(("key", "value"), [("volumes", 0), ("volume_size", 8), ("volume_size", 2.5)])
def test_bad_volume_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(InputError, match=f"phantom.{key}"):
        phantoms.PhantomSettings.from_dict({key: value})
