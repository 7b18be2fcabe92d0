import re

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, make_manifest

from workflow.common.errors import InputError
from workflow.common.manifest import label_column
from workflow.data.split import assign_splits, check_no_leakage, patient_labels, split_report

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
