"""What every dataset adapter shares: the adapter interface (:class:`DatasetSpec` in, :class:`AdapterResult`
out) and the helpers for settings, reading tables, mapping columns and checking files."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError, where
from workflow.common.manifest import rejected


@dataclass(frozen=True)
class DatasetSpec:
    """Settings common to every adapter (``dataset.*`` in config.yaml); ``mask_classes`` empty: mask ids are
    not checked against ``dataset.mask_classes`` here."""

    labels: tuple[str, ...]
    uncertain_policy: str = "zeros"
    blank_policy: str = "zeros"
    tabular: tuple[str, ...] = field(default_factory=tuple)
    mask_classes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class AdapterResult:
    """A normalised manifest, the rows that were rejected (with reasons) and what the adapter counted on
    the way (``summary``, e.g. images without a demographics row; kept in the manifest's metadata)."""

    manifest: pd.DataFrame
    rejected: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


Adapter = Callable[[Mapping[str, Any], DatasetSpec], AdapterResult]


_SEX = {"m": "male", "male": "male", "f": "female", "female": "female"}
_EXTENSION = r"\.[^./\\]+$"
_EXCEL = (".xlsx", ".xlsm")
TEXT_FIELDS: tuple[str, ...] = ("study_id", "race", "site")
"""Manifest fields copied from a table column as trimmed text (see :func:`text_column`)."""
VIEW_POSITIONS: dict[str, str] = {"PA": "frontal", "AP": "frontal", "LATERAL": "lateral", "LL": "lateral"}
"""DICOM ``ViewPosition`` (MIMIC-CXR, ChestX-ray14's ``View Position``) -> manifest ``view``; other positions
(``AP AXIAL``, ``LAO``...) leave it missing."""


def setting(settings: Mapping[str, Any], adapter: str, name: str) -> Any:
    """Return a required adapter setting or raise an :class:`InputError` naming its config key."""
    value = settings.get(name)
    if value is None or value == "":
        raise InputError(f"dataset.{adapter}.{name} is not set; add it to config.yaml")
    return value


def checked_columns(
    mapping: Mapping[str, str | None] | None, available: Collection[str], *, key: str, source: str
) -> dict[str, str]:
    """Drop null entries of a ``name -> column`` setting and check that every column exists.

    Args:
        mapping: the setting (e.g. ``dataset.csv.columns``); ``None`` means empty.
        available: the columns of the table(s) the setting refers to.
        key: config key of the setting, quoted as ``<key>.<name>`` in errors.
        source: the file(s) the columns come from, quoted in errors.

    Raises:
        InputError: the setting is not a mapping, or names a column that ``available`` lacks.
    """
    if mapping is not None and not isinstance(mapping, Mapping):
        raise InputError(f"{key} must map names to column names, got {type(mapping).__name__}")
    chosen = {name: column for name, column in (mapping or {}).items() if column is not None}
    for name, column in chosen.items():
        if column not in available:
            raise InputError(
                f"{key}.{name} = '{column}': {source} has no such column; "
                f"found {sorted(map(str, available))[:20]}"
            )
    return chosen


def text_column(values: pd.Series) -> pd.Series:
    """Identifiers and paths as trimmed strings; blank becomes missing and ``12.0`` becomes ``12``.

    Pandas reads an integer id column with a blank cell as float, so whole floats are written without
    their ``.0`` to keep ids stable whether or not the column has blanks.
    """
    if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
        values = values.astype("Int64")
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def without_extension(paths: pd.Series) -> pd.Series:
    """Paths without their file extension (``images/a.png`` -> ``images/a``), the default image id."""
    return paths.str.replace(_EXTENSION, "", regex=True)


def duplicate_mask(ids: pd.Series, usable: np.ndarray) -> np.ndarray:
    """True for rows whose id repeats that of an earlier usable row (only usable rows are compared)."""
    positions = np.flatnonzero(usable)
    out = np.zeros(len(ids), dtype=bool)
    out[positions[ids.iloc[positions].duplicated().to_numpy()]] = True
    return out


def read_table(path: str | os.PathLike[str], key: str, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV (or ``.csv.gz``, or an Excel ``.xlsx`` sheet) with errors that name the config key.

    Args:
        path: file to read; ``.xlsx``/``.xlsm`` files are read with openpyxl (first sheet), anything else as
            CSV.
        key: config key that names the file (quoted in errors, e.g. ``dataset.chexpert.csv``).
        required: columns that must be present.
    """
    if not Path(path).is_file():
        raise InputError(f"{key} = '{path}': file not found; set {key} in config.yaml to an existing CSV")
    try:
        if str(path).lower().endswith(_EXCEL):
            frame = pd.read_excel(path, engine="openpyxl")
        else:
            frame = pd.read_csv(path, low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{where(path)} (from {key}) is not a readable CSV: {err}") from err
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise InputError(f"{where(path)} (from {key}) is not a readable Excel file: {err}") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(
            f"{where(path)} (from {key}) lacks column(s) {missing}; found {list(frame.columns)[:20]}"
        )
    return frame


def resolve(root: str | os.PathLike[str], relative: pd.Series) -> pd.Series:
    """Join relative paths onto ``root``; absolute paths are kept."""
    base = Path(root)
    return relative.map(lambda p: p if pd.isna(p) else str(p if os.path.isabs(p) else base / p))


def missing_file_mask(paths: pd.Series) -> np.ndarray:
    """Boolean array: True where a non-missing path does not exist on disk."""
    return np.array([not pd.isna(p) and not os.path.exists(p) for p in paths], dtype=bool)


def normalise_sex(values: pd.Series) -> pd.Series:
    """Map M/F/Male/Female (any case) to ``male``/``female``; anything else becomes missing."""
    return values.map(lambda v: _SEX.get(str(v).strip().lower(), pd.NA) if not pd.isna(v) else pd.NA)


def parse_age(values: pd.Series, source: object, row_offset: int = 2) -> pd.Series:
    """Ages in years as float64; blank cells become missing.

    Args:
        values: the age column as read.
        source: the file it was read from, quoted in errors.
        row_offset: added to a cell's 0-based position to give the row or line number users see.

    Raises:
        InputError: a non-blank cell is not a number; the error names the file, row and column.
    """
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna() & (values.astype(str).str.strip() != "")
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"{where(source, pos + row_offset, values.name)} holds {values.iloc[pos]!r}, which is not an "
            "age in years; write a number or leave the cell blank"
        )
    return numbers.astype("float64")


def field_columns(
    table: pd.DataFrame, columns: Mapping[str, str], *, source: object, row_offset: int = 2
) -> pd.DataFrame:
    """Manifest fields read straight from table columns, each normalised the same way in every adapter.

    ``study_id``, ``race`` and ``site`` become trimmed text (:func:`text_column`), ``sex`` goes through
    :func:`normalise_sex`, ``age`` through :func:`parse_age` and ``view`` is lower-cased text. Fields of
    ``columns`` not in that list (paths, ids) are left to the caller.

    Args:
        table: the rows as read.
        columns: manifest field -> column of ``table`` (columns already checked to exist).
        source: the file ``table`` was read from, quoted in errors.
        row_offset: added to a row's 0-based position to give the row or line number users see.
    """
    frame = pd.DataFrame(index=table.index)
    for name in TEXT_FIELDS:
        if name in columns:
            frame[name] = text_column(table[columns[name]])
    if "sex" in columns:
        frame["sex"] = normalise_sex(table[columns["sex"]])
    if "age" in columns:
        frame["age"] = parse_age(table[columns["age"]], source, row_offset)
    if "view" in columns:
        frame["view"] = text_column(table[columns["view"]]).str.lower()
    return frame


def one_row_per(
    table: pd.DataFrame, key: str, *, source: object, setting: str, called: str | None = None
) -> pd.DataFrame:
    """``table`` with one row per ``key`` value: rows without a key are dropped, rows repeating another
    row exactly (e.g. several admissions of one patient) collapse into one.

    Raises:
        InputError: two rows give the same key different values; the message names the key (as the file
            calls it, ``called``) and its value, the file and the config key ``setting`` that names it.
    """
    called = called or key
    part = table.dropna(subset=[key]).drop_duplicates()
    repeated = part[key].duplicated()
    if repeated.any():
        value = part.loc[repeated, key].iloc[0]
        raise InputError(
            f"{where(source)} has rows with different values for {called} {value}; {setting} needs one row "
            f"per {called}"
        )
    return part


def group_values(
    values: pd.Series, groups: Mapping[str, Sequence[str]], *, other: str | None, unknown: Sequence[str]
) -> pd.Series:
    """Many spellings of a category (e.g. CheXpert's ``PRIMARY_RACE``) mapped to a few groups.

    A value is missing when it is blank or contains one of the ``unknown`` words; otherwise it belongs to
    the first group (in order) one of whose words it contains, and to ``other`` when it contains none
    (missing when ``other`` is None). Words are matched case-insensitively as substrings, so ``white``
    groups ``White``, ``White, non-Hispanic`` and ``White or Caucasian`` together.
    """
    lowered = {name: [w.lower() for w in words] for name, words in groups.items()}
    stop = [w.lower() for w in unknown]

    def group(value: object) -> object:
        if pd.isna(value) or not str(value).strip():
            return pd.NA
        text = str(value).lower()
        if any(word in text for word in stop):
            return pd.NA
        found = next((name for name, words in lowered.items() if any(w in text for w in words)), other)
        return pd.NA if found is None else found

    return values.map(group).astype("string")


def split_rejections(
    frame: pd.DataFrame,
    checks: Mapping[str, np.ndarray],
    *,
    source: str,
    filters: Mapping[str, np.ndarray] | None = None,
    row_offset: int = 2,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove rows that fail a check or match a filter and return ``(kept, rejected)``.

    Invalid rows (``checks``) are recorded with stage ``adapter`` and count towards
    ``dataset.max_rejected_fraction``; rows excluded on purpose by a config setting (``filters``) are
    recorded with stage ``filter`` and do not. Either way, nothing disappears without a line saying why.

    Args:
        frame: candidate manifest rows (positional index = row in ``source`` minus ``row_offset``).
        checks: reason -> boolean array, True where the row is invalid for that reason.
        source: file the rows came from, recorded in the rejection table.
        filters: reason -> boolean array, True where a config setting excludes the row.
        row_offset: converts the 0-based position into the row number a spreadsheet shows.
    """
    stages = np.full(len(frame), "", dtype=object)
    reasons = np.full(len(frame), "", dtype=object)
    for stage, table in (("adapter", checks), ("filter", filters or {})):
        for reason, mask in table.items():
            fresh = np.asarray(mask, dtype=bool) & (stages == "")
            stages[fresh] = stage
            reasons[fresh] = reason
    ids = frame["image_id"].astype("string") if "image_id" in frame else pd.Series(pd.NA, index=frame.index)
    parts = []
    for stage in ("adapter", "filter"):
        positions = np.flatnonzero(stages == stage)
        parts.append(
            rejected(
                stage,
                source,
                (positions + row_offset).tolist(),
                [None if pd.isna(v) else str(v) for v in ids.iloc[positions]],
                reasons[positions].tolist(),
            )
        )
    failed = stages != ""
    return frame.loc[~failed].reset_index(drop=True), pd.concat(parts, ignore_index=True)
