"""The demo phantoms laid out as real datasets ship (CheXpert as generated, MIMIC-CXR-JPG converted), so a
preset's adapter reads them exactly as it reads the real data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from workflow.data import phantoms
from workflow.data.labels import CHEXPERT_LABELS


def chexpert(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Phantoms in CheXpert's layout under ``root``; their ``dataset.chexpert`` section."""
    phantoms.generate(phantoms.PhantomSettings.from_dict(settings), root)
    return {"csv": str(root / phantoms.DATASET / "train.csv"), "image_root": str(root)}


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


LAYOUTS = {"chexpert": chexpert, "mimic-cxr": mimic}
"""Adapter -> function laying the phantoms out in its format."""
