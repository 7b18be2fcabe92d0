"""The built-in phantom dataset: format, determinism, ground truth and counterfactuals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from workflow.common.errors import InputError
from workflow.data import phantom_render, phantoms
from workflow.data.labels import CHEXPERT_LABELS

REPO = Path(__file__).resolve().parents[1]
SMALL = {"n_patients": 8, "image_size": 48, "seed": 3}
CSV_HEADER = [
    "Path",
    "Sex",
    "Age",
    "Frontal/Lateral",
    "AP/PA",
    *CHEXPERT_LABELS,
    "Race",
    "Site",
    "Mask Path",
    "Smoking Status",
    "Pack Years",
]
PATH_RE = re.compile(r"^CheXpert-v1\.0-phantom/train/patient(\d{5})/study([1-9]\d*)/view1_frontal\.png$")


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _load(root: Path, rel: str) -> np.ndarray:
    with Image.open(root / rel) as image:
        assert image.mode == "L"
        return np.asarray(image)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("phantoms")
    summary = phantoms.generate(phantoms.PhantomSettings.from_dict(SMALL), out)
    return out, summary


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_settings_give_byte_identical_files(small, tmp_path):
    out, _ = small
    phantoms.generate(phantoms.PhantomSettings.from_dict(SMALL), tmp_path)
    first, second = _files(out), _files(tmp_path)
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)
    assert not any(Path(name).name.startswith(".") for name in first)  # no temporary files left


def test_patient_does_not_depend_on_cohort_size():
    few = phantoms.PhantomSettings.from_dict({**SMALL, "n_patients": 3})
    many = phantoms.PhantomSettings.from_dict({**SMALL, "n_patients": 50})
    assert phantoms.sample_patient(few, 3) == phantoms.sample_patient(many, 3)
    assert phantoms.sample_patient(few, 3) != phantoms.sample_patient(few, 2)


def test_train_csv_follows_chexpert_format(small):
    out, summary = small
    table = _read(out / phantoms.DATASET / "train.csv")
    assert list(table.columns) == CSV_HEADER
    assert len(table) == summary["counts"]["images"]
    ids = table["Path"].str.extract(PATH_RE)
    assert ids.notna().all().all()
    assert set(ids[0].astype(int)) == set(range(1, SMALL["n_patients"] + 1))
    for _, studies in ids.groupby(0):  # studies are numbered 1..n per patient
        assert sorted(studies[1].astype(int)) == list(range(1, len(studies) + 1))
    assert set(table["Frontal/Lateral"]) == {"Frontal"}
    assert set(table["AP/PA"]) <= {"AP", "PA"}
    assert set(table["Sex"]) <= {"Male", "Female"}
    assert table["Age"].astype(int).between(18, 90).all()
    assert set(table["Site"]) <= {"site_a", "site_b", "site_c"}
    for name in CHEXPERT_LABELS:
        assert set(table[name]) <= {"1.0", "0.0", "-1.0", ""}, name
    for name in ("Lung Lesion", "Edema", "Pneumonia", "Atelectasis", "Pleural Other", "Fracture"):
        assert set(table[name]) == {""}
    assert (table["Mask Path"] == table["Path"].str.replace("/train/", "/masks/")).all()
    for rel, mask_rel in zip(table["Path"], table["Mask Path"], strict=True):
        image, mask = _load(out, rel), _load(out, mask_rel)
        assert image.shape == mask.shape == (SMALL["image_size"],) * 2
        assert image.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2, 3}
        assert {1, 2} <= set(np.unique(mask))  # lungs and heart are always there


def test_truth_and_reported_labels_are_consistent(small):
    out, _ = small
    root = out / phantoms.DATASET
    truth, reported = _read(root / "truth.csv"), _read(root / "train.csv")
    assert list(truth.columns) == ["Path", *phantoms.TRUTH_COLUMNS]
    assert (truth["Path"] == reported["Path"]).all()
    values = truth[list(phantoms.TRUTH_COLUMNS)].astype(int)
    others = values.drop(columns="No Finding")
    assert (values["No Finding"] == (others.sum(axis=1) == 0)).all()
    assert (values["Consolidation"] <= values["Lung Opacity"]).all()
    for name in phantoms.RENDERED:  # positives are reported 1 or -1, negatives 0 or blank
        assert (reported[name].isin(["1.0", "-1.0"]) == (values[name] == 1)).all(), name
    assert ((reported["No Finding"] == "1.0") == (values["No Finding"] == 1)).all()
    consolidation = reported["Consolidation"] == "1.0"
    assert (reported.loc[consolidation, "Lung Opacity"] == "1.0").all()


def test_reported_labels_have_uncertain_and_blank_cells():
    settings = phantoms.PhantomSettings.from_dict({"n_patients": 150, "uncertain_fraction": 0.3})
    cells = [
        study.reported[name]
        for k in range(1, 151)
        for study in phantoms.sample_patient(settings, k).studies
        for name in phantoms.RENDERED
    ]
    assert {"1.0", "0.0", "-1.0", ""} <= set(cells)


def test_counterfactuals_toggle_one_finding_locally(small):
    out, summary = small
    root = out / phantoms.DATASET
    cfs, truth = _read(root / "counterfactuals.csv"), _read(root / "truth.csv").set_index("Path")
    assert list(cfs.columns) == ["Path", "Source Path", "Finding", "Value"]
    assert len(cfs) == summary["counts"]["counterfactuals"] == summary["counts"]["images"]
    assert set(cfs["Finding"]) <= set(phantoms.TOGGLABLE)
    assert cfs["Path"].str.startswith(f"{phantoms.DATASET}/counterfactuals/").all()
    for row in cfs.itertuples(index=False):
        assert int(row.Value) == 1 - int(truth.loc[row[1], row.Finding])
        source, edited = _load(out, row[1]).astype(int), _load(out, row.Path).astype(int)
        changed = np.abs(edited - source) > 0
        assert 0 < changed.mean() < 0.3, (row.Path, changed.mean())
        rows, cols = np.nonzero(changed)
        if row.Finding in ("Cardiomegaly", "Consolidation"):  # one compact region
            assert (np.ptp(rows) + 1) * (np.ptp(cols) + 1) < 0.5 * changed.size
        if row.Finding == "Cardiomegaly":
            brighter = (edited - source)[changed].mean()
            assert brighter > 0 if row.Value == "1" else brighter < 0


def _study(seed: int = 5, size: int = 64):
    settings = phantoms.PhantomSettings.from_dict({"image_size": size, "seed": seed})
    patient = phantoms.sample_patient(settings, 1)
    study = patient.studies[0]
    clean = replace(study.findings, present=frozenset())
    return patient.anatomy, study.pose, clean, phantoms.study_noise(settings, patient, 1)


def test_cardiomegaly_widens_the_heart_only():
    anatomy, pose, clean, noise = _study()
    before, mask_before = phantom_render.render(anatomy, pose, clean, noise)
    after, mask_after = phantom_render.render(
        anatomy, pose, replace(clean, present=frozenset({"Cardiomegaly"})), noise
    )
    assert (mask_after == 2).sum() > 1.3 * (mask_before == 2).sum()
    assert (mask_after == 1).sum() < (mask_before == 1).sum()
    centre = slice(24, 56), slice(20, 60)
    assert after[centre].mean() > before[centre].mean() + 5
    changed = after != before
    assert not changed[:16].any()  # the upper chest is untouched
    assert changed.mean() < 0.15


@pytest.mark.parametrize("finding", ["Pleural Effusion", "Pneumothorax", "Consolidation", "Lung Opacity"])
def test_lung_findings_change_only_the_lungs(finding):
    anatomy, pose, clean, noise = _study()
    before, mask = phantom_render.render(anatomy, pose, clean, noise)
    after, _ = phantom_render.render(anatomy, pose, replace(clean, present=frozenset({finding})), noise)
    changed = after != before
    assert changed.any()
    near_lungs = np.zeros_like(changed)
    rows, cols = np.nonzero(mask == 1)
    near_lungs[rows.min() - 2 : rows.max() + 3, cols.min() - 2 : cols.max() + 3] = True
    assert not (changed & ~near_lungs).any()


def test_support_device_is_a_thin_bright_curve_in_the_mask():
    anatomy, pose, clean, noise = _study()
    before, _ = phantom_render.render(anatomy, pose, clean, noise)
    after, mask = phantom_render.render(
        anatomy, pose, replace(clean, present=frozenset({"Support Devices"})), noise
    )
    device = mask == 3
    assert 0 < device.mean() < 0.05
    assert (after[device].astype(int) - before[device]).mean() > 40


def test_pneumothorax_and_support_devices_stay_visible_at_the_demo_size():
    """At 64 px the pneumothorax used to darken a sliver of lung (the demo's classifier could not see it,
    test AUROC 0.46) and the device line was too thin for the tiny VAE; now a quarter of the lung turns
    dark, and the line stays bright after the blur of a VAE that keeps a quarter of the side (Gaussian,
    1.5 px)."""
    device_contrast = []
    for seed in range(6):
        anatomy, pose, clean, noise = _study(seed=seed)
        before, mask = phantom_render.render(anatomy, pose, clean, noise)
        collapsed, _ = phantom_render.render(
            anatomy, pose, replace(clean, present=frozenset({"Pneumothorax"})), noise
        )
        darker = before.astype(int) - collapsed > 15
        assert (darker & (mask == 1)).sum() > 0.2 * (mask == 1).sum()
        tube, device = phantom_render.render(
            anatomy, pose, replace(clean, present=frozenset({"Support Devices"})), noise
        )
        blurred = ndimage.gaussian_filter(tube.astype(float), 1.5) - ndimage.gaussian_filter(
            before.astype(float), 1.5
        )
        device_contrast.append(blurred[device == 3].mean())
    assert np.mean(device_contrast) > 50


@pytest.mark.parametrize("size", [256, 512])
def test_renders_at_larger_sizes(size):
    anatomy, pose, findings, noise = _study(size=size)
    image, mask = phantom_render.render(
        anatomy, pose, replace(findings, present=frozenset(phantoms.RENDERED)), noise
    )
    assert image.shape == mask.shape == (size, size)
    assert set(np.unique(mask)) == {0, 1, 2, 3}
    lungs, heart = image[mask == 1].mean(), image[mask == 2].mean()
    assert heart > lungs + 30  # dark lungs, bright mediastinum


def test_age_raises_prevalence_of_age_linked_finding():
    settings = phantoms.PhantomSettings.from_dict(
        {"n_patients": 400, "prevalence": {"Pleural Effusion": 0.3}, "age_slope": {"Pleural Effusion": 2.0}}
    )
    ages = {True: [], False: []}
    for k in range(1, 401):
        patient = phantoms.sample_patient(settings, k)
        for study in patient.studies:
            ages["Pleural Effusion" in study.findings.present].append(patient.age)
    assert np.mean(ages[True]) > np.mean(ages[False]) + 10


def test_tabular_fields_have_missing_values():
    settings = phantoms.PhantomSettings.from_dict({"n_patients": 200})
    patients = [phantoms.sample_patient(settings, k) for k in range(1, 201)]
    status = [p.smoking for p in patients]
    assert set(status) == {"never", "former", "current", ""}
    never = [p.pack_years for p in patients if p.smoking == "never"]
    assert set(never) == {""}
    smokers = [p.pack_years for p in patients if p.smoking in ("former", "current")]
    assert "" in smokers
    assert all(float(x) > 0 for x in smokers if x)


def test_summary_matches_files(small):
    out, summary = small
    root = out / phantoms.DATASET
    on_disk = json.loads((root / "phantom.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["seed"] == SMALL["seed"]
    assert on_disk["counts"]["patients"] == SMALL["n_patients"]
    truth = _read(root / "truth.csv")
    for name, value in on_disk["true_prevalence"].items():
        assert value == pytest.approx(truth[name].astype(int).mean(), abs=1e-6)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"n_patient": 5}, "phantom.n_patient"),
        ({"image_size": 16}, "phantom.image_size"),
        ({"n_patients": 2.5}, "phantom.n_patients"),
        ({"seed": True}, "phantom.seed"),
        ({"min_studies": 3, "max_studies": 2}, "phantom.max_studies"),
        ({"prevalence": {"Cardiomegaly": 1.5}}, "phantom.prevalence.Cardiomegaly"),
        ({"prevalence": {"Edema": 0.1}}, "phantom.prevalence"),
        ({"age_slope": "steep"}, "phantom.age_slope"),
        ({"uncertain_fraction": -0.1}, "phantom.uncertain_fraction"),
        ({"races": {}}, "phantom.races"),
        ({"sites": {"site_a": {"noise": 0.1}}}, "phantom.sites.site_a"),
        ({"sites": {"site_a": {"noise": 0.1, "contrast": 0}}}, "phantom.sites.site_a.contrast"),
    ],
)
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(InputError, match=re.escape(key)):
        phantoms.PhantomSettings.from_dict(settings)


def test_partial_mappings_merge_over_defaults():
    settings = phantoms.PhantomSettings.from_dict({"prevalence": {"Pneumothorax": 0.5}})
    assert settings.prevalence["Pneumothorax"] == 0.5
    assert settings.prevalence["Cardiomegaly"] == phantoms.PhantomSettings().prevalence["Cardiomegaly"]


def test_script_writes_dataset_and_reports_bad_settings(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = [sys.executable, "-m", "scripts.data", "make_phantoms"]
    settings = json.dumps({"n_patients": 2, "image_size": 32})
    done = subprocess.run(
        [*script, "--settings", settings, "--out", str(tmp_path)], env=env, cwd=REPO, check=False
    )
    assert done.returncode == 0
    assert (tmp_path / phantoms.DATASET / "train.csv").is_file()
    bad = subprocess.run(
        [*script, "--settings", '{"image_size": 8}', "--out", str(tmp_path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "phantom.image_size" in bad.stderr
