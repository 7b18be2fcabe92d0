"""The data stage, file to file: phantoms -> manifest -> split -> sharded preprocessing -> final dataset.

One function per rule of ``rules/data.smk``, named after it (``scripts/data.py`` only parses the
arguments). Files written (all atomically, each with provenance):

- ``results/phantoms/CheXpert-v1.0-phantom/`` the demo dataset (:func:`make_phantoms`);
- ``results/phantoms/CT-phantom/`` 3D CT phantoms for the ``volumes`` adapter, made only when a study reads
  them (:func:`make_phantom_volumes`);
- ``results/data/manifest.parquet`` and ``results/data/rejected_adapter.parquet`` (:func:`build_manifest`);
- ``results/data/split.parquet`` (manifest + ``split``) and ``results/data/split_report.json``, which says
  whether the split was drawn here (``stratified``) or is the dataset's own (``predefined``)
  (:func:`split_dataset`);
- ``results/data/shards/{k}.parquet`` (+ ``{k}.rejected.parquet``) and the PNGs under
  ``results/data/images/`` (:func:`preprocess_shard`);
- ``results/data/rejected.parquet``, every rejected or filtered row with its reason
  (:func:`merge_rejections`);
- ``results/data/dataset.parquet`` (split manifest + ``image``/``mask`` PNG paths) and
  ``results/data/data_report.json`` (:func:`finalize_dataset`), written only when the rejected fraction is
  within ``dataset.max_rejected_fraction``, no split is empty and no patient is in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from workflow.common import manifest as schema
from workflow.common.errors import InputError
from workflow.common.files import write_json, write_parquet
from workflow.common.provenance import frame_hash, provenance
from workflow.data import adapters, phantom_volumes, phantoms, preprocess
from workflow.data import split as splitting
from workflow.data.settings import DatasetSettings, PreprocessSettings, RejectionSettings, SplitSettings

INVALID_STAGES = ("adapter", "preprocess")
DEMOGRAPHICS = ("sex", "age", "race", "ethnicity")
"""Manifest fields whose missing values ``data_report.json`` counts (``missing_demographics``)."""


def make_phantoms(settings: phantoms.PhantomSettings, out: str) -> None:
    """The demo dataset: procedural chest X-ray phantoms in CheXpert's layout under ``out``."""
    phantoms.generate(settings, out)


def make_phantom_volumes(settings: phantoms.PhantomSettings, out: str) -> None:
    """3D CT phantoms, label volumes and ``volumes.csv`` (the ``volumes`` adapter's table) under ``out``."""
    phantom_volumes.generate_volumes(settings, out)


def build_manifest(dataset: DatasetSettings, manifest: str, rejected: str) -> None:
    """Run the configured adapter and write the manifest and its rejection list."""
    result = adapters.build_manifest(dataset)
    meta = provenance(dataset) | {
        "rows": len(result.manifest),
        "manifest_sha256_16": frame_hash(result.manifest),
        "adapter_summary": result.summary,
    }
    write_parquet(manifest, result.manifest, meta)
    write_parquet(rejected, result.rejected, provenance(dataset))


def rejected_fraction(rejections: pd.DataFrame, n_kept: int) -> float:
    """Invalid rows over all rows meant to be used (rows excluded by a config filter do not count)."""
    invalid = int(rejections["stage"].isin(INVALID_STAGES).sum())
    return invalid / max(n_kept + invalid, 1)


def enforce_rejection_bound(rejections: pd.DataFrame, n_kept: int, bound: float, listing: str) -> None:
    """Raise when more than ``bound`` of the rows were rejected as invalid; the message lists the reasons."""
    fraction = rejected_fraction(rejections, n_kept)
    if fraction <= bound:
        return
    invalid = rejections[rejections["stage"].isin(INVALID_STAGES)]
    counts = invalid.groupby("reason").size().sort_values(ascending=False).head(5)
    reasons = "; ".join(f"{n} x {reason}" for reason, n in counts.items())
    raise InputError(
        f"{len(invalid)} rows rejected ({fraction:.1%}), more than dataset.max_rejected_fraction = {bound}. "
        f"Most common reasons: {reasons}. Full list: {listing}. Fix the data or paths, or raise the bound."
    )


