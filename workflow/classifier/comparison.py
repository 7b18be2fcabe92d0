"""One table across training regimes: does training on synthetic images help? (rule ``compare_classifiers``)

One row per regime, from its ``metrics.json``, ``fairness.json`` and ``focus.json``:

- ``training_rows``: training images (real + synthetic + counterfactual);
- ``macro_<metric>`` (test, macro mean over findings) and the bootstrap CI of macro AUROC and AUPRC;
- per fairness attribute: ``<attribute>_max_auroc_gap`` and ``<attribute>_max_eod`` (the largest subgroup
  AUROC gap and equalized-odds difference over findings) and ``<attribute>_underdiagnosis_gap``;
- ``cam_mean_entropy``, ``cam_mean_sparsity_85``, ``cam_mean_region_fraction`` (Grad-CAM focus);
- ``auroc[<finding>]``: test AUROC per finding.

Empty cells are undefined values (their reasons are in the regime's JSON files). Written as
``results/classifier/comparison.csv`` and ``comparison.json`` (the same rows with provenance).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from workflow.classifier.metrics import MACRO_METRICS
from workflow.common.provenance import atomic_path, provenance, write_json


def _largest(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return max(defined) if defined else None


def regime_row(
    regime: str, scores: dict[str, Any], fair: dict[str, Any], focus: dict[str, Any]
) -> dict[str, Any]:
    """The comparison row of one regime from its three JSON reports."""
    macro = scores["macro"]
    row: dict[str, Any] = {
        "regime": regime,
        "training_rows": sum(scores["training"]["training_rows"].values()),
    }
    row |= {f"macro_{m}": macro[m] for m in MACRO_METRICS}
    for statistic in ("auroc", "auprc"):
        low, high = macro.get(f"{statistic}_ci") or (None, None)
        row |= {f"macro_{statistic}_ci_low": low, f"macro_{statistic}_ci_high": high}
    for attribute, block in fair["attributes"].items():
        labels = block["labels"].values()
        row[f"{attribute}_max_auroc_gap"] = _largest([r["gaps"]["auroc"]["value"] for r in labels])
        row[f"{attribute}_max_eod"] = _largest([r["equalized_odds_difference"]["value"] for r in labels])
        row[f"{attribute}_underdiagnosis_gap"] = block["underdiagnosis"].get("gap", {}).get("value")
    overall = focus["overall"]
    row |= {f"cam_{k}": overall[k] for k in ("mean_entropy", "mean_sparsity_85", "mean_region_fraction")}
    return row | {f"auroc[{name}]": r["auroc"] for name, r in scores["labels"].items()}


def compare(
    regimes: Sequence[str],
    metrics_paths: Sequence[str],
    fairness_paths: Sequence[str],
    focus_paths: Sequence[str],
    csv_out: str,
    json_out: str,
) -> None:
    """Write the regime comparison table (CSV) and the same rows with provenance (JSON)."""
    rows = [
        regime_row(regime, *(json.loads(Path(p).read_text()) for p in paths))
        for regime, *paths in zip(regimes, metrics_paths, fairness_paths, focus_paths, strict=True)
    ]
    table = pd.DataFrame(rows)
    with atomic_path(csv_out) as tmp:
        table.to_csv(tmp, index=False)
    kinds = {"metrics": metrics_paths, "fairness": fairness_paths, "focus": focus_paths}
    inputs = {f"{kind}[{r}]": p for kind, paths in kinds.items() for r, p in zip(regimes, paths, strict=True)}
    meta = provenance({"regimes": list(regimes)}, inputs=inputs)
    write_json(
        json_out,
        {"provenance": meta, "rows": table.astype(object).where(table.notna(), None).to_dict("records")},
    )
