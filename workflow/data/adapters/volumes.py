"""Adapter for 3D CT / MRI volumes (NIfTI files or DICOM series folders): one manifest row per 2D slice.

Settings (``dataset.volumes``): a ``table`` CSV with one row per volume (column names under ``columns``),
``modality`` (``ct``/``mri``), ``window``, ``slice_axis``, ``slice_step``, ``min_label_fraction``, ``reader``,
``root``, ``label_columns`` and ``tabular``; see :data:`COLUMN_DEFAULTS` and :func:`build`. The per-volume
table is mapped like the CSV adapter's (:func:`workflow.data.adapters.csv.mapped_rows`), with ``volume`` in
the part of ``path``, ``label_volume`` in that of ``mask`` and ``volume_id`` of ``image_id``. Every volume is
read once here to find its shape, affine and intensity window; the preprocessing stage renders the slices
later from the manifest's ``path``, ``slice_index``, ``slice_axis`` and window columns; ``affine`` and
``volume_shape`` let :func:`workflow.data.slicing.assemble_volume` put the slices back together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError, where
from workflow.common.manifest import rejected
from workflow.data import slicing as volumes
from workflow.data.adapters.base import AdapterResult, DatasetSpec, read_table, split_rejections
from workflow.data.adapters.csv import mapped_rows, row_checks

KEY = "dataset.volumes"
COLUMN_DEFAULTS: dict[str, str | None] = {
    "volume": "volume",
    "patient_id": "patient_id",
    "study_id": "study_id",
    "label_volume": "label_volume",
    "volume_id": None,
    "sex": "sex",
    "age": "age",
    "race": "race",
    "site": "site",
}
"""Defaults of ``dataset.volumes.columns``; an optional field's default is used only if the table has it."""
_RENAMED = {"volume": "path", "label_volume": "mask", "volume_id": "image_id"}
COLUMN_FIELDS: dict[str, str] = {name: _RENAMED.get(name, name) for name in COLUMN_DEFAULTS}
"""Key of ``dataset.volumes.columns`` -> the ``columns`` key of the CSV adapter it corresponds to."""
MODALITY_WINDOW_MODE: dict[str, str] = {"ct": "hu", "mri": "percentile"}
SETTINGS_KEYS: frozenset[str] = frozenset(
    {"table", "root", "columns", "label_columns", "tabular", "modality", "window"}
    | {"slice_axis", "slice_step", "min_label_fraction", "reader"}
)
_REQUIRED = ("volume", "patient_id")
_SLICE_FIELDS = ("slice_index", "slice_axis", "affine", "volume_shape", "window_low", "window_high")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Slicing:
    """How each volume is read, windowed and cut into slices."""

    window: dict[str, Any]
    axis: int
    step: int
    min_label_fraction: float
    reader: str


