"""Built-in demo dataset: procedural chest X-ray phantoms with known ground truth.

The rendering model (anatomy, pose, findings) is in :mod:`workflow.data.phantom_render`; this module samples
patients and studies, keeps the ground truth and writes the dataset in CheXpert's format.

Ground truth. A patient's anatomy is fixed; each of their studies draws pose, exposure, noise and
findings (Cardiomegaly per patient, the rest per study; prevalences may rise logistically with age). What
is rendered is the truth (``truth.csv``: Lung Opacity is 1 with either opacity; No Finding is 1 exactly
when nothing, Support Devices included, is rendered). ``train.csv`` holds CheXpert-style *reported* labels:
some positives are uncertain (-1), many negatives are blank, Enlarged Cardiomediastinum is reported with
some cardiomegalies, a reported Consolidation forces Lung Opacity to 1, and the other CheXpert findings
are blank. Positives are never blanked, so the reported No Finding equals the truth. Counterfactuals
re-render a study with one finding toggled and all else (anatomy, pose, finding geometry, noise)
identical. Patient ``k`` draws from ``numpy.random.default_rng([seed, k])`` and its noise from a stream
of its own, so it looks the same whatever ``n_patients`` is (and, noise aside, whatever the size).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from workflow.common.errors import InputError
from workflow.common.figures import save_png
from workflow.common.files import atomic_output, write_json
from workflow.common.settings import Settings
from workflow.data.labels import CHEXPERT_LABELS
from workflow.data.phantom_render import MASK_CLASSES, Anatomy, Findings, Pose, render

DATASET = "CheXpert-v1.0-phantom"
RENDERED = (
    "Cardiomegaly",
    "Lung Opacity",
    "Consolidation",
    "Pneumothorax",
    "Pleural Effusion",
    "Support Devices",
)
TOGGLABLE = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Support Devices")
TRUTH_COLUMNS = tuple(name for name in CHEXPERT_LABELS if name in {*RENDERED, "No Finding"})
CSV_COLUMNS = (
    *("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"),
    *CHEXPERT_LABELS,
    *("Race", "Site", "Mask Path", "Smoking Status", "Pack Years"),
)
EC_WITH_CARDIOMEGALY = 0.5  # chance that a cardiomegaly is also reported as Enlarged Cardiomediastinum
SMOKING = {"never": 0.5, "former": 0.3, "current": 0.2}
ANATOMY_PRIOR = {  # field: (mean, sd), anatomical units
    "body_width": (0.9, 0.025),
    "lung_x": (0.38, 0.012),
    "lung_y": (-0.1, 0.02),
    "lung_width": (0.27, 0.012),
    "lung_height": (0.6, 0.025),
    "dome_left": (0.4, 0.025),
    "dome_right": (0.45, 0.025),
    "heart_x": (0.1, 0.012),
    "heart_y": (0.3, 0.015),
    "heart_width": (0.26, 0.012),
    "heart_height": (0.23, 0.01),
    "rib_start": (-0.78, 0.02),
    "rib_step": (0.135, 0.004),
}


@dataclass(frozen=True)
class PhantomSettings(Settings):
    """Generator settings (``phantom.settings`` in config.yaml); :meth:`from_dict` validates them.

    ``prevalence``: chance of each rendered finding at age 55 (Lung Opacity: the non-consolidative
    opacity). ``age_slope``: log-odds added per decade above 55. ``races``: sampling weights. ``sites``:
    per site the noise std (intensity 0-1) and contrast gain. Fractions: ``uncertain_fraction`` of
    positives reported -1, ``blank_negative_fraction`` of negatives left blank, ``counterfactual_fraction``
    of images with a counterfactual, ``tabular_missing_fraction`` of clinical fields left blank.
    ``volumes`` 3D CT phantoms of ``volume_size``^3 voxels (:mod:`workflow.data.phantom_volumes`; written only
    by the rule ``make_phantom_volumes``, which runs when a study reads them).
    """

    n_patients: int = 200
    image_size: int = 64
    seed: int = 0
    min_studies: int = 1
    max_studies: int = 3
    min_age: int = 18
    max_age: int = 90
    female_fraction: float = 0.5
    prevalence: dict[str, float] = field(
        default_factory=lambda: {
            "Cardiomegaly": 0.15,
            "Lung Opacity": 0.1,
            "Consolidation": 0.1,
            "Pneumothorax": 0.08,
            "Pleural Effusion": 0.15,
            "Support Devices": 0.2,
        }
    )
    age_slope: dict[str, float] = field(
        default_factory=lambda: {"Cardiomegaly": 0.6, "Pleural Effusion": 0.4}
    )
    races: dict[str, float] = field(
        default_factory=lambda: {"White": 0.6, "Black": 0.15, "Asian": 0.15, "Other": 0.1}
    )
    sites: dict[str, dict[str, float]] = field(
        default_factory=lambda: {
            "site_a": {"noise": 0.015, "contrast": 1.0},
            "site_b": {"noise": 0.03, "contrast": 0.85},
            "site_c": {"noise": 0.045, "contrast": 1.15},
        }
    )
    uncertain_fraction: float = 0.1
    blank_negative_fraction: float = 0.6
    counterfactual_fraction: float = 1.0
    tabular_missing_fraction: float = 0.15
    volumes: int = 8
    volume_size: int = 32

    SECTION = ("phantom", "settings")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, key: str | None = None) -> PhantomSettings:
        """Build settings from the ``phantom`` config section; absent keys keep their defaults.

        ``prevalence`` and ``age_slope`` are merged over the defaults; ``races`` and ``sites`` replace them.

        Raises:
            InputError: naming ``phantom.<key>`` for an unknown key or a bad value.
        """
        raw, default, names = dict(raw or {}), cls(), [f.name for f in fields(cls)]
        for key in raw:
            if key not in names:
                raise InputError(f"phantom.{key} is not a known setting; use one of {names}")
        v = {name: raw.get(name, getattr(default, name)) for name in names}
        limits = [("n_patients", 1, 10**6), ("image_size", 32, 4096), ("seed", 0, 2**63 - 1)]
        for key, lo, hi in [*limits, ("volumes", 1, 10**5), ("volume_size", 16, 512)]:
            _check_int(key, v[key], lo, hi)
        _check_int("min_studies", v["min_studies"], 1, 20)
        _check_int("max_studies", v["max_studies"], v["min_studies"], 20)
        _check_int("min_age", v["min_age"], 0, 120)
        _check_int("max_age", v["max_age"], v["min_age"], 120)
        for key in [n for n in names if n.endswith("fraction")]:
            v[key] = _check_float(key, v[key], 0.0, 1.0)
        for key, lo, hi in [("prevalence", 0.0, 1.0), ("age_slope", -10.0, 10.0)]:
            given = _check_mapping(key, v[key], RENDERED)
            v[key] = {**getattr(default, key), **{k: _check_float(f"{key}.{k}", x, lo, hi) for k, x in given}}
        races = _check_mapping("races", v["races"], None)
        v["races"] = {k: _check_float(f"races.{k}", w, 1e-9, 1e9) for k, w in races}
        sites, v["sites"] = _check_mapping("sites", v["sites"], None), {}
        for name, site in sites:
            if not isinstance(site, Mapping) or set(site) != {"noise", "contrast"}:
                raise InputError(f"phantom.sites.{name} must be a mapping with keys noise and contrast")
            v["sites"][name] = {
                "noise": _check_float(f"sites.{name}.noise", site["noise"], 0.0, 1.0),
                "contrast": _check_float(f"sites.{name}.contrast", site["contrast"], 0.05, 10.0),
            }
        return cls(**v)


def _check_int(key: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"phantom.{key} must be an integer in [{lo}, {hi}] (got {value!r})")


def _check_float(key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InputError(f"phantom.{key} must be a number in [{lo}, {hi}] (got {value!r})")
    return float(value)


def _check_mapping(key: str, value: Any, allowed: tuple[str, ...] | None) -> list[tuple[str, Any]]:
    if not isinstance(value, Mapping) or (allowed is None and not value):
        raise InputError(f"phantom.{key} must be a non-empty mapping (got {value!r})")
    bad = [k for k in value if allowed is not None and k not in allowed]
    if bad:
        raise InputError(f"phantom.{key} has unknown finding(s) {bad}; use names from {allowed}")
    return list(value.items())


@dataclass(frozen=True)
class Study:
    """One study: projection, pose, findings, reported labels (CSV strings), finding to toggle or None."""

    index: int
    projection: str
    pose: Pose
    findings: Findings
    reported: dict[str, str]
    counterfactual: str | None


@dataclass(frozen=True)
class Patient:
    """A sampled patient: demographics, clinical fields (CSV strings), anatomy and studies."""

    number: int
    sex: str
    age: int
    race: str
    site: str
    smoking: str
    pack_years: str
    anatomy: Anatomy
    studies: tuple[Study, ...]


def truth_labels(present: frozenset[str]) -> dict[str, int]:
    """True 0/1 value of each :data:`TRUTH_COLUMNS` entry for the rendered findings ``present``."""
    truth = {name: int(name in present) for name in RENDERED}
    truth["Lung Opacity"] = int(bool(present & {"Lung Opacity", "Consolidation"}))
    truth["No Finding"] = int(not present)
    return {name: truth[name] for name in TRUTH_COLUMNS}


def _prevalence(settings: PhantomSettings, name: str, age: int) -> float:
    base = settings.prevalence[name]
    if base in (0.0, 1.0):
        return base
    logit = math.log(base / (1 - base)) + settings.age_slope.get(name, 0.0) * (age - 55) / 10
    return 1 / (1 + math.exp(-logit))


def _report(rng: np.random.Generator, settings: PhantomSettings, truth: dict[str, int]) -> dict[str, str]:
    """CheXpert-style reported labels ("1.0", "0.0", "-1.0" or "") from the truth."""
    uncertain = rng.random(len(CHEXPERT_LABELS)) < settings.uncertain_fraction
    blank = rng.random(len(CHEXPERT_LABELS)) < settings.blank_negative_fraction
    with_ec = rng.random() < EC_WITH_CARDIOMEGALY
    out = dict.fromkeys(CHEXPERT_LABELS, "")
    for i, name in enumerate(CHEXPERT_LABELS):
        if name in RENDERED:
            out[name] = ("-1.0" if uncertain[i] else "1.0") if truth[name] else ("" if blank[i] else "0.0")
        elif name == "Enlarged Cardiomediastinum" and truth["Cardiomegaly"]:
            out[name] = "1.0" if with_ec else ""
        elif name == "Enlarged Cardiomediastinum":
            out[name] = "" if blank[i] else "0.0"
    if out["Consolidation"] == "1.0":
        out["Lung Opacity"] = "1.0"
    out["No Finding"] = "1.0" if truth["No Finding"] else ""
    return out


def _lung_spot(rng: np.random.Generator, a: Anatomy, r_min: float, r_max: float) -> list[float]:
    """A random point inside a random lung and a radius: [x, y, r]."""
    side = rng.choice((-1, 1))
    x = side * (a.lung_x + rng.uniform(-0.4, 0.4) * a.lung_width)
    return [float(x), a.lung_y + rng.uniform(-0.3, 0.55) * a.lung_height, rng.uniform(r_min, r_max)]


def _study(
    rng: np.random.Generator,
    settings: PhantomSettings,
    index: int,
    patient: tuple[int, Anatomy, bool, float],
) -> Study:
    """Draw study ``index`` of a patient given as (age, anatomy, has cardiomegaly, site contrast).

    The number of draws never depends on earlier outcomes, so settings only change what they control.
    """
    age, a, cardiomegaly, site_contrast = patient
    shift_x, shift_y, rotation = rng.normal(0.0, [0.025, 0.025, 0.04])
    scale, exposure, contrast = rng.normal([1.0, 0.0, 1.0], [0.03, 0.03, 0.05])
    pose = Pose(shift_x, shift_y, rotation, scale, exposure, site_contrast * contrast)
    draws = rng.random(len(RENDERED))
    present = frozenset(
        name
        for name, draw in zip(RENDERED, draws, strict=True)
        if (cardiomegaly if name == "Cardiomegaly" else draw < _prevalence(settings, name, age))
    )
    both, side, tube = rng.random() < 0.4, int(rng.choice((-1, 1))), rng.random() < 0.5
    # an endotracheal tube down the trachea, or a central line from a shoulder to the right atrium
    ends = (
        [0.0, -1.1, 0.005, -0.7, 0.01, -0.35] if tube else [side * 0.72, -0.86, side * 0.2, -0.78, 0.05, 0.02]
    )
    findings = Findings(
        present=present,
        effusion_sides=(-1, 1) if both else (side,),
        effusion_level=rng.uniform(0.12, 0.3),
        pneumothorax_side=int(rng.choice((-1, 1))),
        pneumothorax_depth=rng.uniform(0.5, 0.65),
        consolidation=(*_lung_spot(rng, a, 0.11, 0.16), rng.uniform(0, 2 * math.pi)),
        opacity=tuple(_lung_spot(rng, a, 0.18, 0.26)),
        device=tuple((np.asarray(ends) + rng.normal(0.0, 0.025, 6)).tolist()),
    )
    ap = rng.random() < (0.75 if "Support Devices" in present else 0.35)  # portable films are AP
    reported = _report(rng, settings, truth_labels(present))
    wants, toggle = rng.random() < settings.counterfactual_fraction, TOGGLABLE[rng.integers(len(TOGGLABLE))]
    return Study(index, "AP" if ap else "PA", pose, findings, reported, toggle if wants else None)


def sample_patient(settings: PhantomSettings, number: int) -> Patient:
    """Draw patient ``number`` (1-based) and their studies from the patient's own RNG; no rendering."""
    rng = np.random.default_rng([settings.seed, number])
    sex = "Female" if rng.random() < settings.female_fraction else "Male"
    age = int(np.clip(round(rng.normal(58, 17)), settings.min_age, settings.max_age))
    weights = np.asarray(list(settings.races.values()))
    race = list(settings.races)[rng.choice(len(weights), p=weights / weights.sum())]
    site = list(settings.sites)[rng.integers(len(settings.sites))]
    smoking = str(rng.choice(list(SMOKING), p=list(SMOKING.values())))
    pack_years = f"{rng.gamma(2.0, 12.0):.1f}" if smoking != "never" else ""
    missing = rng.random(2) < settings.tabular_missing_fraction
    shape = {key: float(rng.normal(mean, sd)) for key, (mean, sd) in ANATOMY_PRIOR.items()}
    if sex == "Female":
        shape["body_width"] -= 0.03
        shape["lung_width"] -= 0.01
    vessels = []
    for side, angle in [(s, angle) for s in (-1, 1) for angle in np.linspace(-1.3, 1.3, 13)]:
        turn, length, amplitude = rng.normal(angle, 0.1), rng.uniform(0.2, 0.6), rng.uniform(0.08, 0.14)
        start = (side * (0.17 + 0.04 * math.cos(turn)), -0.02 + 0.04 * math.sin(turn))
        end = (side * (0.17 + length * math.cos(turn)), -0.02 + length * math.sin(turn))
        vessels.append((*start, *end, amplitude))
    bone = float(np.clip(1.1 - 0.005 * (age - 18) + rng.normal(0.0, 0.05), 0.6, 1.2))
    anatomy = Anatomy(**shape, bone=bone, vessels=tuple(vessels))
    n_studies = int(rng.integers(settings.min_studies, settings.max_studies + 1))
    cardiomegaly = bool(rng.random() < _prevalence(settings, "Cardiomegaly", age))
    fixed = (age, anatomy, cardiomegaly, settings.sites[site]["contrast"])
    studies = tuple(_study(rng, settings, j, fixed) for j in range(1, n_studies + 1))
    smoking, pack_years = ("" if missing[0] else smoking), ("" if missing[1] else pack_years)
    return Patient(number, sex, age, race, site, smoking, pack_years, anatomy, studies)


