"""3D CT / MRI volumes as 2D slices: reading, intensity windowing, slice extraction and reassembly.

Every volume is reoriented to the closest canonical RAS+ orientation (``nibabel.as_closest_canonical``)
right after reading, whatever the reader, so that array axis 0/1/2 run towards patient right, anterior and
superior, and ``slice_axis`` 2 means axial slices. The affine returned with the array maps canonical voxel
indices to world (RAS, mm) coordinates; the manifest stores it so slices can be put back in place.

A 2D slice is shown "upright": :func:`render_slice` and :func:`mask_slice` return ``np.rot90`` of the plane
taken along ``axis``, so superior (or anterior, for axial slices) is at the top and patient right is on the
image right (neurological convention). :func:`assemble_volume` undoes exactly that rotation.

Windowing is explicit (``window`` settings): ``hu`` maps ``center -/+ width/2`` (Hounsfield units) to 0 and
255; ``percentile`` maps the ``low`` and ``high`` percentiles of the volume's voxels (of its non-zero voxels
with ``nonzero: true``) to 0 and 255.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from workflow.common.errors import InputError, where

READERS: tuple[str, ...] = ("auto", "nibabel", "sitk")
WINDOW_DEFAULTS: dict[str, dict[str, Any]] = {
    "hu": {"center": 40.0, "width": 400.0},
    "percentile": {"low": 0.5, "high": 99.5, "nonzero": False},
}
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NIBABEL_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def is_nifti(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


def load_volume(path: str | os.PathLike[str], reader: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D volume and reorient it to the closest canonical (RAS+) orientation.

    Args:
        path: a NIfTI file (``.nii``/``.nii.gz``), a folder holding the files of one DICOM series, or
            (with ``reader`` ``auto``/``sitk``) any other single-file format SimpleITK reads.
        reader: ``auto`` (nibabel for NIfTI, SimpleITK for folders and other files), ``nibabel`` or
            ``sitk`` (SimpleITK, also for NIfTI). nibabel notices a truncated ``.nii.gz``; SimpleITK may not.

    Returns:
        ``(array, affine)``: float32 array of shape ``(X, Y, Z)`` in canonical orientation and its 4x4
        voxel-to-world (RAS, mm) affine.

    Raises:
        InputError: the path is missing, unreadable, not 3D, multi-channel or holds NaN/infinite values.
    """
    if reader not in READERS:
        raise InputError(f"reader '{reader}' is unknown; choose one of {list(READERS)}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{where(path)}: no such file or folder")
    if path.is_dir():
        if reader == "nibabel":
            raise InputError(f"{where(path)} is a folder (DICOM series); nibabel cannot read it, use sitk")
        image = _from_sitk(_read_dicom_series(path), path)
    elif reader == "sitk" or (reader == "auto" and not is_nifti(path)):
        image = _from_sitk(_read_sitk_file(path), path)
    else:
        try:
            image = nib.load(path)
        except _NIBABEL_ERRORS as err:
            raise InputError(f"{where(path)} could not be read as a NIfTI volume: {err}") from err
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        image = nib.funcs.four_to_three(image)[0]
    elif len(shape) != 3:
        raise InputError(f"{where(path)} has shape {shape}; only 3D volumes can be sliced")
    try:
        canonical = nib.as_closest_canonical(image)
        data = canonical.get_fdata(dtype=np.float32)
    except _NIBABEL_ERRORS as err:
        raise InputError(f"{where(path)} could not be read (file damaged or truncated?): {err}") from err
    if not np.isfinite(data).all():
        raise InputError(f"{where(path)} holds NaN or infinite voxel values")
    return data, np.asarray(canonical.affine, dtype=np.float64)


def _read_sitk_file(path: Path) -> sitk.Image:
    """Read one image file with SimpleITK, turning its exceptions into :class:`InputError`."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(f"{where(path)} could not be read by SimpleITK: {_sitk_reason(err)}") from err


def _read_dicom_series(folder: Path) -> sitk.Image:
    """Read the single DICOM series in ``folder`` (files sorted by slice position by GDCM)."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{where(folder)} holds no DICOM series; put the files of one series in it")
    if len(series) > 1:
        raise InputError(
            f"{where(folder)} holds {len(series)} DICOM series; put each series in its own folder"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise InputError(f"{where(folder)}: DICOM series unreadable: {_sitk_reason(err)}") from err


def _sitk_reason(err: RuntimeError) -> str:
    """The last line of a SimpleITK exception, without the C++ source location."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown error"
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        reason = reason.split(prefix, 1)[-1].strip()
    return reason


def _from_sitk(image: sitk.Image, path: Path) -> nib.Nifti1Image:
    """Wrap a SimpleITK image (LPS world space) as an in-memory NIfTI image (RAS world space)."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{where(path)} has multi-channel (e.g. RGB) voxels; expected one intensity")
    if image.GetDimension() != 3:
        raise InputError(f"{where(path)} is {image.GetDimension()}D; only 3D volumes can be sliced")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ (direction * np.array(image.GetSpacing()))
    affine[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin())
    return nib.Nifti1Image(array, affine)


