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


def patient_counts(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Patients per split: the quotas ``fraction * n`` rounded down, the patients left over going one each to
    the largest remainders (Hamilton's method; ties in the order train, val, test).

    Raises:
        InputError: when a split would receive no patient, with the counts the fractions give.
    """
    quotas = {name: fractions[name] * n for name in SPLITS}
    counts = {name: int(np.floor(q)) for name, q in quotas.items()}
    left = n - sum(counts.values())
    for name in sorted(SPLITS, key=lambda s: counts[s] - quotas[s])[:left]:
        counts[name] += 1
    empty = [name for name in SPLITS if counts[name] == 0]
    if empty:
        raise InputError(
            f"only {n} patients: split.fractions {dict(fractions)} give {counts} patients (largest "
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
