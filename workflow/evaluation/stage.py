"""The evaluation stage, file to file: image quality of every generator's synthetic set.

One function per rule of ``rules/evaluation.smk``, named after it:

- :func:`image_metrics` (one job per generator): ``results/evaluation/<generator>/image_metrics.json``
  (provenance, extractor and its weights, resize policy, counts, seed, overall and per-group FID, KID and
  precision/recall, warnings, feature-cache keys: :mod:`workflow.evaluation.fidelity`) and ``per_group.csv``
  (one row per group, the first the overall one);
- :func:`collect_image_metrics`: ``results/fid.json``, one section per generator, and
  ``results/fid_per_class.csv``, every generator's rows with a ``generator`` column. ``snakemake
  results/fid.json`` builds exactly what these need.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from workflow.common.files import write_csv, write_json
from workflow.common.model_card import read_card
from workflow.common.provenance import provenance
from workflow.evaluation import fidelity
from workflow.evaluation.settings import EvaluationSettings

log = logging.getLogger(__name__)


def image_metrics(
    dataset: str,
    samples: str,
    prompts: str,
    settings: EvaluationSettings,
    extractor: str | None,
    report: str,
    table: str,
) -> None:
    """A generator's synthetic set against the reference split, overall and per group.

    Args:
        dataset: ``results/data/dataset.parquet``.
        samples: the generator's manifest, ``results/samples/<generator>/manifest.parquet``.
        prompts: the prompts table of the reference split (prompt ids of the real images).
        extractor: the extractor's local folder or weights file when the workflow tracks one, else None.

    Raises:
        InputError: for an empty reference split or synthetic set, or a missing image.
    """
    import torch
    import torch_fidelity

    from workflow.evaluation import extractors
    from workflow.evaluation.features import FeatureCache, resolve_policy

    split = settings.reference_split
    real, fake = fidelity.read_sets(dataset, samples, prompts, split)
    spec = extractors.resolve(settings, extractor)
    policy = resolve_policy(settings, real["image"].tolist(), fake["image"].tolist())
    cuda = torch.cuda.is_available()
    cache = FeatureCache(settings.cache_dir, spec, policy, cuda, settings.batch_size)
    fake_features, fake_key = cache.features(fake["image"].tolist(), samples)
    real_features, real_key = cache.features(real["image"].tolist(), f"{dataset} split {split}")
    overall = fidelity.compare(fake_features, real_features, settings)
    rows = [
        fidelity.evaluate_group(group, fake_features, real_features, settings)
        for group in fidelity.groups(fake, real, settings.slice_bins)
    ]
    weights = spec.weights()
    warnings = list(overall["warnings"])
    if "random-init" in weights:
        warnings.append(f"{weights}: the numbers check the plumbing and do not measure image quality")
    for warning in warnings:
        log.warning(warning)
    computed = sum(row["reason"] is None for row in rows)
    log.info("overall FID %s; %d of %d groups computed", overall["fid"], computed, len(rows))

    card = read_card(spec.location)
    seeds = {"kid": settings.seed} | ({"tiny_extractor": card["seed"]} if "seed" in card else {})
    inputs = {"dataset": dataset, "samples": samples, "prompts": prompts}
    described = {"weights": weights, "feature_dim": int(real_features.shape[1])}
    runtime = {"device": "cuda" if cuda else "cpu", "torch_fidelity": torch_fidelity.__version__}
    groups = {
        f"per_{kind}": {r["name"]: fidelity.clean(r) for r in rows if r["group"] == kind}
        for kind in fidelity.GROUP_KINDS
    }
    slicewise = {"volumes": fidelity.has_volumes(real), "definition": fidelity.SLICEWISE}
    write_json(
        report,
        {
            "provenance": provenance(settings, seeds=seeds, inputs=inputs, weights=weights),
            "extractor": cache.identity | described | runtime,
            "resize_policy": policy.describe(),
            "seed": settings.seed,
            "reference": {"split": split, "images": len(real), "volumes": fidelity.volume_count(real)},
            "synthetic": {
                "images": len(fake),
                "prompts": fake["prompt_id"].nunique(),
                "volumes": fidelity.volume_count(fake),
            },
            "metrics": fidelity.clean(overall),
            "slicewise": slicewise | {"bins": settings.slice_bins},
            **groups,
            "warnings": warnings,
            "feature_cache": {"dir": settings.cache_dir, "synthetic": fake_key, "real": real_key},
        },
    )
    frame = pd.DataFrame([{"group": "overall", "name": "all", "prompt": None} | overall, *rows])
    frame["kid_subset_size"] = frame["kid_subset_size"].astype("Int64")
    frame["warnings"] = frame["warnings"].map("; ".join)
    write_csv(table, frame)


def collect_image_metrics(
    generators: Sequence[str], reports: Sequence[str], tables: Sequence[str], fid: str, fid_table: str
) -> None:
    """Every generator's image quality in one JSON (a section each) and one CSV (a ``generator`` column)."""
    pairs = list(zip(generators, reports, tables, strict=True))
    sections = {name: json.loads(Path(path).read_text()) for name, path, _ in pairs}
    inputs = {f"report[{name}]": report for name, report, _ in pairs}
    inputs |= {f"table[{name}]": table for name, _, table in pairs}
    write_json(
        fid,
        {"provenance": provenance({"generators": list(generators)}, inputs=inputs), "generators": sections},
    )
    frames = [pd.read_csv(path).assign(generator=name) for name, _, path in pairs]
    merged = pd.concat(frames, ignore_index=True)
    write_csv(fid_table, merged[["generator", *(c for c in merged.columns if c != "generator")]])
