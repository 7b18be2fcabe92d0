"""The normalised image manifest: one schema that every dataset adapter produces.

A manifest is a parquet table with one row per 2D image (or per slice of a volume). Every later stage
(split, preprocessing, prompts, training, evaluation) reads this schema and nothing else, so moving a study
to another dataset means writing (or configuring) an adapter, not touching the stages.

Columns (``None``/NaN where a dataset lacks the field):

=================  ========  ==========================================================================
column             dtype     meaning
=================  ========  ==========================================================================
image_id           string    unique, stable id of the image or slice (e.g. ``patient00042/study1/view1``)
patient_id         string    patient the image belongs to; splits never separate a patient's images
study_id           string    study (visit) within the patient
path               string    source file: a 2D image, a NIfTI volume, a DICOM series folder, or an HDF5
                             stack of 2D images (``.h5``: dataset ``x``, N x H x W [x 3] uint8, PCam's layout)
mask_path          string    integer segmentation mask (2D image or label volume), optional
view               string    ``frontal`` / ``lateral`` (chest X-ray), optional
projection         string    ``AP`` / ``PA`` / ``LL`` ... (chest X-ray), optional
sex                string    ``female`` / ``male``, optional
age                float64   age in years, optional
race               string    race as given by the dataset, or its group (``race_groups``), optional
ethnicity          string    ethnicity as given by the dataset (e.g. CheXpert's ``ETHNICITY``), optional
site               string    acquisition site or scanner, optional
volume_id          string    volume the slice comes from (volumes only)
slice_index        Int64     index of the slice along ``slice_axis`` (volumes), or of the image in an HDF5
                             stack (axis 0)
slice_axis         Int64     array axis the slice was taken along (volumes; 0 for an HDF5 stack)
affine             string    JSON 4x4 voxel-to-world affine of the volume (volumes only)
volume_shape       string    JSON shape of the canonical volume, to reassemble slices (volumes only)
window_low         float64   intensity mapped to 0 when the slice is rendered (volumes only)
window_high        float64   intensity mapped to 255 when the slice is rendered (volumes only)
official_split     string    the dataset's own split: ``train``, ``val``, ``test`` or ``train_val`` (to be
                             divided into train and val), optional; kept by ``split.predefined``
label_<name>       float64   finding ``<name>`` after the uncertain-label policy: 1, 0 or NaN (ignored)
tab_<field>        object    tabular clinical field ``<field>`` (number or text), optional
=================  ========  ==========================================================================

Rejected rows are never dropped silently: adapters and preprocessing return them in a rejection table with
the columns of :data:`REJECTED_COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from workflow.common.errors import InputError

LABEL_PREFIX = "label_"
TABULAR_PREFIX = "tab_"

CORE_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "patient_id": "string",
    "study_id": "string",
    "path": "string",
    "mask_path": "string",
    "view": "string",
    "projection": "string",
    "sex": "string",
    "age": "float64",
    "race": "string",
    "ethnicity": "string",
    "site": "string",
    "volume_id": "string",
    "slice_index": "Int64",
    "slice_axis": "Int64",
    "affine": "string",
    "volume_shape": "string",
    "window_low": "float64",
    "window_high": "float64",
    "official_split": "string",
}

REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "path")

REJECTED_COLUMNS: dict[str, str] = {
    "stage": "string",
    "source": "string",
    "row": "Int64",
    "image_id": "string",
    "reason": "string",
}


def label_column(name: str) -> str:
    """Manifest column holding finding ``name``."""
    return f"{LABEL_PREFIX}{name}"


def tabular_column(name: str) -> str:
    """Manifest column holding tabular clinical field ``name``."""
    return f"{TABULAR_PREFIX}{name}"


def label_names(frame: pd.DataFrame) -> list[str]:
    """Finding names present in a manifest, in column order."""
    return [c[len(LABEL_PREFIX) :] for c in frame.columns if c.startswith(LABEL_PREFIX)]


def normalise(frame: pd.DataFrame, labels: Sequence[str], tabular: Iterable[str] = ()) -> pd.DataFrame:
    """Return ``frame`` with every schema column present, typed and ordered.

    Missing core columns are added as all-missing; label columns for every name in ``labels`` must exist
    already (adapters create them through :mod:`workflow.data.labels`).
    """
    out = frame.copy()
    for column, dtype in CORE_COLUMNS.items():
        if column not in out:
            out[column] = pd.Series(None, index=out.index, dtype=dtype)
        elif dtype == "float64":
            out[column] = pd.to_numeric(out[column], errors="coerce").astype(dtype)
        else:
            out[column] = out[column].astype(dtype)
    label_cols = [label_column(n) for n in labels]
    missing = [c for c in label_cols if c not in out]
    if missing:
        raise InputError(f"manifest lacks label columns {missing}; adapters must create every label")
    for column in label_cols:
        out[column] = out[column].astype("float64")
    tab_cols = [tabular_column(t) for t in tabular]
    for column in tab_cols:
        if column not in out:
            out[column] = pd.Series(pd.NA, index=out.index, dtype="object")
    return out[[*CORE_COLUMNS, *label_cols, *tab_cols]].reset_index(drop=True)


def validate(frame: pd.DataFrame, source: str = "manifest") -> None:
    """Check the invariants every manifest must hold; raise :class:`InputError` naming what is wrong."""
    for column in REQUIRED_COLUMNS:
        if column not in frame:
            raise InputError(f"{source}: required column '{column}' is missing")
        if frame[column].isna().any():
            row = int(frame.index[frame[column].isna()][0])
            raise InputError(f"{source}: column '{column}' is empty in row {row}")
    duplicated = frame["image_id"].duplicated()
    if duplicated.any():
        first = frame.loc[duplicated, "image_id"].iloc[0]
        raise InputError(f"{source}: image_id '{first}' occurs more than once; image ids must be unique")
    for name in label_names(frame):
        values = frame[label_column(name)].dropna()
        bad = ~values.isin([0.0, 1.0])
        if bad.any():
            raise InputError(
                f"{source}: label '{name}' has value {values[bad].tolist()[0]!r}; "
                "after the uncertain-label policy labels must be 0, 1 or missing"
            )


def empty_rejected() -> pd.DataFrame:
    """An empty rejection table with the documented columns."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in REJECTED_COLUMNS.items()})


def rejected(
    stage: str,
    source: str,
    rows: Sequence[int | None],
    image_ids: Sequence[str | None],
    reasons: Sequence[str],
) -> pd.DataFrame:
    """Build a rejection table: one row per rejected input with the reason in plain words."""
    frame = pd.DataFrame(
        {
            "stage": stage,
            "source": source,
            "row": pd.array(list(rows), dtype="Int64"),
            "image_id": pd.array(list(image_ids), dtype="string"),
            "reason": list(reasons),
        }
    )
    return frame.astype(REJECTED_COLUMNS)
