import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, make_manifest

from workflow.common.errors import InputError
from workflow.common.manifest import empty_rejected, label_column
from workflow.data.settings import RejectionSettings, SplitSettings
from workflow.data.split import (
    assign_splits,
    check_no_leakage,
    patient_labels,
    predefined_splits,
    split_report,
)
from workflow.data.stage import split_dataset

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_no_patient_in_two_splits(manifest):
    splits = assign_splits(manifest, LABELS, FRACTIONS, seed=1)
    assert set(splits) == {"train", "val", "test"}
    per_patient = pd.DataFrame({"patient_id": manifest["patient_id"], "split": splits})
    assert (per_patient.groupby("patient_id")["split"].nunique() == 1).all()


def test_patient_fractions_within_tolerance(manifest):
    splits = assign_splits(manifest, LABELS, FRACTIONS, seed=1)
    patients = pd.DataFrame({"patient_id": manifest["patient_id"], "split": splits}).drop_duplicates()
    shares = patients["split"].value_counts(normalize=True)
    for name, target in FRACTIONS.items():
        assert abs(shares[name] - target) < 0.01, (name, shares[name])


def test_deterministic_and_independent_of_row_order(manifest):
    first = assign_splits(manifest, LABELS, FRACTIONS, seed=3)
    shuffled = manifest.sample(frac=1.0, random_state=0)
    second = assign_splits(shuffled, LABELS, FRACTIONS, seed=3)
    assert (second.loc[manifest.index] == first).all()
    other_seed = assign_splits(manifest, LABELS, FRACTIONS, seed=4)
    assert (other_seed != first).any()


def test_label_prevalence_is_stratified():
    frame = make_manifest(2000, seed=5)
    splits = assign_splits(frame, LABELS, FRACTIONS, seed=0)
    per_patient = patient_labels(frame.assign(split=splits), LABELS)
    patient_split = frame.assign(split=splits).groupby("patient_id")["split"].first()
    overall = per_patient.mean()
    for name in FRACTIONS:
        part = per_patient[patient_split.loc[per_patient.index] == name].mean()
        # iterative stratification keeps patient-level prevalence within ~1 point of the cohort's
        assert np.all(np.abs(part - overall) < 0.015), (name, (part - overall).round(3).to_dict())


def test_patient_labels_union_of_positives():
    frame = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "patient_id": ["p1", "p1", "p2"],
            label_column("X"): [1.0, np.nan, 0.0],
            label_column("Y"): [0.0, 1.0, np.nan],
        }
    )
    table = patient_labels(frame, ["X", "Y"])
    assert table.loc["p1"].tolist() == [1, 1]
    assert table.loc["p2"].tolist() == [0, 0]


def _patients_per_split(manifest: pd.DataFrame, splits: pd.Series) -> dict[str, int]:
    patients = pd.DataFrame({"patient_id": manifest["patient_id"], "split": splits}).drop_duplicates()
    return patients["split"].value_counts().to_dict()


def test_six_patients_split_four_one_one():
    """Largest remainder: 4.2 / 0.9 / 0.9 patients give 4 / 1 / 1 (6 patients used to be refused)."""
    frame = make_manifest(6, seed=2)
    assert _patients_per_split(frame, assign_splits(frame, LABELS, FRACTIONS, seed=0)) == {
        "train": 4,
        "val": 1,
        "test": 1,
    }


@pytest.mark.parametrize(
    ("n", "counts", "empty"),
    [
        (2, {"train": 2, "val": 0, "test": 0}, ["val", "test"]),
        (3, {"train": 2, "val": 1, "test": 0}, ["test"]),
    ],
)
def test_a_split_that_would_really_be_empty_is_refused_with_the_counts(n, counts, empty):
    message = f"only {n} patients: split.fractions {FRACTIONS} give {counts} patients"
    with pytest.raises(InputError, match=re.escape(message) + f".*split\\(s\\) {re.escape(str(empty))}"):
        assign_splits(make_manifest(n), LABELS, FRACTIONS, seed=0)


