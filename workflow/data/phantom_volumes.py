"""Small 3D CT phantoms with label volumes, clinical fields and true counterfactuals (demo data in 3D).

Volume ``k`` shows phantom patient ``k`` of :mod:`workflow.data.phantoms` (same sex, age, race, site, smoking
status, anatomy and the findings of their first study) as a chest CT in Hounsfield units: an elliptic body,
two lungs (the 2D phantom's lung outlines swept front to back, cut by the domed diaphragm), the heart
(anterior, widened by Cardiomegaly), spine, ribs and trachea. Findings have a localised effect: Pleural
Effusion is dependent (posterior, basal) fluid, Pneumothorax anterior air darker than lung, Consolidation a
dense sphere, Lung Opacity ground glass, Support Devices a bright tube (the 2D device curve at the trachea's
depth); the label volume has the 2D masks' class ids (:data:`workflow.data.phantom_render.MASK_CLASSES`).
Clinical fields are visible too: a current (former) smoker's lungs are darker (emphysema; a blank, not
recorded, status renders as never), and bone density falls with age (the 2D phantom's ``Anatomy.bone``,
-0.005 per year).

Each volume is written as NIfTI in RAS+ orientation with anisotropic voxels (:func:`affine`), its label
volume on the same grid, and a row of ``volumes.csv`` laid out as the ``volumes`` adapter reads it by default
(``dataset.volumes``: columns ``volume``, ``label_volume``, ``patient_id``, ``study_id``, ``sex``, ``age``,
``race``, ``site``, the CheXpert findings as the rendered truth and the tabular fields ``smoking_status`` and
``pack_years``). A true counterfactual re-renders the same patient with the same noise and one field or
finding switched (:data:`COUNTERFACTUAL_FIELDS`; ``counterfactual_fraction`` of the volumes have one), listed
in ``counterfactuals.csv``; only the switched field's rendered effect changes (age +10 years lowers bone
density, not the findings' prevalence; pack years stay as they were). The acquisition noise
and the counterfactual choice come from the patient's own RNG streams (``[seed, k, 0, 3]`` and
``[seed, k, 0, 4]``), so the 2D phantoms are unchanged and the same settings give byte-identical files.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, spatial

from workflow.common.files import atomic_output, write_json, write_nifti
from workflow.data.labels import CHEXPERT_LABELS
from workflow.data.phantom_render import MASK_CLASSES, Anatomy, Findings, _ramp
from workflow.data.phantoms import TOGGLABLE, PhantomSettings, sample_patient, truth_labels

DATASET = "CT-phantom"
FIELD_OF_VIEW_MM = (400.0, 300.0, 350.0)
"""Extent of a volume along its RAS axes (left-right, posterior-anterior, inferior-superior)."""
TABLE_COLUMNS = (
    *("volume", "label_volume", "patient_id", "study_id", "sex", "age", "race", "site"),
    *("smoking_status", "pack_years"),
    *CHEXPERT_LABELS,
)
COUNTERFACTUAL_FIELDS = ("smoking_status", "age", *TOGGLABLE)
"""What a counterfactual switches: smoking (never or blank <-> current, former -> never), age (+10 years) or a
rendered finding (present <-> absent)."""
EMPHYSEMA_HU = {"current": -90.0, "former": -40.0}
"""Lung attenuation change of a smoker (HU); never and blank (not recorded) render none."""
BONE_PER_YEAR = 0.005
"""Fall in bone density per year of age, as :func:`workflow.data.phantoms.sample_patient` draws it."""


@dataclass(frozen=True)
class Clinical:
    """The clinical fields a volume shows: smoking status (CSV text) and bone density (falls with age)."""

    smoking: str
    bone: float


def affine(size: int) -> np.ndarray:
    """The RAS+ voxel-to-world (mm) affine of a ``size``^3 phantom: :data:`FIELD_OF_VIEW_MM` / size per voxel,
    centred on the origin."""
    spacing = np.asarray(FIELD_OF_VIEW_MM) / size
    matrix = np.diag([*spacing, 1.0])
    matrix[:3, 3] = -spacing * (size - 1) / 2
    return matrix


def _inside(offsets: tuple[np.ndarray, ...], axes: tuple[Any, ...]) -> np.ndarray:
    """Signed distance (anatomical units, positive inside) to an ellipsoid's surface, to first order:
    ``(1 - f) / |grad f|`` with ``f = sum((offset / axis)^2)``."""
    f = sum((o / a) ** 2 for o, a in zip(offsets, axes, strict=True))
    gradient = 2 * np.sqrt(sum((o / a**2) ** 2 for o, a in zip(offsets, axes, strict=True)))
    return (1 - f) / np.maximum(gradient, 1e-6)


def render_volume(
    anatomy: Anatomy, findings: Findings, clinical: Clinical, noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Render one chest CT phantom; pure (no randomness).

    Anatomical coordinates as the 2D phantom's: ``u`` image left-right (+u is the patient's left), ``v`` top
    (superior, -1) to bottom, and ``w`` posterior (-1) to anterior, all about [-1, 1].

    Args:
        anatomy: the patient's anatomy (the 2D phantom's).
        findings: rendered findings and their geometry (the 2D phantom's study).
        clinical: smoking status and bone density.
        noise: additive noise (HU) of shape ``(N, N, N)``; sets the size.

    Returns:
        ``(image, label)``: int16 HU volume and uint8 label volume (:data:`MASK_CLASSES`), both ``(N, N, N)``
        on the RAS+ grid of :func:`affine`.
    """
    size, a, has = noise.shape[0], anatomy, findings.present
    eps = 1.5 / size
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    u, w, v = -x, y, -z  # RAS: axis 0 runs to the patient's right (-u), axis 2 to superior (-v)

    body_rho = np.hypot(u / a.body_width, (w + 0.05) / 0.65)
    body = _ramp(1 - body_rho, 2 * eps) * _ramp(v + 0.95, eps)
    lungs = np.zeros_like(u)
    for side, dome_top in ((-1, a.dome_left), (1, a.dome_right)):
        cx = side * a.lung_x
        width = a.lung_width * (1 + 0.25 * (v - a.lung_y) / a.lung_height)
        inside = _inside((u - cx, v - a.lung_y, w + 0.05), (width, a.lung_height, 0.5))
        dome = dome_top + 0.14 * ((u - cx) / a.lung_width) ** 2 - 0.15 * w
        lungs += _ramp(inside, eps) * _ramp(dome - v, eps)
    big = "Cardiomegaly" in has
    heart = _inside(
        (u - a.heart_x - 0.07 * big, v - a.heart_y, w - 0.2),
        (a.heart_width * (1 + 0.45 * big), a.heart_height, 0.28 * (1 + 0.3 * big)),
    )
    heart = _ramp(heart, eps) * _ramp(min(a.dome_left, a.dome_right) + 0.08 - v, eps)
    lungs = np.clip(lungs, 0.0, 1.0) * (1 - heart)
    spine = _ramp(0.09 - np.hypot(u, (w + 0.5) / 1.3), eps) * (
        0.7 + 0.3 * np.cos(v * 2 * math.pi / 0.14) ** 2
    )
    ribs = _ramp(0.03 - np.abs(body_rho - 0.88), eps) * np.cos((v - a.rib_start) * math.pi / a.rib_step) ** 8
    trachea = _ramp(0.035 - np.hypot(u, w - 0.05), eps) * _ramp(-0.3 - v, eps) * body

    hu = -1000.0 + 1040.0 * body + 120.0 * heart  # contrast-enhanced blood
    hu += (-880.0 + EMPHYSEMA_HU.get(clinical.smoking, 0.0)) * lungs
    hu += (250.0 + 450.0 * clinical.bone) * np.maximum(spine, ribs) * body - 1040.0 * trachea
    if "Pleural Effusion" in has:
        for side in findings.effusion_sides:
            level = -0.55 + findings.effusion_level + 0.3 * np.clip(v - a.lung_y, 0, None)
            hu += 870.0 * lungs * _ramp(side * u, eps) * _ramp(level - w, 0.05)
    if "Pneumothorax" in has:
        side = findings.pneumothorax_side
        hu -= 150.0 * lungs * _ramp(side * u, eps) * _ramp(w - findings.pneumothorax_depth + 0.5, 0.05)
    if "Consolidation" in has:
        cx, cy, r, _ = findings.consolidation
        hu += 800.0 * lungs * _ramp((1 - np.sqrt((u - cx) ** 2 + (v - cy) ** 2 + w**2) / r) * r, 0.03)
    if "Lung Opacity" in has:
        cx, cy, r = findings.opacity
        hu += 300.0 * lungs * np.exp(-1.5 * ((u - cx) ** 2 + (v - cy) ** 2 + (w + 0.1) ** 2) / r**2)
    device = np.zeros(u.shape, dtype=bool)
    if "Support Devices" in has:
        p = np.asarray(findings.device).reshape(3, 1, 2)
        t = np.linspace(0.0, 1.0, 4 * size)[:, None]
        curve = (1 - t) ** 2 * p[0] + 2 * t * (1 - t) * p[1] + t**2 * p[2]  # quadratic Bezier in (u, v)
        points = np.column_stack([-curve[:, 0], np.full(len(curve), 0.05), -curve[:, 1]])  # (x, y, z)
        nearest, _ = spatial.cKDTree(points).query(np.stack([x, y, z], axis=-1).reshape(-1, 3))
        device = nearest.reshape(u.shape) < max(2.0 / size, 0.03)
        hu += 1500.0 * ndimage.gaussian_filter(device.astype(float), 0.5)
    image = np.round(np.clip(hu + noise, -1024, 3071)).astype(np.int16)
    label = np.zeros(u.shape, dtype=np.uint8)
    label[lungs > 0.5] = MASK_CLASSES["lungs"]
    label[heart > 0.5] = MASK_CLASSES["heart"]
    label[device] = MASK_CLASSES["devices"]
    return image, label


