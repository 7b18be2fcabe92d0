"""MIMIC-CXR-JPG v2 adapter (Johnson et al., PhysioNet 2019).

Layout (file names as PhysioNet ships them; ``.csv`` or ``.csv.gz``)::

    mimic-cxr-2.0.0-metadata.csv   dicom_id, subject_id, study_id, ViewPosition, Rows, Columns, ...
    mimic-cxr-2.0.0-chexpert.csv   subject_id, study_id, then the 14 CheXpert findings (1, 0, -1, blank)
    <image_root>/files/p10/p10000032/s50414267/<dicom_id>.jpg

Images are listed by the metadata file and joined to the labels on ``(subject_id, study_id)``; the image
folder is ``p`` + the first two digits of the subject id, then ``p<subject_id>`` and ``s<study_id>``.
MIMIC-CXR itself has no demographics: ``demographics_csv`` can name a per-subject table such as MIMIC-IV's
``patients.csv`` (``subject_id``, ``gender``, ``anchor_age``). Note that ``anchor_age`` is the age in the
patient's anchor year, not at the time of the study.

Every metadata row either becomes a manifest row or a line of the rejection table (row numbers refer to the
metadata file): stage ``adapter`` for empty ids, a study without a label row, a missing image file or a
repeated ``dicom_id``; stage ``filter`` for a ``ViewPosition`` outside ``views``, which is a choice rather
than an error and so does not count towards ``dataset.max_rejected_fraction``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError, where
from workflow.common.manifest import tabular_column
from workflow.data.adapters.base import (
    VIEW_POSITIONS,
    AdapterResult,
    DatasetSpec,
    checked_columns,
    duplicate_mask,
    field_columns,
    missing_file_mask,
    one_row_per,
    read_table,
    setting,
    split_rejections,
    text_column,
)
from workflow.data.labels import apply_label_policy

ADAPTER = "mimic-cxr"
KEY = f"dataset.{ADAPTER}"
KEYS = ["subject_id", "study_id"]
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
DEMOGRAPHICS_COLUMNS: dict[str, str | None] = {
    "subject_id": "subject_id",
    "sex": "gender",
    "age": "anchor_age",
    "race": None,
}
"""Defaults of ``dataset.mimic-cxr.demographics_columns`` (MIMIC-IV ``patients.csv`` names)."""


def build(settings: Mapping[str, Any], spec: DatasetSpec) -> AdapterResult:
    """Build the manifest from MIMIC-CXR-JPG's metadata and CheXpert-label files.

    Settings (``dataset.mimic-cxr``):
        metadata_csv: ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (required).
        labels_csv: ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` (required).
        image_root: folder holding ``files/`` (required).
        demographics_csv: optional per-subject table (e.g. MIMIC-IV ``patients.csv``).
        demographics_columns: ``subject_id``/``sex``/``age``/``race`` -> column of ``demographics_csv``;
            defaults :data:`DEMOGRAPHICS_COLUMNS`, null leaves a field out.
        views: ``ViewPosition`` values to keep (default: all; case-insensitive); other views are listed in
            the rejection table with stage ``filter``.
        tabular: manifest field -> column of ``metadata_csv`` or ``demographics_csv``, into ``tab_<field>``.
    """
    metadata_path = str(setting(settings, ADAPTER, "metadata_csv"))
    labels_path = str(setting(settings, ADAPTER, "labels_csv"))
    image_root = Path(setting(settings, ADAPTER, "image_root"))
    metadata = read_table(metadata_path, f"{KEY}.metadata_csv", METADATA_COLUMNS)
    demographics = _demographics(settings)
    tabular = checked_columns(
        settings.get("tabular"),
        {*metadata.columns, *(demographics.columns if demographics is not None else ())},
        key=f"{KEY}.tabular",
        source=f"{KEY}.metadata_csv or {KEY}.demographics_csv",
    )

    ids = {column: text_column(metadata[column]) for column in ("subject_id", "study_id", "dicom_id")}
    position = text_column(metadata["ViewPosition"])
    frame = pd.DataFrame(
        {
            "image_id": "p" + ids["subject_id"] + "/s" + ids["study_id"] + "/" + ids["dicom_id"],
            "patient_id": ids["subject_id"],
            "study_id": ids["study_id"],
            "path": _image_paths(image_root, ids["subject_id"], ids["study_id"], ids["dicom_id"]),
            "view": position.str.upper().map(VIEW_POSITIONS).astype("string"),
            "projection": position,
        }
    )
    for field, column in tabular.items():
        if column in metadata:
            frame[tabular_column(field)] = metadata[column]
    frame = frame.merge(_labels(labels_path, spec), how="left", on=["patient_id", "study_id"])
    if demographics is not None:
        extra = {field: column for field, column in tabular.items() if column not in metadata}
        frame = frame.merge(_per_subject(demographics, settings, extra), how="left", on="patient_id")

    checks = {f"{column} is empty": ids[column].isna().to_numpy() for column in ids}
    checks[f"study has no label row in {KEY}.labels_csv"] = ~frame["_labelled"].eq(True).to_numpy()
    checks[f"image file not found under {KEY}.image_root"] = missing_file_mask(frame["path"])
    usable = ~np.logical_or.reduce(list(checks.values()))
    checks["dicom_id repeats an earlier row of the metadata file"] = duplicate_mask(frame["image_id"], usable)
    kept, rejected = split_rejections(
        frame.drop(columns="_labelled"),
        checks,
        source=metadata_path,
        filters=_view_filter(settings.get("views"), position),
    )
    return AdapterResult(kept, rejected)


def _image_paths(root: Path, subject: pd.Series, study: pd.Series, dicom: pd.Series) -> pd.Series:
    """``<root>/files/p10/p10000032/s50414267/<dicom_id>.jpg`` (missing where an id is missing)."""
    relative = "files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + dicom + ".jpg"
    return relative.map(lambda p: p if pd.isna(p) else str(root / p))


def _labels(path: str, spec: DatasetSpec) -> pd.DataFrame:
    """One row per ``(subject_id, study_id)`` with the label columns after the policy."""
    raw = read_table(path, f"{KEY}.labels_csv", [*KEYS, *spec.labels])
    coded = apply_label_policy(
        raw, spec.labels, uncertain=spec.uncertain_policy, blank=spec.blank_policy, source=path
    )
    keys = pd.DataFrame(
        {"patient_id": text_column(raw["subject_id"]), "study_id": text_column(raw["study_id"])}
    )
    repeated = keys.duplicated() & keys.notna().all(axis=1)
    if repeated.any():
        pos = int(np.flatnonzero(repeated.to_numpy())[0])
        raise InputError(
            f"{where(path, pos + 2)} repeats subject_id {keys.iloc[pos, 0]} study_id "
            f"{keys.iloc[pos, 1]}; {KEY}.labels_csv must have one row per study"
        )
    table = pd.concat([keys, coded], axis=1).dropna(subset=["patient_id", "study_id"])
    return table.assign(_labelled=True)


def _demographics(settings: Mapping[str, Any]) -> pd.DataFrame | None:
    """The raw ``demographics_csv`` table, or ``None`` when the setting is absent."""
    path = settings.get("demographics_csv")
    return None if not path else read_table(path, f"{KEY}.demographics_csv")


def _per_subject(
    table: pd.DataFrame, settings: Mapping[str, Any], tabular: Mapping[str, str]
) -> pd.DataFrame:
    """Demographic fields keyed by ``patient_id``, one row per subject.

    Rows that repeat a subject with identical values (e.g. several admissions) collapse into one;
    differing values raise an :class:`InputError`.
    """
    path = settings["demographics_csv"]
    configured = {**DEMOGRAPHICS_COLUMNS, **(settings.get("demographics_columns") or {})}
    unknown = sorted(set(configured) - set(DEMOGRAPHICS_COLUMNS))
    if unknown:
        raise InputError(
            f"{KEY}.demographics_columns has unknown key(s) {unknown}; allowed: {list(DEMOGRAPHICS_COLUMNS)}"
        )
    columns = checked_columns(
        configured, table.columns, key=f"{KEY}.demographics_columns", source=where(path)
    )
    if "subject_id" not in columns:
        raise InputError(
            f"{KEY}.demographics_columns.subject_id is null; name the column of {where(path)} "
            "holding MIMIC's subject_id"
        )
    part = pd.DataFrame({"patient_id": text_column(table[columns["subject_id"]])})
    part = part.join(field_columns(table, columns, source=path))
    for field, column in tabular.items():
        part[tabular_column(field)] = table[column]
    return one_row_per(
        part, "patient_id", source=path, setting=f"{KEY}.demographics_csv", called="subject_id"
    )


def _view_filter(views: list[str] | None, position: pd.Series) -> dict[str, np.ndarray]:
    """Reason -> mask for images whose ``ViewPosition`` is not in ``views`` (none when unset)."""
    if views is None:
        return {}
    if not views:
        raise InputError(f"{KEY}.views is empty, which would exclude every image; leave it unset")
    keep = {str(v).strip().upper() for v in views}
    shown = position.fillna("(blank)")
    excluded = ~position.str.upper().isin(keep).fillna(False).to_numpy(dtype=bool)
    return {
        f"view {value} excluded by {KEY}.views": excluded & (shown == value).to_numpy(dtype=bool)
        for value in shown[excluded].unique()
    }
