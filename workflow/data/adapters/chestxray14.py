"""ChestX-ray14 adapter (Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks",
CVPR 2017; the NIH Clinical Center release of 112,120 frontal images of 30,805 patients).

Layout as NIH ships it::

    Data_Entry_2017.csv    Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age, Patient Gender,
                           View Position, OriginalImage[Width, Height], OriginalImagePixelSpacing[x, y]
    images_001/images/00000001_000.png ... images_012/images/00030805_000.png
    train_val_list.txt     the official split: one Image Index per line
    test_list.txt

``Finding Labels`` lists the findings of an image joined by ``|`` (``Cardiomegaly|Effusion``), or says
``No Finding``. The 14 findings and ``No Finding`` (:data:`FINDINGS`) are matched to ``dataset.labels``
case-insensitively with underscores read as spaces, so ``Pleural Thickening`` in config.yaml reads the file's
``Pleural_Thickening``; a label that is none of them is an error, and a row naming a finding that is not one
of them is rejected with that reason. The labels were mined from reports as present or absent, so every
label is 1 or 0 (``dataset.uncertain_policy`` and ``blank_policy`` have nothing to act on).

Patient id is ``Patient ID``, a study is a patient's ``Follow-up #``; ``View Position`` (PA or AP) is the
projection and every image is frontal. Ages are whole years (``58``, or ``058Y`` in early copies of the file);
the 2017 file has 16 ages above 120 (up to 414), corrected in NIH's 2020 revision: they are made missing and
counted (``summary``). Images are found by file name anywhere under ``image_root`` (the twelve
``images_0NN/images/`` folders, or one flat folder); a file that is not there is a rejected row, not a crash.

With ``train_val_list`` and ``test_list`` each image gets its official split in ``official_split``: ``test``
or ``train_val`` (``split.predefined`` divides the latter into train and val by patient,
:func:`workflow.data.split.predefined_splits`); an image in neither list is rejected, one in both is an error.
NIH drew the two lists by patient, so no patient is in both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError, where
from workflow.common.manifest import label_column
from workflow.data.adapters.base import (
    VIEW_POSITIONS,
    AdapterResult,
    DatasetSpec,
    duplicate_mask,
    normalise_sex,
    parse_age,
    read_table,
    setting,
    split_rejections,
    text_column,
    without_extension,
)

ADAPTER = "chestxray14"
KEY = f"dataset.{ADAPTER}"
FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
"""``No Finding`` and the 14 findings as ``Finding Labels`` spells them."""
COLUMNS = {
    "image": "Image Index",
    "findings": "Finding Labels",
    "follow_up": "Follow-up #",
    "patient": "Patient ID",
    "age": "Patient Age",
    "sex": "Patient Gender",
    "view": "View Position",
}
"""The columns of ``Data_Entry_2017.csv`` that are read."""
MAX_AGE = 120
"""Ages above this are data-entry errors of the 2017 file and become missing."""
OFFICIAL_LISTS = {"test_list": "test", "train_val_list": "train_val"}
"""Setting naming an official list -> the ``official_split`` of its images."""


def finding_key(name: str) -> str:
    """How a finding name is compared: lower case, underscores as spaces (``Pleural_Thickening``)."""
    return " ".join(name.replace("_", " ").lower().split())


def build(settings: Mapping[str, Any], spec: DatasetSpec) -> AdapterResult:
    """Build the manifest from ``Data_Entry_2017.csv`` (settings: ``dataset.chestxray14``).

    Settings:
        csv: ``Data_Entry_2017.csv`` (or its 2020 revision, same columns; required).
        image_root: folder searched (recursively) for the PNG files (required).
        train_val_list, test_list: the official split lists, both or neither (optional).
    """
    path = str(setting(settings, ADAPTER, "csv"))
    raw = read_table(path, f"{KEY}.csv", list(COLUMNS.values()))
    known = {finding_key(name): name for name in FINDINGS}
    unknown = [name for name in spec.labels if finding_key(name) not in known]
    if unknown:
        raise InputError(
            f"dataset.labels {unknown} are not ChestX-ray14 findings; choose from {list(FINDINGS)} "
            "(underscores or spaces)"
        )
    name = text_column(raw[COLUMNS["image"]])
    patient = text_column(raw[COLUMNS["patient"]])
    age = parse_age(text_column(raw[COLUMNS["age"]]).str.replace(r"[Yy]$", "", regex=True), path)
    implausible = (age > MAX_AGE).to_numpy()
    position = text_column(raw[COLUMNS["view"]])
    frame = pd.DataFrame(
        {
            "image_id": without_extension(name),
            "patient_id": patient,
            "study_id": patient + "/" + text_column(raw[COLUMNS["follow_up"]]),
            "path": name.map(_image_index(setting(settings, ADAPTER, "image_root"), set(name.dropna()))),
            "view": position.str.upper().map(VIEW_POSITIONS).astype("string"),
            "projection": position,
            "sex": normalise_sex(raw[COLUMNS["sex"]]),
            "age": age.mask(implausible),
        }
    )
    findings = text_column(raw[COLUMNS["findings"]]).fillna("").map(_findings)
    for label in spec.labels:
        frame[label_column(label)] = [float(finding_key(label) in row) for row in findings]
    checks = {
        f"{COLUMNS['image']} is empty": name.isna().to_numpy(),
        f"{COLUMNS['patient']} is empty": patient.isna().to_numpy(),
        f"{COLUMNS['findings']} is empty": findings.map(len).eq(0).to_numpy(),
    }
    strange = findings.map(lambda row: sorted(row - set(known)))
    for finding in sorted({f for row in strange for f in row}):
        checks[f"{COLUMNS['findings']} names '{finding}', which is not a ChestX-ray14 finding"] = np.array(
            [finding in row for row in strange], dtype=bool
        )
    checks[f"image file not found under {KEY}.image_root"] = (
        frame["path"].isna().to_numpy() & name.notna().to_numpy()
    )
    lists = _official_lists(settings)
    if lists is not None:
        frame["official_split"] = name.map(lists).astype("string")
        checks[f"image is in neither {KEY}.train_val_list nor {KEY}.test_list"] = (
            frame["official_split"].isna().to_numpy() & name.notna().to_numpy()
        )
    usable = ~np.logical_or.reduce(list(checks.values()))
    checks[f"{COLUMNS['image']} repeats an earlier row"] = duplicate_mask(frame["image_id"], usable)
    kept, rejected = split_rejections(frame, checks, source=path)
    summary = {"ages_above_120_made_missing": int(implausible.sum())}
    return AdapterResult(kept, rejected, summary)


def _findings(text: str) -> frozenset[str]:
    """The findings of one ``Finding Labels`` cell, as :func:`finding_key` keys."""
    return frozenset(finding_key(part) for part in text.split("|") if part.strip())


def _image_index(root: str | os.PathLike[str], wanted: set[str]) -> dict[str, str]:
    """File name -> path of every file under ``root`` (recursively) whose name is in ``wanted``.

    Raises:
        InputError: ``root`` is not a folder, or two files under it have one of the wanted names.
    """
    if not Path(root).is_dir():
        raise InputError(
            f"{KEY}.image_root = '{root}' is not a folder; set it to the folder holding images_0NN/"
        )
    found: dict[str, str] = {}
    for folder, _, files in os.walk(root, followlinks=True):
        for file in files:
            if file not in wanted:
                continue
            if file in found:
                raise InputError(
                    f"{KEY}.image_root holds {file} twice ({found[file]} and {os.path.join(folder, file)}); "
                    "keep one copy of every image under it"
                )
            found[file] = os.path.join(folder, file)
    return found


def _official_lists(settings: Mapping[str, Any]) -> dict[str, str] | None:
    """Image Index -> official split from ``train_val_list`` and ``test_list`` (None when neither is set).

    Raises:
        InputError: only one list is set, a list is missing, or an image is in both.
    """
    given = {key: settings.get(key) for key in OFFICIAL_LISTS}
    if not any(given.values()):
        return None
    if not all(given.values()):
        missing = next(key for key, value in given.items() if not value)
        raise InputError(f"{KEY}.{missing} is not set; the official split needs both lists (or neither)")
    split: dict[str, str] = {}
    for key, official in OFFICIAL_LISTS.items():
        for name in _read_list(str(given[key]), f"{KEY}.{key}"):
            if split.get(name, official) != official:
                raise InputError(
                    f"{name} is in both {KEY}.train_val_list and {KEY}.test_list; an image has one split"
                )
            split[name] = official
    return split


def _read_list(path: str, key: str) -> Sequence[str]:
    """The image file names of an official list, one per line (blank lines skipped)."""
    if not Path(path).is_file():
        raise InputError(f"{key} = '{path}': file not found; set {key} in config.yaml to the list NIH ships")
    with open(path, encoding="utf-8") as handle:
        names = [line.strip() for line in handle if line.strip()]
    if not names:
        raise InputError(f"{where(path)} (from {key}) is empty; it needs one image file name per line")
    return names
