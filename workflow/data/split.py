"""Patient-level, label-stratified train/val/test split.

Images of one patient are never in two splits. Patients are stratified on their findings with the
iterative stratification of Sechidis, Tsoumakas and Vlahavas ("On the Stratification of Multi-Label Data",
ECML PKDD 2011), as implemented by the ``iterative-stratification`` package: a patient's label vector is
the union (``max``) of the positive findings over all of their images, uncertain or missing counted as
absent. Two stratified shuffle splits (test off the whole cohort, then val off the rest) give the three
splits; the result depends only on the set of patients, their labels and the seed, not on row order.

Patients per split are the fractions' quotas rounded by the largest-remainder method, so six patients at
70/15/15 give 4/1/1; a split is refused only when it would really receive no patient. A single finding (a
binary label, as in most CT and MRI studies) is stratified as the two columns "positive" and "negative"; a
dataset without findings is split by patient alone, in a seeded random order.

With ``split.predefined`` the dataset's own split (the manifest's ``official_split``, set by adapters that
know one: ChestX-ray14's lists, PCam's files) is kept instead (:func:`predefined_splits`). A patient in two
official splits is refused by name. Images whose official split is ``train_val`` (ChestX-ray14 publishes
train_val and test only) are divided into train and val by patient, with the stratification above, seeded
by ``split.seed``, and the fractions re-normalised: ``val / (train + val)`` of the train_val patients (at
70/15/15, 15/85 = 17.6 %) go to val, rounded by largest remainder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from workflow.common.errors import InputError
from workflow.common.manifest import label_column

SPLITS: tuple[str, ...] = ("train", "val", "test")
TRAIN_VAL = "train_val"
"""An ``official_split`` value: train or val, divided here (:func:`predefined_splits`)."""


def patient_labels(manifest: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """One row per patient (sorted by id): 1 where any image of the patient is positive for a finding."""
    columns = [label_column(name) for name in labels]
    positive = (manifest[columns].fillna(0.0) == 1.0).astype(np.int8)
    positive.index = manifest["patient_id"].to_numpy()
    return positive.groupby(level=0, sort=True).max()


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if sorted(fractions) != sorted(SPLITS):
        raise InputError(f"split.fractions must name exactly {list(SPLITS)}; got {sorted(fractions)}")
    if any(f <= 0 for f in fractions.values()) or not np.isclose(sum(fractions.values()), 1.0):
        raise InputError(f"split.fractions must be positive and sum to 1; got {dict(fractions)}")


def patient_counts(n: int, fractions: Mapping[str, float], of: str = "") -> dict[str, int]:
    """Patients per split: the quotas ``fraction * n`` rounded down, the patients left over going one each to
    the largest remainders (Hamilton's method; ties in the order train, val, test).

    Args:
        n: patients to divide.
        fractions: split -> fraction (summing to 1) for all three splits (``split.fractions``) or some.
        of: what the patients are, for the message (e.g. " of official split train_val").

    Raises:
        InputError: when a split would receive no patient, with the counts the fractions give.
    """
    names = [name for name in SPLITS if name in fractions]
    quotas = {name: fractions[name] * n for name in names}
    counts = {name: int(np.floor(q)) for name, q in quotas.items()}
    left = n - sum(counts.values())
    for name in sorted(names, key=lambda s: counts[s] - quotas[s])[:left]:
        counts[name] += 1
    empty = [name for name in names if counts[name] == 0]
    if empty:
        raise InputError(
            f"only {n} patients{of}: split.fractions {dict(fractions)} give {counts} patients (largest "
            f"remainder), so split(s) {empty} would be empty; add patients or raise their fractions"
        )
    return counts


def _indicator(per_patient: pd.DataFrame) -> np.ndarray | None:
    """The label matrix iterative stratification takes (two or more 0/1 columns): a single finding becomes
    "positive" and "negative"; None when there is no finding to stratify on."""
    y = per_patient.to_numpy()
    if y.shape[1] == 0:
        return None
    return np.column_stack([y, 1 - y]) if y.shape[1] == 1 else y


def _holdout(y: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions kept and held out (``size`` of them), stratified on the label matrix ``y``."""
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=size, random_state=seed)
    keep, hold = next(splitter.split(np.zeros(len(y)), y))
    return np.sort(keep), np.sort(hold)


def assign_splits(
    manifest: pd.DataFrame, labels: Sequence[str], fractions: Mapping[str, float], seed: int
) -> pd.Series:
    """Assign every image to train, val or test by patient, stratified by findings.

    Args:
        manifest: normalised manifest (see :mod:`workflow.common.manifest`).
        labels: findings to stratify on (none: split by patient alone).
        fractions: ``{"train": .7, "val": .15, "test": .15}``; fractions of patients.
        seed: ``split.seed`` from config.

    Returns:
        The split name per manifest row, aligned with ``manifest.index``.

    Raises:
        InputError: fractions are invalid or a split would receive no patient.
    """
    _check_fractions(fractions)
    per_patient = patient_labels(manifest, labels)
    n = len(per_patient)
    counts = patient_counts(n, fractions)
    y = _indicator(per_patient)
    if y is None:
        order = np.random.default_rng(seed).permutation(n)
        test, val = np.sort(order[: counts["test"]]), np.sort(order[counts["test"] : n - counts["train"]])
    else:
        rest, test = _holdout(y, counts["test"], seed)
        _, val_pos = _holdout(y[rest], counts["val"], seed + 1)
        val = rest[val_pos]
    names = np.full(n, "train", dtype=object)
    names[test] = "test"
    names[val] = "val"
    by_patient = pd.Series(names, index=per_patient.index)
    return pd.Series(by_patient.loc[manifest["patient_id"]].to_numpy(), index=manifest.index, name="split")


