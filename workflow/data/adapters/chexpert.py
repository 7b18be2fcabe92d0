"""CheXpert adapter (Irvin et al., AAAI 2019): ``train.csv`` / ``valid.csv`` plus an image root.

CheXpert rows look like ``CheXpert-v1.0/train/patient00042/study1/view1_frontal.jpg, Female, 68, Frontal,
AP, <14 labels>``; paths are relative to the folder that holds ``CheXpert-v1.0``. The patient id is parsed
from ``Path`` (``patient00042``), which is what a patient-level split needs. Columns beyond CheXpert's own
(race, site, a mask path, tabular fields) can be mapped through ``extra_columns`` and ``tabular``; the
built-in phantom dataset uses them.

Race and ethnicity are not in CheXpert's CSVs: Stanford ships them separately, one row per patient, in
``CHEXPERT DEMO.xlsx`` (columns ``PATIENT`` = ``patient00042``, ``GENDER``, ``AGE_AT_CXR``, ``PRIMARY_RACE``,
``ETHNICITY``). ``demographics_csv`` joins it by patient, as the LoRA-fairness study does for its race
subgroups: ``PRIMARY_RACE``'s many spellings ("White, non-Hispanic", "Black or African American", "Asian -
Historical Conv", "Race and Ethnicity Unknown", ...) become the groups of ``race_groups``
(:func:`~workflow.data.adapters.base.group_values`), ``ETHNICITY`` is kept as written. Sex and age stay those
of the CSV row (per image), not the file's. Images of a patient without a demographics row keep race and
ethnicity missing and are never dropped; the manifest's metadata counts them (``summary``).
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
    group_values,
    missing_file_mask,
    one_row_per,
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
DEMOGRAPHICS_PATIENT = "PATIENT"
DEMOGRAPHICS_RACE = "PRIMARY_RACE"
DEMOGRAPHICS_ETHNICITY = "ETHNICITY"
"""Columns of CheXpert's demographics file that are read (``ETHNICITY`` only when present)."""
RACE_GROUPS: dict[str, list[str]] = {"white": ["white"], "black": ["black"], "asian": ["asian"]}
RACE_OTHER = "other"
RACE_UNKNOWN: tuple[str, ...] = ("unknown", "refused", "declined", "unavailable", "not available")
"""Defaults of ``race_groups``, ``race_other`` and ``race_unknown``: the LoRA-fairness groups white, black,
asian and other; "Unknown", "Patient Refused", "Race and Ethnicity Unknown" are missing."""


def build(settings: Mapping[str, Any], spec: DatasetSpec) -> AdapterResult:
    """Build the manifest from one or more CheXpert CSVs (settings: ``dataset.chexpert``).

    Settings:
        csv: a CSV path or a list of them (e.g. ``train.csv`` and ``valid.csv``).
        image_root: folder that ``Path`` is relative to.
        frontal_only: keep frontal views only; lateral rows are listed as rejected with that reason.
        extra_columns: optional ``{race, site, mask}`` -> CSV column.
        tabular: optional manifest field -> CSV column.
        demographics_csv: optional ``CHEXPERT DEMO.xlsx`` (or the same table as CSV), joined by patient.
        race_groups, race_other, race_unknown: how ``PRIMARY_RACE`` becomes groups
            (:func:`~workflow.data.adapters.base.group_values`; defaults :data:`RACE_GROUPS`,
            :data:`RACE_OTHER`, :data:`RACE_UNKNOWN`).
    """
    csv = setting(settings, "chexpert", "csv")
    csvs = csv if isinstance(csv, list) else [csv]
    parts = [_from_csv(str(path), settings, spec) for path in csvs]
    manifest = pd.concat([p.manifest for p in parts], ignore_index=True)
    summary = {}
    if settings.get("demographics_csv"):
        manifest, summary = _join_demographics(manifest, settings)
    return AdapterResult(manifest, pd.concat([p.rejected for p in parts], ignore_index=True), summary)


def _join_demographics(
    frame: pd.DataFrame, settings: Mapping[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``frame`` with race (grouped) and ethnicity from ``demographics_csv``, and what the join counted.

    Raises:
        InputError: ``extra_columns.race`` is set too (two sources of race), the file lacks ``PATIENT`` or
            ``PRIMARY_RACE``, gives one patient two different rows, or matches no patient at all.
    """
    path = str(settings["demographics_csv"])
    key = f"{KEY}.demographics_csv"
    if (settings.get("extra_columns") or {}).get("race"):
        raise InputError(
            f"{KEY}.extra_columns.race and {key} both give race; keep one of them (set the other to null)"
        )
    raw = read_table(path, key, [DEMOGRAPHICS_PATIENT, DEMOGRAPHICS_RACE])
    race = group_values(
        raw[DEMOGRAPHICS_RACE],
        settings.get("race_groups") or RACE_GROUPS,
        other=settings.get("race_other", RACE_OTHER),
        unknown=settings.get("race_unknown", RACE_UNKNOWN),
    )
    ethnicity = raw.get(DEMOGRAPHICS_ETHNICITY, pd.Series(pd.NA, index=raw.index, dtype="string"))
    table = pd.DataFrame(
        {
            "patient_id": text_column(raw[DEMOGRAPHICS_PATIENT]),
            "race": race,
            "ethnicity": text_column(ethnicity),
            "_listed": True,
        }
    )
    table = one_row_per(table, "patient_id", source=path, setting=key, called=DEMOGRAPHICS_PATIENT)
    joined = frame.drop(columns=["race", "ethnicity"], errors="ignore").merge(
        table, how="left", on="patient_id"
    )
    listed = joined.pop("_listed").eq(True).to_numpy()
    if len(joined) and not listed.any():
        raise InputError(
            f"{where(path)} (from {key}): no {DEMOGRAPHICS_PATIENT} matches a patient id of the CSVs (e.g. "
            f"'{joined['patient_id'].iloc[0]}' from Path); point {key} at CheXpert's demographics file"
        )
    summary = {
        "file": path,
        "images": len(joined),
        "images_without_demographics_row": int((~listed).sum()),
        "patients_without_demographics_row": int(joined.loc[~listed, "patient_id"].nunique()),
        "images_per_race_group": joined["race"].fillna("(missing)").value_counts().sort_index().to_dict(),
        "race_group_of_value": dict(
            sorted(
                zip(
                    text_column(raw[DEMOGRAPHICS_RACE]).fillna("(blank)"),
                    race.fillna("(missing)"),
                    strict=True,
                )
            )
        ),
    }
    return joined, {"demographics": summary}


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