def grid_difference(image_affine: np.ndarray, label_affine: np.ndarray) -> str | None:
    """How a label volume's voxel grid differs from its image volume's, or None when they are the same.

    Both affines are the canonical (RAS+) ones :func:`load_volume` returns, so a label volume stored in
    another orientation that covers the same grid is the same. Compared in turn: voxel spacing (column
    lengths), orientation (direction cosines) and origin, each to 1/1000 of a voxel.
    """
    image, label = np.asarray(image_affine, dtype=np.float64), np.asarray(label_affine, dtype=np.float64)
    spacing = np.linalg.norm(image[:3, :3], axis=0), np.linalg.norm(label[:3, :3], axis=0)
    tolerance = 1e-3 * float(spacing[0].min())
    if not np.allclose(spacing[1], spacing[0], rtol=0, atol=tolerance):
        return f"voxel spacing {_mm(spacing[1])} mm differs from the image volume's {_mm(spacing[0])} mm"
    if not np.allclose(label[:3, :3] / spacing[1], image[:3, :3] / spacing[0], rtol=0, atol=1e-3):
        return (
            f"orientation (direction cosines {np.round(label[:3, :3] / spacing[1], 3).tolist()}) differs "
            f"from the image volume's ({np.round(image[:3, :3] / spacing[0], 3).tolist()})"
        )
    if not np.allclose(label[:3, 3], image[:3, 3], rtol=0, atol=tolerance):
        return (
            f"origin {_mm(label[:3, 3])} mm differs from the image volume's {_mm(image[:3, 3])} mm "
            "(shifted, or flipped by its header's orientation)"
        )
    return None


def _mm(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in np.round(values, 4)) + ")"


def check_window(window: Mapping[str, Any], key: str = "dataset.volumes.window") -> dict[str, Any]:
    """Validate window settings and fill in defaults; errors name ``<key>.<setting>``.

    Returns:
        ``{"mode": "hu", "center": c, "width": w}`` or
        ``{"mode": "percentile", "low": p, "high": q, "nonzero": bool}``.
    """
    if not isinstance(window, Mapping):
        raise InputError(f"{key} must be a mapping such as {{mode: hu, center: 40, width: 400}}")
    mode = window.get("mode")
    if mode not in WINDOW_DEFAULTS:
        raise InputError(f"{key}.mode = {mode!r} is unknown; choose one of {list(WINDOW_DEFAULTS)}")
    unknown = sorted(set(window) - {"mode", *WINDOW_DEFAULTS[mode]})
    if unknown:
        raise InputError(f"{key} has setting(s) {unknown} that mode '{mode}' does not use")
    resolved: dict[str, Any] = {"mode": mode, **WINDOW_DEFAULTS[mode], **window}
    for name, value in resolved.items():
        if name in ("mode", "nonzero"):
            continue
        if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
            raise InputError(f"{key}.{name} = {value!r} must be a number")
        resolved[name] = float(value)
    if mode == "hu" and resolved["width"] <= 0:
        raise InputError(f"{key}.width = {resolved['width']} must be positive")
    if mode == "percentile":
        if not 0.0 <= resolved["low"] < resolved["high"] <= 100.0:
            raise InputError(f"{key}.low and {key}.high must satisfy 0 <= low < high <= 100")
        if not isinstance(resolved["nonzero"], bool):
            raise InputError(f"{key}.nonzero = {resolved['nonzero']!r} must be true or false")
    return resolved


def window_bounds(volume: np.ndarray, window: Mapping[str, Any]) -> tuple[float, float]:
    """Intensities ``(low, high)`` that rendering maps to 0 and 255 for this volume.

    Args:
        volume: 3D intensity array (as returned by :func:`load_volume`).
        window: window settings (see :func:`check_window`).

    Raises:
        InputError: bad settings, or a percentile window that is empty (constant intensities).
    """
    settings = check_window(window)
    if settings["mode"] == "hu":
        half = settings["width"] / 2.0
        return settings["center"] - half, settings["center"] + half
    values = _check_3d(volume, "volume")
    if settings["nonzero"]:
        values = values[values != 0]
        if values.size == 0:
            raise InputError("volume has no non-zero voxels, so window.nonzero: true has nothing to use")
    low, high = np.percentile(values, [settings["low"], settings["high"]])
    if not high > low:
        raise InputError(
            f"volume intensities between the {settings['low']} and {settings['high']} percentiles are "
            f"all {float(low)}; the slices would be blank"
        )
    return float(low), float(high)