def volume_noise(settings: PhantomSettings, number: int, site: str) -> np.ndarray:
    """Patient ``number``'s CT noise (HU; own RNG stream, std 1000 x the site's noise)."""
    rng = np.random.default_rng([settings.seed, number, 0, 3])
    grain = ndimage.gaussian_filter(rng.standard_normal((settings.volume_size,) * 3), 0.7)
    return grain / grain.std() * 1000.0 * settings.sites[site]["noise"]


def _switched(field: str, row: dict[str, str], findings: Findings, clinical: Clinical) -> tuple[Any, ...]:
    """``(value, row, findings, clinical)`` of the counterfactual that switches ``field``."""
    if field == "smoking_status":
        value = "current" if row[field] in ("", "never") else "never"
        return value, {**row, field: value}, findings, replace(clinical, smoking=value)
    if field == "age":
        value = str(int(row["age"]) + 10)
        bone = float(np.clip(clinical.bone - 10 * BONE_PER_YEAR, 0.6, 1.2))
        return value, {**row, "age": value}, findings, replace(clinical, bone=bone)
    flipped = replace(findings, present=findings.present ^ {field})
    truth = truth_labels(flipped.present)
    value = str(truth[field])
    return value, {**row, **{k: f"{v:.1f}" for k, v in truth.items()}}, flipped, clinical