def _drawn(per_patient: pd.DataFrame, size: int, seed: int) -> np.ndarray:
    """Positions of ``size`` patients drawn from ``per_patient``: stratified on their findings, or in a seeded
    random order when there are none."""
    y = _indicator(per_patient)
    if y is None:
        return np.sort(np.random.default_rng(seed).permutation(len(per_patient))[:size])
    return _holdout(y, size, seed)[1]


def predefined_splits(
    manifest: pd.DataFrame, labels: Sequence[str], fractions: Mapping[str, float], seed: int
) -> tuple[pd.Series, dict[str, Any]]:
    """The dataset's own split (``official_split``), with ``train_val`` divided into train and val by patient.

    Args:
        manifest: normalised manifest with ``official_split`` (train, val, test or train_val).
        labels: findings to stratify the train_val division on.
        fractions: ``split.fractions``; train and val re-normalised divide train_val.
        seed: ``split.seed``, seeds the division.

    Returns:
        The split name per row (aligned with ``manifest.index``) and what was done, for the split report.

    Raises:
        InputError: no or some rows lack an official split, a value is unknown, or a patient is in two
            official splits (named, with an image of each).
    """
    _check_fractions(fractions)
    official = (
        manifest["official_split"] if "official_split" in manifest else pd.Series(pd.NA, manifest.index)
    )
    if official.isna().all():
        raise InputError(
            "split.predefined is true but the manifest has no official split (column official_split): this "
            "dataset.adapter gives none (chestxray14 needs train_val_list and test_list); set "
            "split.predefined: false for a patient-level stratified split"
        )
    if official.isna().any():
        first = manifest.loc[official.isna(), "image_id"].iloc[0]
        raise InputError(
            f"split.predefined: {int(official.isna().sum())} image(s) have no official split (e.g. '{first}')"
        )
    unknown = sorted(set(official) - {*SPLITS, TRAIN_VAL})
    if unknown:
        raise InputError(f"official_split has value(s) {unknown}; allowed: {[*SPLITS, TRAIN_VAL]}")
    per_patient = pd.DataFrame(
        {"patient_id": manifest["patient_id"], "split": official, "image": manifest["image_id"]}
    )
    spread = per_patient.groupby("patient_id")["split"].nunique()
    if (spread > 1).any():
        patient = spread.index[spread > 1][0]
        images = per_patient[per_patient["patient_id"] == patient].drop_duplicates("split")
        shown = ", ".join(f"'{r.image}' in {r.split}" for r in images.itertuples())
        raise InputError(
            f"split.predefined: patient '{patient}' is in more than one official split ({shown}); "
            f"{int((spread > 1).sum())} patient(s) would leak across splits. Fix the official lists or set "
            "split.predefined: false for a patient-level split"
        )
    names = official.astype(object).copy()
    report: dict[str, Any] = {
        "official_patients": per_patient.drop_duplicates("patient_id")["split"]
        .value_counts()
        .sort_index()
        .to_dict()
    }
    pool = (official == TRAIN_VAL).to_numpy()
    if pool.any():
        within = {"train": fractions["train"], "val": fractions["val"]}
        within = {name: value / sum(within.values()) for name, value in within.items()}
        patients = patient_labels(manifest.loc[pool], labels)
        of = f" of official split {TRAIN_VAL}"
        counts = patient_counts(len(patients), within, of)
        val = patients.index[_drawn(patients, counts["val"], seed)]
        names[pool] = np.where(manifest.loc[pool, "patient_id"].isin(val), "val", "train")
        report["train_val_divided"] = {"fractions": within, "patients": counts, "seed": seed}
    return pd.Series(names.to_numpy(), index=manifest.index, name="split"), report


def check_no_leakage(frame: pd.DataFrame, source: str) -> None:
    """Raise if any patient appears in more than one split, or a split is empty.

    Args:
        frame: table with ``patient_id`` and ``split`` columns.
        source: file name for the message.
    """
    per_patient = frame.groupby("patient_id")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        raise InputError(
            f"{source}: patient leakage: {len(leaked)} patient(s) are in more than one split "
            f"(e.g. '{leaked.index[0]}'); refusing to continue. Rebuild the split from the manifest."
        )
    empty = [name for name in SPLITS if not (frame["split"] == name).any()]
    if empty:
        raise InputError(f"{source}: split(s) {empty} are empty; add data or change split.fractions")


def split_report(frame: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
    """Counts and label prevalence per split.

    Prevalence is the fraction of positives among images whose label is known (NaN excluded); ``missing``
    counts the images whose label is NaN under the uncertain-label policy.
    """
    report: dict[str, Any] = {}
    for name in SPLITS:
        part = frame[frame["split"] == name]
        findings = {}
        for label in labels:
            values = part[label_column(label)]
            known = values.dropna()
            findings[label] = {
                "positive": int((known == 1.0).sum()),
                "prevalence": float(known.mean()) if len(known) else None,
                "missing": int(values.isna().sum()),
            }
        report[name] = {
            "patients": int(part["patient_id"].nunique()),
            "images": len(part),
            "image_fraction": len(part) / max(len(frame), 1),
            "labels": findings,
        }
    return report