def build(settings: Mapping[str, Any], spec: DatasetSpec) -> AdapterResult:
    """Build the slice manifest: one row per kept slice of every usable volume.

    Rows whose volume cannot be used are rejected with a reason: empty or missing volume path, unreadable
    (corrupt) volume, empty patient id, duplicate volume id, missing label volume, label volume whose shape
    differs from the image volume or that holds values other than integer class ids 0..255, a volume with no
    usable intensity window, or ``min_label_fraction`` set without a label volume. A label volume must also
    lie on its image volume's voxel grid (same spacing, orientation and origin) and, when ``spec`` names
    ``dataset.mask_classes``, hold only their ids.

    Slices skipped on purpose, by ``slice_step`` or by ``min_label_fraction`` (fraction of non-zero label
    voxels in the slice below the threshold), are *not* rejections: they are counted and the count is logged
    at INFO level.
    """
    slicing = _slicing(settings)
    table_path = settings.get("table")
    if not isinstance(table_path, str | os.PathLike) or not str(table_path):
        raise InputError(f"{KEY}.table must name the CSV with one row per volume")
    table = read_table(table_path, f"{KEY}.table")
    root = Path(os.path.abspath(settings.get("root") or Path(table_path).parent))
    if not root.is_dir():
        raise InputError(f"{KEY}.root = '{root}' is not a folder")
    frame = _volume_rows(table, root, settings, spec, str(table_path))
    frame["_row"] = np.arange(len(frame)) + 2
    checks = row_checks(
        frame,
        id_key=f"{KEY}.columns.volume_id",
        item="volume",
        files="volume file or folder",
        masks="label volume file",
    )
    if slicing.min_label_fraction > 0:
        checks["min_label_fraction is set but the row has no label volume"] = (
            frame["mask_path"].isna().to_numpy()
        )
    kept, rejections = split_rejections(frame, checks, source=str(table_path))
    rows: list[dict[str, Any]] = []
    failed: list[tuple[int, str, str]] = []
    skipped = 0
    for record in kept.to_dict("records"):
        try:
            slice_rows, n_skipped = _slice_rows(record, slicing, spec.mask_classes)
        except InputError as err:
            failed.append((record["_row"], record["volume_id"], str(err)))
            continue
        rows.extend(slice_rows)
        skipped += n_skipped
    _log.info("%s: %d slices kept, %d skipped by slice_step/min_label_fraction", KEY, len(rows), skipped)
    if failed:
        lines, ids, reasons = zip(*failed, strict=True)
        unreadable = rejected("adapter", str(table_path), lines, ids, reasons)
        rejections = pd.concat([t for t in (rejections, unreadable) if len(t)], ignore_index=True)
    result = pd.DataFrame(rows, columns=[*frame.columns.drop("_row"), *_SLICE_FIELDS])
    return AdapterResult(result, rejections.sort_values("row", kind="stable", ignore_index=True))


