"""Generic CSV adapter: any table with one row per image and configurable column names.

Layout: one CSV file (``dataset.csv.csv``) whose rows name an image file relative to ``image_root``
(default: the CSV's folder), for example::

    file,subject,sex,age,Cardiomegaly,Edema
    images/a.png,P001,F,63,1,-1
    images/b.png,P002,M,,0,

``dataset.csv.columns`` maps manifest fields to CSV columns (``path`` and ``patient_id`` are required; the
others may be null), ``label_columns`` maps finding names to CSV columns (default: the finding name itself)
and ``tabular`` maps manifest fields to CSV columns copied as they are into ``tab_<field>``.

This module also holds the column-mapping logic shared with the image-folder adapter
(:func:`frame_from_columns`) and, for its per-volume table, the volumes adapter (:func:`mapped_rows` and
:func:`row_checks`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError, where
from workflow.common.manifest import tabular_column
from workflow.data.adapters.base import (
    AdapterResult,
    DatasetSpec,
    checked_columns,
    duplicate_mask,
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

COLUMN_KEYS: tuple[str, ...] = (
    "path",
    "patient_id",
    "study_id",
    "mask",
    "sex",
    "age",
    "race",
    "site",
    "view",
    "image_id",
)
"""Keys of ``dataset.<adapter>.columns``: manifest fields that can be read from a table column."""


def build(settings: Mapping[str, Any], spec: DatasetSpec) -> AdapterResult:
    """Build the manifest from one CSV (settings: ``dataset.csv``).

    Settings:
        csv: the CSV file (required).
        image_root: folder the ``path`` (and ``mask``) column is relative to; default: the CSV's folder.
        columns: manifest field -> CSV column (keys :data:`COLUMN_KEYS`); ``path`` and ``patient_id``
            required, the rest optional; ``image_id`` defaults to the path without its extension, ``sex``
            goes through ``normalise_sex``, ``age`` must be a number (or blank) and ``view`` is
            lower-cased.
        label_columns: finding name -> CSV column; default: the finding name.
        tabular: manifest field -> CSV column, copied into ``tab_<field>``.
    """
    path = setting(settings, "csv", "csv")
    table = read_table(path, "dataset.csv.csv")
    root = settings.get("image_root") or Path(path).parent
    return frame_from_columns(table, settings, spec, adapter="csv", source=str(path), root=root, row_offset=2)


def frame_from_columns(
    table: pd.DataFrame,
    settings: Mapping[str, Any],
    spec: DatasetSpec,
    *,
    adapter: str,
    source: str,
    root: str | Path,
    row_offset: int,
    defaults: Mapping[str, str] | None = None,
) -> AdapterResult:
    """Turn a table with one row per image into manifest rows using ``columns``-style settings.

    The rows are mapped by :func:`mapped_rows` (which documents the arguments) with the CSV adapter's
    ``columns`` keys, and rows with an empty path, image id or patient id, a missing image or mask file or
    an image id that repeats an earlier usable row are rejected (:func:`row_checks`).

    Raises:
        InputError: a configured column is missing, or ``path`` / ``patient_id`` is not configured.
    """
    frame = mapped_rows(
        table,
        settings,
        spec,
        adapter=adapter,
        source=source,
        root=root,
        row_offset=row_offset,
        defaults=defaults,
    )
    checks = row_checks(frame, id_key=f"dataset.{adapter}.columns.image_id")
    kept, rejected = split_rejections(frame, checks, source=source, row_offset=row_offset)
    return AdapterResult(kept, rejected)


def mapped_rows(
    table: pd.DataFrame,
    settings: Mapping[str, Any],
    spec: DatasetSpec,
    *,
    adapter: str,
    source: str,
    root: str | Path,
    row_offset: int,
    defaults: Mapping[str, str] | None = None,
    keys: Mapping[str, str] | None = None,
    image_id: Callable[[pd.Series], pd.Series] = without_extension,
) -> pd.DataFrame:
    """Candidate manifest rows, one per table row, built from ``columns``-style settings; nothing rejected.

    The result holds ``image_id``, ``patient_id`` and ``path``, every other configured field
    (``mask_path`` for ``mask``), ``tab_<field>`` for ``tabular`` and the label columns after the
    uncertain-label policy.

    Args:
        table: the rows, with a 0-based ``RangeIndex``.
        settings: the adapter's settings (``columns``, ``label_columns``, ``tabular``).
        spec: dataset-wide settings (labels and their policies).
        adapter: adapter name, used for config keys in errors (``dataset.<adapter>.columns.<key>``).
        source: the file the table was read from, quoted in errors.
        root: folder that relative image and mask paths are joined onto.
        row_offset: added to a row's 0-based position to give the row or line number users see.
        defaults: ``columns`` entries used when the setting does not name them.
        keys: the keys allowed in ``columns``, each mapped to the field of :data:`COLUMN_KEYS` it fills;
            default: :data:`COLUMN_KEYS` as they are. Errors name the adapter's own keys.
        image_id: derives the image id from the (relative) ``path`` text when ``image_id`` is not mapped.

    Raises:
        InputError: a setting is malformed, a configured column is missing, or ``path`` / ``patient_id``
            is not configured.
    """
    key = f"dataset.{adapter}"
    keys = dict(keys or {name: name for name in COLUMN_KEYS})
    given = settings.get("columns") or {}
    if not isinstance(given, Mapping):
        raise InputError(f"{key}.columns must map manifest fields to column names")
    configured = {**(defaults or {}), **given}
    unknown = sorted(set(configured) - set(keys))
    if unknown:
        raise InputError(f"{key}.columns has unknown key(s) {unknown}; allowed: {list(keys)}")
    named = checked_columns(configured, table.columns, key=f"{key}.columns", source=where(source))
    columns = {keys[name]: column for name, column in named.items()}
    name_of = {field: name for name, field in keys.items()}
    if "path" not in columns:
        raise InputError(
            f"{key}.columns.{name_of['path']} is not set; name the column holding the file paths"
        )
    if "patient_id" not in columns:
        raise InputError(
            f"{key}.columns.patient_id is not set: without a patient id the images cannot be split by "
            f"patient, so one patient's images could leak between train and test. Add a field holding "
            f"the patient id to {where(source)} and set {key}.columns.patient_id to its name (if every "
            "image comes from a different patient, copy the image id into that field)"
        )
    label_columns = settings.get("label_columns") or {}
    if not isinstance(label_columns, Mapping):
        raise InputError(f"{key}.label_columns must map finding names to column names")
    label_map = {name: label_columns.get(name, name) for name in spec.labels}
    for name, column in label_map.items():
        if column not in table:
            raise InputError(
                f"{where(source)} has no column '{column}' for finding '{name}'; set "
                f"{key}.label_columns.{name} to the column holding it, or remove it from dataset.labels"
            )
    tabular = checked_columns(
        settings.get("tabular"), table.columns, key=f"{key}.tabular", source=where(source)
    )

    relative = text_column(table[columns["path"]])
    frame = pd.DataFrame(
        {
            "image_id": text_column(table[columns["image_id"]])
            if "image_id" in columns
            else image_id(relative),
            "patient_id": text_column(table[columns["patient_id"]]),
            "path": resolve(root, relative),
        },
        index=table.index,
    )
    if "mask" in columns:
        frame["mask_path"] = resolve(root, text_column(table[columns["mask"]]))
    frame = frame.join(field_columns(table, columns, source=source, row_offset=row_offset))
    for field, column in tabular.items():
        frame[tabular_column(field)] = table[column]
    raw = pd.DataFrame({name: table[column] for name, column in label_map.items()}, index=table.index)
    labels = apply_label_policy(
        raw,
        spec.labels,
        uncertain=spec.uncertain_policy,
        blank=spec.blank_policy,
        source=source,
        row_offset=row_offset,
    )
    return pd.concat([frame, labels], axis=1)


def row_checks(
    frame: pd.DataFrame,
    *,
    id_key: str,
    item: str = "image",
    files: str = "image file",
    masks: str = "mask file",
) -> dict[str, np.ndarray]:
    """Reason -> rows that cannot become manifest rows, for :func:`split_rejections`, first reason first.

    Checks an empty path, image id or patient id, a missing file or mask file and an image id that repeats
    an earlier usable row.

    Args:
        frame: candidate rows from :func:`mapped_rows`.
        id_key: config key that sets the id column, suggested when ids repeat.
        item: what a row describes, in reasons (``image``, ``volume``).
        files: what ``path`` names, in the reason ``<files> not found``.
        masks: what ``mask_path`` names, in the reason ``<masks> not found``.
    """
    checks = {
        f"{item} path is empty": frame["path"].isna().to_numpy(),
        f"{item} id is empty": frame["image_id"].isna().to_numpy(),
        "patient id is empty": frame["patient_id"].isna().to_numpy(),
        f"{files} not found": missing_file_mask(frame["path"]),
    }
    if "mask_path" in frame:
        checks[f"{masks} not found"] = missing_file_mask(frame["mask_path"])
    usable = ~np.logical_or.reduce(list(checks.values()))
    checks[f"{item} id repeats an earlier row; set {id_key} to a unique column"] = duplicate_mask(
        frame["image_id"], usable
    )
    return checks