def split_dataset(
    manifest: str, rejected: str, settings: SplitSettings, checks: RejectionSettings, split: str, report: str
) -> None:
    """Assign patient-level splits (drawn here, or the dataset's own with ``split.predefined``); refuse to go
    on if the adapter rejected too much or a patient leaks."""
    frame = pd.read_parquet(manifest)
    enforce_rejection_bound(pd.read_parquet(rejected), len(frame), checks.max_rejected_fraction, rejected)
    if settings.predefined:
        frame["split"], how = splitting.predefined_splits(
            frame, checks.labels, settings.fractions, settings.seed
        )
        mode = {"mode": "predefined", "predefined": how}
    else:
        frame["split"] = splitting.assign_splits(frame, checks.labels, settings.fractions, settings.seed)
        mode = {"mode": "stratified"}
    splitting.check_no_leakage(frame, split)
    meta = provenance(settings, seeds={"split": settings.seed}, inputs={"manifest": manifest})
    write_parquet(split, frame, meta)
    write_json(
        report,
        {"provenance": meta, "fractions": dict(settings.fractions)}
        | mode
        | splitting.split_report(frame, checks.labels),
    )


def preprocess_shard(
    split: str, settings: PreprocessSettings, shard: int, images: str, table: str, rejected: str
) -> None:
    """Preprocess the rows of one shard (by patient) into the folder ``images``."""
    if not 0 <= shard < settings.shards:
        raise InputError(f"shard {shard} is outside 0..{settings.shards - 1} (preprocess.shards)")
    frame = pd.read_parquet(split)
    mine = frame[preprocess.shard_of(frame["patient_id"], settings.shards) == shard].reset_index(drop=True)
    Path(images).mkdir(parents=True, exist_ok=True)
    processed, rejections = preprocess.preprocess_rows(mine, settings, images, source=split)
    meta = provenance(settings, inputs={"split": split}) | {"shard": shard}
    write_parquet(table, processed, meta)
    write_parquet(rejected, rejections, meta)


def merge_rejections(parts: Sequence[str], rejected: str) -> None:
    """Concatenate the adapter's and every shard's rejection lists into one table."""
    frames = [pd.read_parquet(p) for p in parts]
    merged = pd.concat(frames, ignore_index=True) if frames else schema.empty_rejected()
    write_parquet(rejected, merged.astype(schema.REJECTED_COLUMNS), {"inputs": list(parts)})


def finalize_dataset(
    shards: Sequence[str], rejected: str, checks: RejectionSettings, dataset: str, report: str
) -> None:
    """Merge the shards into the final dataset after the rejection, emptiness and leakage checks."""
    frame = pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)
    frame = frame.sort_values("image_id", kind="stable").reset_index(drop=True)
    rejections = pd.read_parquet(rejected)
    enforce_rejection_bound(rejections, len(frame), checks.max_rejected_fraction, rejected)
    splitting.check_no_leakage(frame, dataset)
    inputs = {"rejected": rejected} | {f"shard{i}": path for i, path in enumerate(shards)}
    meta = provenance(checks, inputs=inputs) | {
        "rows": len(frame),
        "dataset_sha256_16": frame_hash(frame),
    }
    write_parquet(dataset, frame, meta)
    write_json(
        report,
        {
            "provenance": meta,
            "images": len(frame),
            "patients": int(frame["patient_id"].nunique()),
            "rejected": {
                "invalid": int(rejections["stage"].isin(INVALID_STAGES).sum()),
                "filtered": int((rejections["stage"] == "filter").sum()),
                "fraction": rejected_fraction(rejections, len(frame)),
                "by_reason": rejections.groupby("reason").size().to_dict(),
            },
            "missing_demographics": {
                field: int(frame[field].isna().sum()) for field in DEMOGRAPHICS if field in frame
            },
            "splits": splitting.split_report(frame, checks.labels),
        },
    )