def render_slice(volume: np.ndarray, index: int, axis: int, low: float, high: float) -> np.ndarray:
    """Slice ``index`` along ``axis`` as an upright uint8 image: ``[low, high]`` -> ``[0, 255]``.

    Each voxel becomes ``rint(clip((x - low) * 255 / (high - low), 0, 255))`` (float64, halves to even).
    """
    plane = _plane(volume, index, axis, "volume")
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise InputError(f"window low={low}, high={high} is invalid; need finite values with high > low")
    return np.ascontiguousarray(np.rot90(windowed(plane, low, high)))


def windowed(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Intensities through the window ``[low, high]`` -> ``[0, 255]`` as uint8:
    ``rint(clip((x - low) * 255 / (high - low), 0, 255))`` (float64, halves to even)."""
    scaled = (np.asarray(values, dtype=np.float64) - low) * 255.0 / (high - low)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def mask_slice(label_volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` of a label volume as upright uint8 class ids (same layout as images)."""
    plane = _plane(label_volume, index, axis, "label volume")
    if not np.array_equal(plane, np.rint(plane)) or plane.min() < 0 or plane.max() > 255:
        raise InputError(f"label volume slice {index} holds values that are not class ids 0..255")
    return np.ascontiguousarray(np.rot90(plane.astype(np.uint8)))


def assemble_volume(
    slices: Mapping[int, np.ndarray],
    shape: Sequence[int] | str,
    axis: int,
    affine: np.ndarray | str,
) -> nib.Nifti1Image:
    """Put upright 2D slices back into a canonical-space volume; slices not given stay 0.

    Args:
        slices: slice index -> image as returned by :func:`render_slice` / :func:`mask_slice`.
        shape: canonical volume shape (``load_volume(...)[0].shape``), as a sequence or the manifest's
            ``volume_shape`` JSON string.
        axis: axis the slices were taken along.
        affine: the volume's 4x4 affine, as an array or the manifest's ``affine`` JSON string.
    """
    size = _parse_shape(shape)
    _check_axis(axis)
    matrix = np.asarray(_from_json(affine, "affine") if isinstance(affine, str) else affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise InputError(f"affine must be a finite 4x4 matrix, got shape {matrix.shape}")
    plane_shape = tuple(n for i, n in enumerate(size) if i != axis)
    dtype = np.result_type(*(np.asarray(s).dtype for s in slices.values())) if slices else np.uint8
    volume = np.zeros(size, dtype=dtype)
    for index, image in slices.items():
        if not 0 <= index < size[axis]:
            raise InputError(f"slice index {index} is outside 0..{size[axis] - 1} along axis {axis}")
        plane = np.rot90(np.asarray(image), -1)
        if plane.shape != plane_shape:
            raise InputError(f"slice {index} has shape {np.shape(image)}, expected {plane_shape[::-1]}")
        target: list[Any] = [slice(None)] * 3
        target[axis] = index
        volume[tuple(target)] = plane
    return nib.Nifti1Image(volume, matrix)


def affine_json(affine: np.ndarray) -> str:
    """JSON text of a 4x4 affine that parses back to exactly the same float64 values."""
    return json.dumps(np.asarray(affine, dtype=np.float64).tolist())


def shape_json(shape: Sequence[int]) -> str:
    """JSON text of a volume shape, e.g. ``[16, 16, 8]`` (the manifest's ``volume_shape``)."""
    return json.dumps([int(n) for n in shape])


def _from_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{name} {text!r} is not valid JSON: {err.msg}") from err


def _parse_shape(shape: Sequence[int] | str) -> tuple[int, int, int]:
    """A volume shape as three positive ints, from a sequence or its JSON text."""
    value = _from_json(shape, "volume shape") if isinstance(shape, str) else shape
    sizes = list(value) if isinstance(value, Sequence | np.ndarray) else []
    whole = all(isinstance(n, int | np.integer) and not isinstance(n, bool) for n in sizes)
    if len(sizes) != 3 or not whole or any(n < 1 for n in sizes):
        raise InputError(f"volume shape {value!r} must be three positive whole sizes")
    return int(sizes[0]), int(sizes[1]), int(sizes[2])


def _check_3d(volume: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(volume)
    if array.ndim != 3:
        raise InputError(f"{name} must be a 3D array, got shape {array.shape}")
    return array


def _check_axis(axis: int) -> None:
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise InputError(f"slice axis {axis!r} must be 0, 1 or 2")


def _plane(volume: np.ndarray, index: int, axis: int, name: str) -> np.ndarray:
    array = _check_3d(volume, name)
    _check_axis(axis)
    if not 0 <= index < array.shape[axis]:
        raise InputError(f"slice index {index} is outside 0..{array.shape[axis] - 1} of the {name}")
    return np.take(array, index, axis=axis)