def study_noise(settings: PhantomSettings, patient: Patient, study: int) -> np.ndarray:
    """The acquisition noise field of one study (own RNG stream; std set by the patient's site)."""
    rng = np.random.default_rng([settings.seed, patient.number, study, 1])
    grain = ndimage.gaussian_filter(rng.standard_normal((settings.image_size,) * 2), 0.7)
    return grain / grain.std() * settings.sites[patient.site]["noise"]


def _write_png(path: Path, array: np.ndarray) -> None:
    save_png(Image.fromarray(array, mode="L"), path)


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def generate(settings: PhantomSettings, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Render the phantom dataset under ``out_dir/CheXpert-v1.0-phantom`` and return its summary.

    Writes ``train.csv`` (CheXpert columns, then Race, Site, Mask Path, Smoking Status, Pack Years),
    ``truth.csv``, ``counterfactuals.csv``, ``phantom.json`` (the returned summary) and the PNGs under
    ``train/``, ``masks/`` and ``counterfactuals/``. The same settings give byte-identical files.
    """
    out = Path(out_dir)
    rows: list[list[str]] = []
    truth_rows: list[list[int]] = []
    cf_rows: list[list[str]] = []
    for number in range(1, settings.n_patients + 1):
        patient = sample_patient(settings, number)
        for study in patient.studies:
            stem = f"patient{number:05d}/study{study.index}/view1_frontal"
            path, mask_path = f"{DATASET}/train/{stem}.png", f"{DATASET}/masks/{stem}.png"
            for folder in ("train", "masks", "counterfactuals"):
                (out / DATASET / folder / stem).parent.mkdir(parents=True, exist_ok=True)
            noise = study_noise(settings, patient, study.index)
            image, mask = render(patient.anatomy, study.pose, study.findings, noise)
            _write_png(out / path, image)
            _write_png(out / mask_path, mask)
            truth = truth_labels(study.findings.present)
            rows.append(
                [path, patient.sex, str(patient.age), "Frontal", study.projection]
                + [study.reported[name] for name in CHEXPERT_LABELS]
                + [patient.race, patient.site, mask_path, patient.smoking, patient.pack_years]
            )
            truth_rows.append([truth[name] for name in TRUTH_COLUMNS])
            if study.counterfactual is not None:
                finding = study.counterfactual
                value = 1 - truth[finding]
                flipped = replace(study.findings, present=study.findings.present ^ {finding})
                cf_path = f"{DATASET}/counterfactuals/{stem}_{finding.lower().replace(' ', '_')}{value}.png"
                _write_png(out / cf_path, render(patient.anatomy, study.pose, flipped, noise)[0])
                cf_rows.append([cf_path, path, finding, str(value)])
    root = out / DATASET
    _write_csv(root / "train.csv", CSV_COLUMNS, rows)
    truth_csv = [[row[0], *map(str, values)] for row, values in zip(rows, truth_rows, strict=True)]
    _write_csv(root / "truth.csv", ("Path", *TRUTH_COLUMNS), truth_csv)
    _write_csv(root / "counterfactuals.csv", ("Path", "Source Path", "Finding", "Value"), cf_rows)
    prevalence = np.asarray(truth_rows, dtype=float).reshape(-1, len(TRUTH_COLUMNS)).mean(axis=0)
    summary = {
        "generator": "synthmed.phantoms",
        "dataset": DATASET,
        "seed": settings.seed,
        "settings": asdict(settings),
        "counts": {"patients": settings.n_patients, "images": len(rows), "counterfactuals": len(cf_rows)},
        "true_prevalence": {
            name: round(float(p), 6) for name, p in zip(TRUTH_COLUMNS, prevalence, strict=True)
        },
        "mask_classes": MASK_CLASSES,
    }
    write_json(root / "phantom.json", summary)
    return summary
