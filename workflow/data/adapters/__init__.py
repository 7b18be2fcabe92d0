"""Dataset adapters: each turns one on-disk dataset layout into the normalised manifest.

``dataset.adapter`` in config.yaml picks one; its settings live under ``dataset.<adapter>``. An adapter is
a function ``(settings, spec) -> AdapterResult`` and never drops a row silently: rows it cannot use go to
the rejection table with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from workflow.common import manifest
from workflow.common.errors import InputError


@dataclass(frozen=True)
class DatasetSpec:
    """Settings common to every adapter (``dataset.*`` in config.yaml)."""

    labels: tuple[str, ...]
    uncertain_policy: str = "zeros"
    blank_policy: str = "zeros"
    tabular: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class AdapterResult:
    """A normalised manifest and the rows that were rejected (with reasons)."""

    manifest: pd.DataFrame
    rejected: pd.DataFrame


Adapter = Callable[[Mapping[str, Any], DatasetSpec], AdapterResult]


def _registry() -> dict[str, Adapter]:
    from workflow.data.adapters import chexpert, csv, imagefolder, mimic, volumes

    return {
        "chexpert": chexpert.build,
        "mimic-cxr": mimic.build,
        "csv": csv.build,
        "imagefolder": imagefolder.build,
        "volumes": volumes.build,
    }


def build_manifest(dataset: Mapping[str, Any]) -> AdapterResult:
    """Run the adapter selected by ``dataset.adapter`` and return a validated manifest.

    Args:
        dataset: the ``dataset`` section of the validated config.
    """
    name = dataset["adapter"]
    adapters = _registry()
    if name not in adapters:
        raise InputError(f"dataset.adapter = '{name}' is unknown; choose one of {sorted(adapters)}")
    settings = dataset.get(name) or {}
    spec = DatasetSpec(
        labels=tuple(dataset["labels"]),
        uncertain_policy=dataset["uncertain_policy"],
        blank_policy=dataset["blank_policy"],
        tabular=tuple(settings.get("tabular", {}) or ()),
    )
    result = adapters[name](settings, spec)
    table = manifest.normalise(result.manifest, spec.labels, spec.tabular)
    manifest.validate(table, source=f"dataset.adapter '{name}'")
    return AdapterResult(table, result.rejected.astype(manifest.REJECTED_COLUMNS))
