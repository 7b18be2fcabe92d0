"""The demo phantoms laid out as real datasets ship (CheXpert as generated, with its separate demographics
file; MIMIC-CXR-JPG, ChestX-ray14 and PCam converted; the 3D CT phantoms for the volumes adapter), so a
preset's adapter reads them exactly as it reads the real data. Each function returns every path setting of
its adapter; a preset uses those it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from workflow.data import phantom_volumes, phantoms
from workflow.data.adapters import pcam as pcam_adapter
from workflow.data.labels import CHEXPERT_LABELS

PRIMARY_RACE = {  # phantom race -> spellings of CheXpert's PRIMARY_RACE, cycled over patients
    "White": ["White", "White, non-Hispanic", "White or Caucasian"],
    "Black": ["Black or African American", "Black, non-Hispanic"],
    "Asian": ["Asian", "Asian, non-Hispanic", "Asian - Historical Conv"],
    "Other": ["Other", "Native Hawaiian or Other Pacific Islander", "Race and Ethnicity Unknown"],
}
ETHNICITY = ["Non-Hispanic/Non-Latino", "Hispanic/Latino", "Unknown"]
NOT_IN_DEMOGRAPHICS = 7
"""Every 7th phantom patient has no row in the demographics file (as some CheXpert patients have none)."""
CXR14_FINDINGS = {  # CheXpert finding (as the phantoms report it) -> ChestX-ray14's spelling
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural Effusion": "Effusion",
    "Lung Opacity": "Infiltration",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
}
CXR14_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
"""``Data_Entry_2017.csv``'s header as NIH wrote it: two columns split by the comma in their names and a
trailing comma (pandas reads ``OriginalImage[Width``, ``Height]``, ... and ``Unnamed: 11``)."""


def _phantoms(root: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """The phantoms' ``train.csv`` (generated under ``root``) with their patient numbers."""
    phantoms.generate(phantoms.PhantomSettings.from_dict(settings), root)
    table = pd.read_csv(root / phantoms.DATASET / "train.csv")
    return table.assign(number=table["Path"].str.extract(r"patient(\d+)", expand=False).astype(int))


def chexpert(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Phantoms in CheXpert's layout under ``root`` with ``CHEXPERT DEMO.xlsx`` (PRIMARY_RACE in CheXpert's
    spellings, every 7th patient left out); their ``dataset.chexpert`` section."""
    table = _phantoms(root, settings).drop_duplicates("number")
    listed = table[table["number"] % NOT_IN_DEMOGRAPHICS != 0]
    demographics = pd.DataFrame(
        {
            "PATIENT": [f"patient{n:05d}" for n in listed["number"]],
            "GENDER": listed["Sex"],
            "AGE_AT_CXR": listed["Age"],
            "PRIMARY_RACE": [
                PRIMARY_RACE[race][n % len(PRIMARY_RACE[race])]
                for race, n in zip(listed["Race"], listed["number"], strict=True)
            ],
            "ETHNICITY": [ETHNICITY[n % len(ETHNICITY)] for n in listed["number"]],
        }
    )
    demographics.to_excel(root / "CHEXPERT DEMO.xlsx", index=False)
    return {
        "csv": str(root / phantoms.DATASET / "train.csv"),
        "image_root": str(root),
        "demographics_csv": str(root / "CHEXPERT DEMO.xlsx"),
    }


def mimic(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Phantoms in MIMIC-CXR-JPG v2's layout (metadata and CheXpert-labeler tables, ``files/pXX/p<subject>/
    s<study>/<dicom>.jpg``) with a MIMIC-IV ``patients.csv``; their ``dataset.mimic-cxr`` section."""
    source = Path(chexpert(root / "chexpert", settings)["csv"])
    table = pd.read_csv(source)
    patient = table["Path"].str.extract(r"patient(\d+)/study(\d+)").astype(int)
    subject = 10_000_000 + patient[0]
    study = 50_000_000 + 10 * patient[0] + patient[1]
    dicom = [f"d{i:05d}" for i in range(len(table))]
    for row, (s, t, d) in enumerate(zip(subject, study, dicom, strict=True)):
        target = root / "mimic" / "files" / f"p{str(s)[:2]}" / f"p{s}" / f"s{t}" / f"{d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source.parents[1] / table["Path"].iloc[row]) as image:
            image.convert("L").save(target, quality=95)
    metadata = pd.DataFrame(
        {"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": table["AP/PA"]}
    )
    labels = table[list(CHEXPERT_LABELS)].assign(subject_id=subject, study_id=study)
    patients = pd.DataFrame(
        {"subject_id": subject, "gender": table["Sex"].str[0], "anchor_age": table["Age"]}
    )
    files = {
        "metadata_csv": root / "mimic" / "mimic-cxr-2.0.0-metadata.csv.gz",
        "labels_csv": root / "mimic" / "mimic-cxr-2.0.0-chexpert.csv.gz",
        "demographics_csv": root / "mimic" / "patients.csv",
    }
    metadata.to_csv(files["metadata_csv"], index=False)
    labels.drop_duplicates(["subject_id", "study_id"]).to_csv(files["labels_csv"], index=False)
    patients.drop_duplicates("subject_id").to_csv(files["demographics_csv"], index=False)
    return {key: str(path) for key, path in files.items()} | {"image_root": str(root / "mimic")}