def test_a_single_binary_finding_is_stratified():
    """One label (common for CT/MRI) used to stop with iterstrat's "Got 'binary'" traceback."""
    frame = make_manifest(400, seed=3, labels=("Nodule",))
    splits = assign_splits(frame, ["Nodule"], FRACTIONS, seed=0)
    assert _patients_per_split(frame, splits) == {"train": 280, "val": 60, "test": 60}
    per_patient = patient_labels(frame.assign(split=splits), ["Nodule"])
    split_of_patient = splits.groupby(frame["patient_id"]).first()
    prevalence = per_patient["label_Nodule"].groupby(split_of_patient).mean()
    assert prevalence.max() - prevalence.min() < 0.03


def test_a_dataset_without_findings_is_split_by_patient_alone():
    frame = make_manifest(50, seed=4)[["image_id", "patient_id", "path"]]
    first = assign_splits(frame, [], FRACTIONS, seed=7)
    assert _patients_per_split(frame, first) == {"train": 35, "val": 8, "test": 7}
    assert (assign_splits(frame.iloc[::-1], [], FRACTIONS, seed=7).loc[frame.index] == first).all()
    assert (assign_splits(frame, [], FRACTIONS, seed=8) != first).any()


@pytest.mark.parametrize(
    "fractions",
    [
        {"train": 0.8, "val": 0.15, "test": 0.15},
        {"train": 0.7, "val": 0.3},
        {"train": 1.0, "val": 0.0, "test": 0.0},
    ],
)
def test_bad_fractions_are_rejected(manifest, fractions):
    with pytest.raises(InputError, match=r"split\.fractions"):
        assign_splits(manifest, LABELS, fractions, seed=0)


def test_leakage_and_empty_split_are_refused():
    frame = pd.DataFrame({"patient_id": ["p1", "p1", "p2", "p3"], "split": ["train", "test", "val", "test"]})
    with pytest.raises(InputError, match="patient leakage: 1 patient"):
        check_no_leakage(frame, "x.parquet")
    with pytest.raises(InputError, match=r"\['val'\] are empty"):
        check_no_leakage(pd.DataFrame({"patient_id": ["p1", "p2"], "split": ["train", "test"]}), "x")


def test_report_counts_and_prevalence(manifest):
    frame = manifest.assign(split=assign_splits(manifest, LABELS, FRACTIONS, seed=1))
    frame.loc[0, label_column("A")] = np.nan
    report = split_report(frame, LABELS)
    assert sum(report[s]["images"] for s in FRACTIONS) == len(frame)
    assert sum(report[s]["patients"] for s in FRACTIONS) == frame["patient_id"].nunique()
    train = frame[frame["split"] == "train"]
    assert report["train"]["labels"]["B"]["prevalence"] == pytest.approx(train[label_column("B")].mean())
    missing = sum(report[s]["labels"]["A"]["missing"] for s in FRACTIONS)
    assert missing == 1


# --- the dataset's own split (split.predefined) ---------------------------------------------------------


def _official(n_patients: int, seed: int = 0) -> pd.DataFrame:
    """A manifest whose patients have an official split: every 5th test, the rest train_val."""
    frame = make_manifest(n_patients, seed=seed)
    number = frame["patient_id"].str[-5:].astype(int)
    return frame.assign(official_split=np.where(number % 5 == 0, "test", "train_val"))


def test_predefined_keeps_train_val_test_as_given():
    frame = make_manifest(30).assign(official_split=lambda f: np.array(["train", "val", "test"])[f.index % 3])
    frame["patient_id"] = frame["image_id"]  # PCam: every image its own patient
    splits, report = predefined_splits(frame, LABELS, FRACTIONS, seed=0)
    assert (splits == frame["official_split"]).all()
    assert "train_val_divided" not in report


