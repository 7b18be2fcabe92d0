"""CheXpert adapter (Irvin et al., AAAI 2019): ``train.csv`` / ``valid.csv`` plus an image root.

CheXpert rows look like ``CheXpert-v1.0/train/patient00042/study1/view1_frontal.jpg, Female, 68, Frontal,
AP, <14 labels>``; paths are relative to the folder that holds ``CheXpert-v1.0``. The patient id is parsed
from ``Path`` (``patient00042``), which is what a patient-level split needs. Columns beyond CheXpert's own
(race, site, a mask path, tabular fields) can be mapped through ``extra_columns`` and ``tabular``; the
built-in phantom dataset uses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from workflow.common.errors import InputError, where
from workflow.common.manifest import tabular_column
from workflow.data.adapters.base import (
    AdapterResult,
    DatasetSpec,
    checked_columns,
    field_columns,
    missing_file_mask,
    read_table,
    resolve,
    setting,
    split_rejections,
    text_column,
    without_extension,
)
from workflow.data.labels import apply_label_policy

KEY = "dataset.chexpert"
_PATIENT = r"(patient\d+)"
_STUDY = r"(study\d+)"
_REQUIRED = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
_FIELDS = {"sex": "Sex", "age": "Age", "view": "Frontal/Lateral"}
"""Manifest field -> CheXpert's own column."""
EXTRA_KEYS: tuple[str, ...] = ("race", "site", "mask")
"""Keys of ``dataset.chexpert.extra_columns``."""


def build(settings: Mapping[str, Any], spec: DatasetSpec) -> AdapterResult:
    """Build the manifest from one or more CheXpert CSVs (settings: ``dataset.chexpert``).

    Settings:
        csv: a CSV path or a list of them (e.g. ``train.csv`` and ``valid.csv``).
        image_root: folder that ``Path`` is relative to.
        frontal_only: keep frontal views only; lateral rows are listed as rejected with that reason.
        extra_columns: optional ``{race, site, mask}`` -> CSV column.
        tabular: optional manifest field -> CSV column.
    """
    csv = setting(settings, "chexpert", "csv")
    csvs = csv if isinstance(csv, list) else [csv]
    parts = [_from_csv(str(path), settings, spec) for path in csvs]
    return AdapterResult(
        pd.concat([p.manifest for p in parts], ignore_index=True),
        pd.concat([p.rejected for p in parts], ignore_index=True),
    )


def _from_csv(path: str, settings: Mapping[str, Any], spec: DatasetSpec) -> AdapterResult:
    image_root = setting(settings, "chexpert", "image_root")
    raw = read_table(path, f"{KEY}.csv", [*_REQUIRED, *spec.labels])
    extra = checked_columns(
        settings.get("extra_columns"), raw.columns, key=f"{KEY}.extra_columns", source=where(path)
    )
    unknown = sorted(set(extra) - set(EXTRA_KEYS))
    if unknown:
        raise InputError(f"{KEY}.extra_columns has unknown key(s) {unknown}; allowed: {list(EXTRA_KEYS)}")
    tabular = checked_columns(settings.get("tabular"), raw.columns, key=f"{KEY}.tabular", source=where(path))
    rel = text_column(raw["Path"])
    frame = pd.DataFrame(
        {
            "image_id": without_extension(rel),
            "patient_id": rel.str.extract(_PATIENT, expand=False),
            "study_id": rel.str.extract(_STUDY, expand=False),
            "path": resolve(image_root, rel),
            "projection": text_column(raw["AP/PA"]),
        }
    )
    frame["study_id"] = frame["patient_id"] + "/" + frame["study_id"]
    frame = frame.join(field_columns(raw, {**_FIELDS, **extra}, source=path))
    if "mask" in extra:
        frame["mask_path"] = resolve(image_root, text_column(raw[extra["mask"]]))
    for field, column in tabular.items():
        frame[tabular_column(field)] = raw[column]
    labels = apply_label_policy(
        raw, spec.labels, uncertain=spec.uncertain_policy, blank=spec.blank_policy, source=path
    )
    frame = pd.concat([frame, labels], axis=1)
    checks = {
        "Path has no 'patientNNNNN' part, so the patient id is unknown": frame["patient_id"]
        .isna()
        .to_numpy(),
        "image file not found": missing_file_mask(frame["path"]),
    }
    if "mask_path" in frame:
        checks["mask file not found"] = missing_file_mask(frame["mask_path"])
    filters = {}
    if settings.get("frontal_only", False):
        filters[f"lateral view excluded by {KEY}.frontal_only"] = (
            frame["view"].fillna("").to_numpy() != "frontal"
        )
    kept, rejected = split_rejections(frame, checks, source=path, filters=filters)
    return AdapterResult(kept, rejected)
