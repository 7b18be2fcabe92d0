"""PatchCamelyon adapter (Veeling et al., "Rotation Equivariant CNNs for Digital Pathology", MICCAI 2018):
the histology patches MEP-LDM (Osorio et al., Diagnostics 2024) builds its morphology prompts on.

Layout as the authors ship it (``.h5.gz``; unpack each with ``gunzip`` first, HDF5 cannot be read zipped)::

    camelyonpatch_level_2_split_{train,valid,test}_x.h5   dataset "x": N x 96 x 96 x 3 uint8 RGB patches
    camelyonpatch_level_2_split_{train,valid,test}_y.h5   dataset "y": N x 1 x 1 x 1 uint8, 1 = tumour

(262,144 / 32,768 / 32,768 patches). A label is 1 when the patch's centre 32 x 32 pixels hold tumour tissue;
it is the one finding of ``dataset.labels`` (e.g. ``[Tumor]``), so MEP-LDM's two classes are that label's
values: ``prompts.classes`` with ``column: label_Tumor`` and ``names: {"1": cancer, "0": healthy}`` gives
its "Histology image of cancer tissue" / "... healthy tissue". The optional ``*_meta.csv`` files are not read.

The images stay inside the HDF5 files: a manifest row's ``path`` is the ``_x.h5`` file and ``slice_index``
the patch's position in it (``slice_axis`` 0); preprocessing reads that one patch
(:mod:`workflow.data.preprocess`), the one place images are read. Each row's ``official_split`` is its
file's split (``valid`` -> ``val``).

Patient ids. PCam has none: the slide a patch comes from is only in the meta files, and Camelyon16's slides
are not linked to patients either. ``patient_id`` is therefore the patch itself (``train/000042``, the same
as ``image_id``). That is *not* leakage-safe for a split drawn here: patches of one slide (one patient) would
land in train and test. The official split is: the authors drew train, valid and test from disjoint slides
(Camelyon16's own train/test division, with 20 % of the train slides held out for valid), so a PCam study
keeps it with ``split.predefined: true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError, where
from workflow.common.manifest import empty_rejected, label_column
from workflow.data.adapters.base import AdapterResult, DatasetSpec, setting

if TYPE_CHECKING:
    import h5py

ADAPTER = "pcam"
KEY = f"dataset.{ADAPTER}"
SPLITS: dict[str, str] = {"train": "train", "valid": "val", "test": "test"}
"""PCam's split (in the file names) -> ``official_split``."""
IMAGES = "x"
LABELS = "y"
"""Dataset names inside the ``_x.h5`` and ``_y.h5`` files."""


def file_name(split: str, part: str) -> str:
    """``camelyonpatch_level_2_split_<split>_<part>.h5`` (part ``x`` or ``y``)."""
    return f"camelyonpatch_level_2_split_{split}_{part}.h5"


FILES: tuple[str, ...] = tuple(file_name(split, part) for split in SPLITS for part in (IMAGES, LABELS))
"""The six files read from ``dataset.pcam.root``."""


def build(settings: Mapping[str, Any], spec: DatasetSpec) -> AdapterResult:
    """Build the manifest from the six PCam HDF5 files (settings: ``dataset.pcam``).

    Settings:
        root: folder holding the unpacked ``camelyonpatch_level_2_split_*_{x,y}.h5`` files (required).

    Raises:
        InputError: ``dataset.labels`` is not exactly one finding, a file is missing or not HDF5, or a file's
            array has the wrong name, shape or values.
    """
    if len(spec.labels) != 1:
        raise InputError(
            f"dataset.labels = {list(spec.labels)}: PCam has one finding (tumour in the centre region); "
            "name exactly one, e.g. dataset.labels: [Tumor]"
        )
    root = Path(setting(settings, ADAPTER, "root"))
    parts = [_split(root, split, official, spec.labels[0]) for split, official in SPLITS.items()]
    return AdapterResult(pd.concat(parts, ignore_index=True), empty_rejected())


def _split(root: Path, split: str, official: str, finding: str) -> pd.DataFrame:
    """The manifest rows of one PCam split."""
    images_path, labels_path = (root / file_name(split, part) for part in (IMAGES, LABELS))
    with _open(images_path) as images_file, _open(labels_path) as labels_file:
        images = _dataset(images_file, IMAGES, images_path)
        labels = np.asarray(_dataset(labels_file, LABELS, labels_path)[()])
        if (
            images.dtype != np.uint8
            or images.ndim not in (3, 4)
            or (images.ndim == 4 and images.shape[3] != 3)
        ):
            raise InputError(
                f"{where(images_path)}: dataset '{IMAGES}' is {images.dtype} {images.shape}; PCam patches "
                "are uint8 N x H x W x 3 (RGB) or N x H x W (grayscale)"
            )
        n = images.shape[0]
    if labels.shape[0] != n or labels.size != n:
        raise InputError(
            f"{where(labels_path)}: dataset '{LABELS}' has shape {labels.shape}, but {images_path.name} "
            f"holds {n} patches; it needs one label per patch (N x 1 x 1 x 1)"
        )
    labels = labels.reshape(n)
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        raise InputError(
            f"{where(labels_path)}: patch {int(np.flatnonzero(bad)[0])} has label {labels[bad][0].item()}; "
            "PCam labels are 0 (normal) or 1 (tumour)"
        )
    ids = pd.array([f"{split}/{i:06d}" for i in range(n)], dtype="string")
    return pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": ids,
            "path": str(images_path),
            "slice_index": pd.array(np.arange(n), dtype="Int64"),
            "slice_axis": pd.array(np.zeros(n, dtype=np.int64), dtype="Int64"),
            "official_split": official,
            label_column(finding): labels.astype("float64"),
        }
    )


def _open(path: Path) -> h5py.File:
    """``path`` opened read-only, or an :class:`InputError` saying what is wrong with it."""
    import h5py

    if not path.is_file():
        zipped = path.with_name(path.name + ".gz")
        hint = (
            f"unpack {zipped.name} with gunzip" if zipped.is_file() else "download it from the PCam release"
        )
        raise InputError(f"{KEY}.root = '{path.parent}' has no {path.name}; {hint}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{where(path)} (from {KEY}.root) is not a readable HDF5 file: {err}") from err


def _dataset(handle: h5py.File, name: str, path: Path) -> h5py.Dataset:
    import h5py

    if name not in handle or not isinstance(handle[name], h5py.Dataset):
        raise InputError(
            f"{where(path)} has no dataset '{name}' (found {sorted(handle)}); is it a PCam file?"
        )
    return handle[name]
