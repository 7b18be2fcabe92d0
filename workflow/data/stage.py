"""The data stage, file to file: manifest -> split -> sharded preprocessing -> final dataset.

Each function here is what one Snakemake rule does (the scripts in ``scripts/`` only parse arguments and
call it). Files written (all atomically, each with provenance):

- ``results/data/manifest.parquet`` and ``results/data/rejected_adapter.parquet`` (:func:`build`);
- ``results/data/split.parquet`` (manifest + ``split``) and ``results/data/split_report.json``
  (:func:`split`);
- ``results/data/shards/{k}.parquet`` (+ ``{k}.rejected.parquet``) and the PNGs under
  ``results/data/images/`` (:func:`preprocess_shard`);
- ``results/data/rejected.parquet``, every rejected or filtered row with its reason
  (:func:`merge_rejections`);
- ``results/data/dataset.parquet`` (split manifest + ``image``/``mask`` PNG paths) and
  ``results/data/data_report.json`` (:func:`finalize`), written only when the rejected fraction is within
  ``dataset.max_rejected_fraction``, no split is empty and no patient is in two splits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.common.provenance import frame_hash, provenance, write_json, write_parquet
from workflow.data import adapters, preprocess
from workflow.data import split as splitting

INVALID_STAGES = ("adapter", "preprocess")


def build(dataset: Mapping[str, Any], manifest_out: str, rejected_out: str) -> None:
    """Run the configured adapter and write the manifest and its rejection list."""
    result = adapters.build_manifest(dataset)
    meta = provenance(dataset) | {
        "rows": len(result.manifest),
        "manifest_sha256_16": frame_hash(result.manifest),
    }
    write_parquet(manifest_out, result.manifest, meta)
    write_parquet(rejected_out, result.rejected, provenance(dataset))


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


def split(
    manifest_in: str,
    rejected_in: str,
    labels: Sequence[str],
    settings: Mapping[str, Any],
    max_rejected_fraction: float,
    split_out: str,
    report_out: str,
) -> None:
    """Assign patient-level splits; refuse to go on if the adapter rejected too much or a patient leaks."""
    frame = pd.read_parquet(manifest_in)
    enforce_rejection_bound(pd.read_parquet(rejected_in), len(frame), max_rejected_fraction, rejected_in)
    frame["split"] = splitting.assign_splits(frame, labels, settings["fractions"], settings["seed"])
    splitting.check_no_leakage(frame, split_out)
    meta = provenance(settings, seeds={"split": settings["seed"]}, inputs={"manifest": manifest_in})
    write_parquet(split_out, frame, meta)
    write_json(
        report_out,
        {"provenance": meta, "fractions": dict(settings["fractions"])}
        | splitting.split_report(frame, labels),
    )


def preprocess_shard(
    split_in: str, settings: Mapping[str, Any], shard: int, images_dir: str, shard_out: str, rejected_out: str
) -> None:
    """Preprocess the rows of one shard (by patient) into ``images_dir``."""
    params = preprocess.PreprocessSettings(
        resolution=settings["resolution"],
        fit=settings["fit"],
        shards=settings["shards"],
        mask_classes=tuple(int(k) for k in settings["mask_classes"]),
        volume_reader=settings["volume_reader"],
    )
    if not 0 <= shard < params.shards:
        raise InputError(f"shard {shard} is outside 0..{params.shards - 1} (preprocess.shards)")
    frame = pd.read_parquet(split_in)
    mine = frame[preprocess.shard_of(frame["patient_id"], params.shards) == shard].reset_index(drop=True)
    Path(images_dir).mkdir(parents=True, exist_ok=True)
    processed, rejections = preprocess.preprocess_rows(mine, params, images_dir, source=split_in)
    meta = provenance(settings, inputs={"split": split_in}) | {"shard": shard}
    write_parquet(shard_out, processed, meta)
    write_parquet(rejected_out, rejections, meta)


def merge_rejections(parts: Sequence[str], rejected_out: str) -> None:
    """Concatenate the adapter's and every shard's rejection lists into one table."""
    frames = [pd.read_parquet(p) for p in parts]
    table = pd.concat(frames, ignore_index=True) if frames else manifest.empty_rejected()
    write_parquet(rejected_out, table.astype(manifest.REJECTED_COLUMNS), {"inputs": list(parts)})


def finalize(
    shards: Sequence[str],
    rejected_in: str,
    labels: Sequence[str],
    max_rejected_fraction: float,
    dataset_out: str,
    report_out: str,
) -> None:
    """Merge the shards into the final dataset after the rejection, emptiness and leakage checks."""
    frame = pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)
    frame = frame.sort_values("image_id", kind="stable").reset_index(drop=True)
    rejections = pd.read_parquet(rejected_in)
    enforce_rejection_bound(rejections, len(frame), max_rejected_fraction, rejected_in)
    splitting.check_no_leakage(frame, dataset_out)
    settings = {"labels": list(labels), "max_rejected_fraction": max_rejected_fraction}
    inputs = {"rejected": rejected_in} | {f"shard{i}": path for i, path in enumerate(shards)}
    meta = provenance(settings, inputs=inputs) | {
        "rows": len(frame),
        "dataset_sha256_16": frame_hash(frame),
    }
    write_parquet(dataset_out, frame, meta)
    write_json(
        report_out,
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
            "splits": splitting.split_report(frame, labels),
        },
    )