def _write_csv(path: Path, header: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def generate_volumes(settings: PhantomSettings, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``settings.volumes`` CT phantoms of ``settings.volume_size``^3 voxels under
    ``out_dir/CT-phantom``.

    Writes ``images/``, ``labels/`` and ``counterfactuals/`` (NIfTI ``.nii``), ``volumes.csv`` (one row per
    volume, :data:`TABLE_COLUMNS`), ``counterfactuals.csv`` (``volume``, ``source_volume``, ``field``,
    ``value`` and the counterfactual's own table row, with its own label volume where the switch changes
    it) and ``volumes.json`` (the returned summary).
    """
    root = Path(out_dir) / DATASET
    matrix = affine(settings.volume_size)
    rows: list[dict[str, str]] = []
    cf_rows: list[dict[str, str]] = []
    for number in range(1, settings.volumes + 1):
        patient = sample_patient(settings, number)
        study = patient.studies[0]
        clinical = Clinical(patient.smoking, patient.anatomy.bone)
        noise = volume_noise(settings, number, patient.site)
        image, label = render_volume(patient.anatomy, study.findings, clinical, noise)
        name = f"patient{number:05d}.nii"
        write_nifti(root / "images" / name, image, matrix)
        write_nifti(root / "labels" / name, label, matrix)
        truth = truth_labels(study.findings.present)
        row = {
            "volume": f"images/{name}",
            "label_volume": f"labels/{name}",
            "patient_id": f"patient{number:05d}",
            "study_id": "study1",
            "sex": patient.sex,
            "age": str(patient.age),
            "race": patient.race,
            "site": patient.site,
            "smoking_status": patient.smoking,
            "pack_years": patient.pack_years,
            **dict.fromkeys(CHEXPERT_LABELS, ""),
            **{k: f"{v:.1f}" for k, v in truth.items()},
        }
        rows.append(row)
        rng = np.random.default_rng([settings.seed, number, 0, 4])
        field = COUNTERFACTUAL_FIELDS[rng.integers(len(COUNTERFACTUAL_FIELDS))]
        if rng.random() >= settings.counterfactual_fraction:
            continue
        value, cf_row, findings, cf_clinical = _switched(field, row, study.findings, clinical)
        stem = f"counterfactuals/patient{number:05d}_{field.lower().replace(' ', '_')}_{value}"
        cf_image, cf_label = render_volume(patient.anatomy, findings, cf_clinical, noise)
        write_nifti(root / f"{stem}.nii", cf_image, matrix)
        if not np.array_equal(cf_label, label):  # Cardiomegaly and Support Devices change the label volume
            write_nifti(root / f"{stem}_label.nii", cf_label, matrix)
            cf_row["label_volume"] = f"{stem}_label.nii"
        cf_name = f"{stem}.nii"
        cf_rows.append(
            {**cf_row, "volume": cf_name, "source_volume": row["volume"], "field": field, "value": value}
        )
    _write_csv(root / "volumes.csv", TABLE_COLUMNS, rows)
    _write_csv(
        root / "counterfactuals.csv",
        ("volume", "source_volume", "field", "value", *TABLE_COLUMNS[1:]),
        cf_rows,
    )
    summary = {
        "generator": "synthmed.phantom_volumes",
        "dataset": DATASET,
        "seed": settings.seed,
        "counts": {"volumes": len(rows), "counterfactuals": len(cf_rows)},
        "shape": [settings.volume_size] * 3,
        "affine": matrix.tolist(),
        "mask_classes": MASK_CLASSES,
    }
    write_json(root / "volumes.json", summary)
    return summary
