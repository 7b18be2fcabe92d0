"""One table across classifier runs: does training on synthetic images help? (rule ``compare_classifiers``)

One row per run (a regime and the source of its extra images), from its ``metrics.json``, ``fairness.json``
and ``focus.json``:

- ``training_rows``: training images (real + synthetic + counterfactual);
- ``findings``: how many findings its macro AUROC averages, and ``skipped_findings``, those it could not
  train on (no positive or no negative training image: a synthetic set whose prompts never name a rare
  finding), with their reasons in its ``training.json``;
- ``macro_<metric>`` (test, macro mean over findings) and the bootstrap CI of macro AUROC and AUPRC;
- ``macro_auroc_shared``: the macro test AUROC over the findings every run of the table has an AUROC for
  (:func:`with_shared_macro`), the one macro that compares runs on the same findings;
- per fairness attribute: ``<attribute>_max_auroc_gap`` and ``<attribute>_max_eod`` (the largest subgroup
  AUROC gap and equalized-odds difference over findings) and ``<attribute>_underdiagnosis_gap``;
- ``cam_mean_entropy``, ``cam_mean_sparsity_85``, ``cam_mean_region_fraction`` (Grad-CAM focus);
- ``auroc[<finding>]``: test AUROC per finding.

Empty cells are undefined values (their reasons are in the run's JSON files). Written as
``results/classifier/comparison.csv`` and ``comparison.json`` (the same rows with provenance) by
:func:`workflow.classifier.stage.compare_classifiers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from workflow.classifier.metrics import MACRO_METRICS


def _largest(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return max(defined) if defined else None


def run_row(run: str, scores: dict[str, Any], fair: dict[str, Any], focus: dict[str, Any]) -> dict[str, Any]:
    """The comparison row of one run from its three JSON reports."""
    macro = scores["macro"]
    row: dict[str, Any] = {
        "run": run,
        "regime": scores["regime"],
        "training_rows": sum(scores["training"]["training_rows"].values()),
        "findings": len(set(scores["labels"]) - set(macro.get("excluded", {}).get("auroc", []))),
        "skipped_findings": "; ".join(sorted(scores["training"]["skipped_labels"])),
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


def with_shared_macro(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """``rows`` (:func:`run_row`) with ``macro_auroc_shared``, the mean test AUROC over the findings whose
    AUROC every row has (a run's own macro averages only the findings it trained on and could score), and
    those shared findings in order."""
    shared = [
        column.removeprefix("auroc[").removesuffix("]")
        for column in rows[0]
        if column.startswith("auroc[") and all(row.get(column) is not None for row in rows)
    ]
    out = []
    for row in rows:
        values = [row[f"auroc[{name}]"] for name in shared]
        out.append(row | {"macro_auroc_shared": float(np.mean(values)) if values else None})
    return out, shared