def test_predefined_divides_train_val_by_patient_with_renormalised_fractions():
    """ChestX-ray14: test stays test; train_val's patients go to val at 0.15 / 0.85, stratified, seeded."""
    frame = _official(400)
    splits, report = predefined_splits(frame, LABELS, FRACTIONS, seed=3)
    assert (splits[frame["official_split"] == "test"] == "test").all()
    assert set(splits[frame["official_split"] == "train_val"]) == {"train", "val"}
    pool = frame.loc[frame["official_split"] == "train_val", "patient_id"].nunique()  # 320
    per_split = _patients_per_split(frame, splits)
    assert per_split == {"train": 264, "val": 56, "test": 80}  # 320 * 0.15 / 0.85 = 56.5 -> 56
    assert per_split["val"] + per_split["train"] == pool
    assert report["train_val_divided"]["patients"] == {"train": 264, "val": 56}
    assert report["train_val_divided"]["fractions"]["val"] == pytest.approx(0.15 / 0.85)
    assert report["official_patients"] == {"test": 80, "train_val": 320}
    assert (splits.groupby(frame["patient_id"]).nunique() == 1).all()
    shuffled = frame.sample(frac=1.0, random_state=1)
    assert (predefined_splits(shuffled, LABELS, FRACTIONS, seed=3)[0].loc[frame.index] == splits).all()
    assert (predefined_splits(frame, LABELS, FRACTIONS, seed=4)[0] != splits).any()
    per_patient = patient_labels(frame, LABELS)
    split_of = splits.groupby(frame["patient_id"]).first()
    pooled = per_patient[split_of != "test"]
    val = per_patient[split_of == "val"]
    assert np.all(np.abs(val.mean() - pooled.mean()) < 0.03)  # stratified on the findings


def test_predefined_refuses_a_patient_in_two_official_splits_by_name():
    frame = _official(20)
    row = frame.index[frame["patient_id"] == "patient00003"][0]
    frame.loc[row, "official_split"] = "test"
    image = frame.loc[row, "image_id"]
    with pytest.raises(InputError, match=r"patient 'patient00003' is in more than one official split") as err:
        predefined_splits(frame, LABELS, FRACTIONS, seed=0)
    assert f"'{image}' in test" in str(err.value) and "1 patient(s) would leak" in str(err.value)


@pytest.mark.parametrize(
    ("official", "message"),
    [
        (None, r"split.predefined is true but the manifest has no official split"),
        ("some", r"1 image\(s\) have no official split \(e.g. 'patient00000/study1/view1'\)"),
        ("odd", r"official_split has value\(s\) \['holdout'\]"),
    ],
)
def test_predefined_without_an_official_split_is_refused(official, message):
    frame = _official(20)
    if official is None:
        frame = frame.drop(columns="official_split")
    else:
        frame.loc[0, "official_split"] = None if official == "some" else "holdout"
    with pytest.raises(InputError, match=message):
        predefined_splits(frame, LABELS, FRACTIONS, seed=0)


def test_split_report_says_which_mode(tmp_path):
    frame = _official(40)
    frame.to_parquet(tmp_path / "manifest.parquet")
    empty_rejected().to_parquet(tmp_path / "rejected.parquet")
    checks = RejectionSettings(LABELS, 0.01)
    for predefined in (False, True):
        settings = SplitSettings(FRACTIONS, seed=1, predefined=predefined)
        report = tmp_path / f"{predefined}.json"
        split_dataset(
            str(tmp_path / "manifest.parquet"), str(tmp_path / "rejected.parquet"), settings, checks,
            str(tmp_path / f"{predefined}.parquet"), str(report),
        )  # fmt: skip
        written = json.loads(report.read_text())
        assert written["mode"] == ("predefined" if predefined else "stratified")
        assert ("predefined" in written) == predefined
        test = pd.read_parquet(tmp_path / f"{predefined}.parquet").query("split == 'test'")
        assert (test["official_split"] == "test").all() == predefined


def test_pcam_is_split_by_its_own_slide_disjoint_splits_only():
    """PCam's patches carry no slide ids: a split drawn by patch put patches of one slide in train and test
    (only the docs said to keep PCam's own split)."""
    from configs import validated

    pcam = {"dataset": {"adapter": "pcam", "labels": ["Tumor"], "pcam": {"root": "."}}}
    with pytest.raises(InputError, match=r"split\.predefined: PCam has no patient or slide ids"):
        SplitSettings.of(validated(pcam))
    assert SplitSettings.of(validated(pcam | {"split": {"predefined": True}})).predefined