def _slicing(settings: Mapping[str, Any]) -> _Slicing:
    """Validate every setting except the table; errors name ``dataset.volumes.<key>``."""
    if not isinstance(settings, Mapping):
        raise InputError(f"{KEY} must be a mapping of settings")
    unknown = sorted(set(settings) - SETTINGS_KEYS)
    if unknown:
        raise InputError(f"{KEY} has unknown setting(s) {unknown}; known: {sorted(SETTINGS_KEYS)}")
    modality = settings.get("modality")
    if modality not in MODALITY_WINDOW_MODE:
        raise InputError(f"{KEY}.modality = {modality!r} is unknown; choose one of ['ct', 'mri']")
    window = dict(settings.get("window") or {})
    window.setdefault("mode", MODALITY_WINDOW_MODE[modality])
    if modality == "mri" and window["mode"] == "hu":
        raise InputError(f"{KEY}.window.mode = 'hu' needs modality ct; MRI has no Hounsfield units")
    axis = settings.get("slice_axis", 2)
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise InputError(f"{KEY}.slice_axis = {axis!r} must be 0, 1 or 2 (axes of the RAS volume)")
    step = settings.get("slice_step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise InputError(f"{KEY}.slice_step = {step!r} must be a whole number >= 1")
    fraction = settings.get("min_label_fraction", 0)
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction <= 1:
        raise InputError(f"{KEY}.min_label_fraction = {fraction!r} must be a number in 0..1")
    reader = settings.get("reader", "auto")
    if reader not in volumes.READERS:
        raise InputError(f"{KEY}.reader = {reader!r} is unknown; choose one of {list(volumes.READERS)}")
    return _Slicing(volumes.check_window(window, f"{KEY}.window"), int(axis), step, float(fraction), reader)


def _volume_rows(
    table: pd.DataFrame, root: Path, settings: Mapping[str, Any], spec: DatasetSpec, source: str
) -> pd.DataFrame:
    """One candidate row per volume with every manifest field except the per-slice ones.

    The columns are mapped as in the CSV adapter (:func:`workflow.data.adapters.csv.mapped_rows`), with the
    volume path as ``path``, the label volume as ``mask`` and the volume id as the image id.
    """
    defaults = {
        name: column
        for name, column in COLUMN_DEFAULTS.items()
        if column is not None and (name in _REQUIRED or column in table)
    }
    frame = mapped_rows(
        table,
        settings,
        spec,
        adapter="volumes",
        source=source,
        root=root,
        row_offset=2,
        defaults=defaults,
        keys=COLUMN_FIELDS,
        image_id=lambda relative: relative.map(lambda p: p if pd.isna(p) else _volume_id(p, root)),
    )
    frame["volume_id"] = frame["image_id"]
    if "mask_path" not in frame:
        frame["mask_path"] = pd.Series(pd.NA, index=frame.index, dtype="string")
    return frame


def _slice_rows(
    record: dict[str, Any], slicing: _Slicing, mask_classes: tuple[str, ...]
) -> tuple[list[dict[str, Any]], int]:
    """Manifest rows for the kept slices of one volume, and how many slices were skipped on purpose."""
    volume, affine = volumes.load_volume(record["path"], slicing.reader)
    low, high = volumes.window_bounds(volume, slicing.window)
    label = None
    if not pd.isna(record["mask_path"]):
        label = _label_volume(record["mask_path"], volume.shape, affine, slicing.reader, mask_classes)
    base = {key: value for key, value in record.items() if key != "_row"}
    base.update(
        affine=volumes.affine_json(affine),
        volume_shape=volumes.shape_json(volume.shape),
        window_low=low,
        window_high=high,
        slice_axis=slicing.axis,
    )
    rows = []
    for index in range(0, volume.shape[slicing.axis], slicing.step):
        if label is not None and slicing.min_label_fraction > 0:
            plane = np.take(label, index, axis=slicing.axis)
            if np.count_nonzero(plane) < slicing.min_label_fraction * plane.size:
                continue
        rows.append({**base, "image_id": f"{record['volume_id']}/slice{index:04d}", "slice_index": index})
    return rows, volume.shape[slicing.axis] - len(rows)


def _label_volume(
    path: str, shape: tuple[int, ...], affine: np.ndarray, reader: str, mask_classes: tuple[str, ...]
) -> np.ndarray:
    """Read a label volume and check it against its image volume (shape ``shape``, canonical ``affine``).

    Raises:
        InputError: naming the label volume, when it is unreadable, its shape or voxel grid (spacing,
            orientation, origin) differs from the image volume's, or it holds values that are not integer
            class ids 0..255 or ids outside ``mask_classes`` (``dataset.mask_classes``; empty: not checked).
    """
    try:
        label, label_affine = volumes.load_volume(path, reader)
    except InputError as err:
        raise InputError(f"label volume: {err}") from err
    if label.shape != shape:
        raise InputError(
            f"label volume {where(path)} has shape {label.shape} but the image volume has shape {shape} "
            "(both in RAS orientation)"
        )
    difference = volumes.grid_difference(affine, label_affine)
    if difference is not None:
        raise InputError(
            f"label volume {where(path)}: {difference}; resample it onto the image volume's grid (nearest "
            "neighbour, e.g. SimpleITK.Resample with the image as reference) or correct its header"
        )
    if not np.array_equal(label, np.rint(label)) or label.min() < 0 or label.max() > 255:
        raise InputError(f"label volume {where(path)} holds values that are not integer class ids 0..255")
    unknown = np.flatnonzero(np.bincount(label.astype(np.uint8).ravel(), minlength=256)[len(mask_classes) :])
    if mask_classes and unknown.size:
        raise InputError(
            f"label volume {where(path)} holds class ids {(unknown + len(mask_classes)).tolist()} outside "
            f"dataset.mask_classes {list(mask_classes)} (ids 0..{len(mask_classes) - 1}); name every class "
            "in dataset.mask_classes (in id order) or relabel the volume"
        )
    return label


def _volume_id(relative: str, root: Path) -> str:
    """Stable volume id: the path relative to ``root`` without ``.nii``/``.nii.gz``."""
    path = Path(relative)
    if path.is_absolute() and path.is_relative_to(root):
        path = path.relative_to(root)
    text = path.as_posix().rstrip("/")
    for suffix in (".nii.gz", ".nii"):
        if text.lower().endswith(suffix):
            return text[: -len(suffix)]
    return text