def chestxray14(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Phantoms in NIH ChestX-ray14's layout: ``Data_Entry_2017.csv`` ("A|B" finding lists or "No
    Finding"), PNGs spread over ``images_001/images/`` and ``images_002/images/``, and the official
    ``train_val_list.txt`` / ``test_list.txt`` (every 5th patient in test); their ``dataset.chestxray14``
    section."""
    source = root / "source"
    table = _phantoms(source, settings)
    out = root / "chestxray14"
    lines, names = [CXR14_HEADER], []
    for row in table.assign(follow_up=table.groupby("number").cumcount()).to_dict("records"):
        name = f"{row['number']:08d}_{row['follow_up']:03d}.png"
        target = out / f"images_00{1 + row['number'] % 2}" / "images" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source / row["Path"]) as image:
            image.save(target)
        found = [cxr14 for column, cxr14 in CXR14_FINDINGS.items() if row[column] == 1.0]
        findings = "|".join(found) or "No Finding"
        lines.append(
            f"{name},{findings},{row['follow_up']},{row['number']},{row['Age']},{row['Sex'][0]},"
            f"{row['AP/PA']},2500,2048,0.168,0.168,"
        )
        names.append((name, row["number"]))
    (out / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    test = [name for name, number in names if number % 5 == 0]
    (out / "test_list.txt").write_text("\n".join(test) + "\n")
    (out / "train_val_list.txt").write_text("\n".join(n for n, _ in names if n not in test) + "\n")
    return {
        "csv": str(out / "Data_Entry_2017.csv"),
        "image_root": str(out),
        "train_val_list": str(out / "train_val_list.txt"),
        "test_list": str(out / "test_list.txt"),
    }


def pcam(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Phantoms as PCam's HDF5 files: each image an RGB patch (gray values tinted like H&E), label 1 when any
    finding is reported (No Finding is not 1), patients split into train / valid / test (patient number
    modulo 5: 0 test, 1 valid); their ``dataset.pcam`` section."""
    table = _phantoms(root / "source", settings)
    table["split"] = np.select(
        [table["number"] % 5 == 0, table["number"] % 5 == 1], ["test", "valid"], "train"
    )
    out = root / "pcam"
    out.mkdir(parents=True, exist_ok=True)
    tint = np.array([0.55, 0.35, 0.5]), np.array([115.0, 40.0, 110.0])
    for split in pcam_adapter.SPLITS:
        part = table[table["split"] == split]
        patches = []
        for path in part["Path"]:
            with Image.open(root / "source" / path) as image:
                gray = np.asarray(image.convert("L"), dtype=np.float64)[..., None]
            patches.append(np.clip(gray * tint[0] + tint[1], 0, 255).astype(np.uint8))
        labels = (part["No Finding"] != 1.0).to_numpy(dtype=np.uint8).reshape(-1, 1, 1, 1)
        with h5py.File(out / pcam_adapter.file_name(split, "x"), "w") as handle:
            handle.create_dataset("x", data=np.stack(patches))
        with h5py.File(out / pcam_adapter.file_name(split, "y"), "w") as handle:
            handle.create_dataset("y", data=labels)
    return {"root": str(out)}


def volumes(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The 3D CT phantoms (NIfTI volumes, label volumes, ``volumes.csv``) under ``root``; their
    ``dataset.volumes`` paths. ``settings`` are ``phantom.settings`` (``volumes``, ``volume_size``: how many
    and how large; defaults 8 of 32^3)."""
    phantom_volumes.generate_volumes(phantoms.PhantomSettings.from_dict(settings), root)
    folder = root / phantom_volumes.DATASET
    return {"table": str(folder / "volumes.csv"), "root": str(folder)}


LAYOUTS = {
    "chexpert": chexpert,
    "mimic-cxr": mimic,
    "chestxray14": chestxray14,
    "pcam": pcam,
    "volumes": volumes,
}
"""Adapter -> function laying the phantoms out in its format."""
