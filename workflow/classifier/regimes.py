"""Training data of the classifier regimes: real, synthetic, mixed and real + counterfactual.

Every regime is selected and tested on *real* images: model selection and thresholds on the real ``val``
split, evaluation on the real ``test`` split. The regimes differ only in the training rows:

=====================  ===============================================================================
regime                 training rows
=====================  ===============================================================================
real                   the real ``train`` split
synthetic              every row of a generator's synthetic manifest
mixed                  the real ``train`` split plus ``round(synthetic_per_real * n_real_train)`` synthetic
                       rows drawn without replacement with the training seed (all of them, with a note,
                       when there are fewer)
real+counterfactual    the real ``train`` split plus every row of a counterfactual manifest that the
                       editing stage's CLIP filter did not reject (``clip_passed`` false; with a note)
=====================  ===============================================================================

**Runs.** A regime that adds images trains once per source of them (:data:`SOURCES`): the synthetic and
mixed regimes once per generator of the study (:mod:`workflow.diffusion.generators`) or of its
``classifier.generators`` (:func:`classifier_generators`), real + counterfactual
once per counterfactual set: the workflow's own, one per editing method (``editing.methods`` when
``editing.enabled``, :mod:`workflow.editing.edits`), and the manifest ``classifier.counterfactuals``, named
``external``, when set. A run is
named ``<regime>/<source>`` (``real`` alone), e.g. ``mixed/sd-full``, and has its own folder
``results/classifier/<run>/`` (:func:`runs`, :func:`run_sources`).

Synthetic and counterfactual manifests are in the manifest schema (:mod:`workflow.common.manifest`) with an
``image`` column of PNG paths; their ``split`` column, if any, is ignored: they are training data only. Leak
guard: a row whose ``patient_id`` is a real validation or test patient (e.g. a counterfactual edit of a test
image: the editing stage edits the test split by default, so those edits are never trained on) is excluded and
counted. A label column a manifest lacks is missing (NaN, left out of the loss), with a
note. The test split is not part of :class:`TrainingData`, so training and threshold selection cannot see it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.diffusion.generators import generator_names, samples_manifest
from workflow.editing.edits import counterfactual_manifest, editing_methods

SOURCES: dict[str, str | None] = {
    "real": None,
    "synthetic": "synthetic",
    "mixed": "synthetic",
    "real+counterfactual": "counterfactual",
}
"""Regime -> the kind of images it adds to (or, for synthetic, puts in place of) the real training split."""
SPLITS = ("train", "val", "test")
EXTERNAL = "external"
RESULTS = "results/classifier"
REAL = "real"


def run_file(run: str, name: str) -> str:
    """File ``name`` (``model.pt``, ``metrics.json``, ...) of classifier run ``run``."""
    return f"{RESULTS}/{run}/{name}"


def real_classifier(config: Mapping[str, Any]) -> dict[str, str]:
    """The model and test metrics of the classifier trained on real images alone (the image-quality stage
    reads images with it), or nothing when ``classifier.regimes`` has no ``real``."""
    if REAL not in config["classifier"]["regimes"]:
        return {}
    return {"model": run_file(REAL, "model.pt"), "metrics": run_file(REAL, "metrics.json")}


def runs(config: Mapping[str, Any]) -> list[str]:
    """The classifier runs of the study (validated ``config``): each regime of ``classifier.regimes`` once
    per source of its images (module docstring).

    Raises:
        InputError: when ``real+counterfactual`` is asked for without a counterfactual manifest.
    """
    classifier = config["classifier"]
    sources = {"synthetic": classifier_generators(config), "counterfactual": editing_methods(config)}
    if classifier["counterfactuals"] is not None:
        sources["counterfactual"].append(EXTERNAL)
    names = []
    for regime in classifier["regimes"]:
        kind = SOURCES[regime]
        if kind is None:
            names.append(regime)
            continue
        if not sources[kind]:
            raise InputError(
                f"classifier.regimes lists {regime} but the study has no {kind} images: set "
                "classifier.counterfactuals to a manifest of counterfactual images, or editing.enabled to "
                "make the workflow's own"
            )
        names += [f"{regime}/{source}" for source in sources[kind]]
    return names


def classifier_generators(config: Mapping[str, Any]) -> list[str]:
    """The generators whose samples the synthetic and mixed regimes train on: ``classifier.generators``, or
    every generator of the study when it is null, in config order.

    Raises:
        InputError: naming ``classifier.generators`` when it lists a name that is no generator of the study.
    """
    study = generator_names(config)
    chosen = config["classifier"]["generators"]
    if chosen is None:
        return study
    unknown = [name for name in chosen if name not in study]
    if unknown:
        raise InputError(
            f"classifier.generators: {unknown} are not generators of the study {study} (diffusion.generators)"
        )
    return [name for name in study if name in chosen]


def run_sources(config: Mapping[str, Any], run: str) -> dict[str, str]:
    """The extra manifests run ``run`` trains on, by kind (``synthetic`` or ``counterfactual``)."""
    regime, _, source = run.partition("/")
    kind = SOURCES[regime]
    if kind is None:
        return {}
    if kind == "synthetic":
        return {kind: samples_manifest(source)}
    if source == EXTERNAL:
        return {kind: config["classifier"]["counterfactuals"]}
    return {kind: counterfactual_manifest(source)}


@dataclass
class TrainingData:
    """The rows a regime trains on (``origin``: real, synthetic, counterfactual) and the real val rows."""

    train: pd.DataFrame
    val: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def real_splits(dataset: pd.DataFrame, source: str = "dataset") -> dict[str, pd.DataFrame]:
    """The real train / val / test rows of the final dataset; each split must have rows."""
    for column in ("split", "image"):
        if column not in dataset:
            raise InputError(f"{source}: column '{column}' is missing; expected results/data/dataset.parquet")
    splits = {name: dataset[dataset["split"] == name].reset_index(drop=True) for name in SPLITS}
    empty = [name for name, rows in splits.items() if rows.empty]
    if empty:
        raise InputError(f"{source}: split(s) {empty} have no rows; the classifier needs train, val and test")
    return splits


def read_extra(path: str, labels: Sequence[str], notes: list[str]) -> pd.DataFrame:
    """Read a synthetic or counterfactual manifest; missing label columns become NaN with a note."""
    frame = pd.read_parquet(path)
    manifest.validate(frame, path)
    if "image" not in frame:
        raise InputError(f"{path}: column 'image' (PNG path of each image) is missing")
    absent = [name for name in labels if manifest.label_column(name) not in frame]
    for name in absent:
        frame[manifest.label_column(name)] = np.nan
    if absent:
        notes.append(f"{path} has no label column for {absent}: counted as missing (not in the loss)")
    return frame


def _guarded(frame: pd.DataFrame, name: str, held_out: set[str], notes: list[str]) -> pd.DataFrame:
    leaked = frame["patient_id"].astype(str).isin(held_out)
    if leaked.any():
        notes.append(
            f"{int(leaked.sum())} {name} rows excluded: their patient is in the real val or test split"
        )
    return frame[~leaked].assign(origin=name)


def training_data(
    regime: str,
    dataset: pd.DataFrame,
    extras: Mapping[str, pd.DataFrame],
    synthetic_per_real: float,
    seed: int,
) -> TrainingData:
    """Assemble the training rows of ``regime`` and the real validation rows (see the module docstring)."""
    if regime not in SOURCES:
        raise InputError(f"classifier.regimes: '{regime}' is not one of {list(SOURCES)}")
    kind = SOURCES[regime]
    if kind is not None and kind not in extras:
        raise InputError(f"regime '{regime}' needs a {kind} manifest")
    splits = real_splits(dataset)
    held_out = set(splits["val"]["patient_id"].astype(str)) | set(splits["test"]["patient_id"].astype(str))
    notes: list[str] = []
    real = splits["train"].assign(origin="real")
    parts: list[pd.DataFrame] = [] if regime == "synthetic" else [real]
    if regime in ("synthetic", "mixed"):
        synthetic = _guarded(extras["synthetic"], "synthetic", held_out, notes)
        if regime == "mixed":
            wanted = round(synthetic_per_real * len(real))
            if wanted > len(synthetic):
                notes.append(
                    f"mixed: {wanted} synthetic rows wanted, only {len(synthetic)} available; all used"
                )
            rng = np.random.default_rng(seed)
            chosen = np.sort(rng.choice(len(synthetic), size=min(wanted, len(synthetic)), replace=False))
            synthetic = synthetic.iloc[chosen]
        parts.append(synthetic)
    if regime == "real+counterfactual":
        counterfactual = _guarded(extras["counterfactual"], "counterfactual", held_out, notes)
        if counterfactual.empty:
            raise InputError(
                f"regime '{regime}': every counterfactual row edits a real val or test patient's image, so "
                "none may be trained on; edit training images (editing.split: train) for this regime"
            )
        if (
            "clip_passed" in counterfactual
        ):  # rejected by the editing stage's CLIP filter: kept, not trained on
            rejected = counterfactual["clip_passed"].eq(False)
            if rejected.any():
                notes.append(
                    f"{int(rejected.sum())} counterfactual rows excluded: the CLIP filter rejected them"
                )
            counterfactual = counterfactual[~rejected]
        parts.append(counterfactual)
    train = pd.concat(parts, ignore_index=True)
    if train.empty:
        raise InputError(f"regime '{regime}' has no training rows left")
    counts: dict[str, Any] = train["origin"].value_counts().to_dict()
    return TrainingData(train, splits["val"], {str(k): int(v) for k, v in counts.items()}, notes)
