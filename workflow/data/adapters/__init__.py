"""Dataset adapters: each turns one on-disk dataset layout into the normalised manifest.

``dataset.adapter`` in config.yaml picks one; its settings live under ``dataset.<adapter>``. An adapter is
a function ``(settings, spec) -> AdapterResult`` and never drops a row silently: rows it cannot use go to
the rejection table with a reason.

:data:`TABLE_FILES` lists, per adapter, the settings that name the table files it reads; rule
``build_manifest`` takes them as inputs (:func:`table_files`), so editing any of them rebuilds the manifest.
Images, masks and volumes are read later, by preprocessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.data.adapters import pcam
from workflow.data.adapters.base import Adapter, AdapterResult, DatasetSpec

if TYPE_CHECKING:
    from workflow.data.settings import DatasetSettings

TABLE_FILES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "chexpert": (("csv", None), ("demographics_csv", None)),
    "mimic-cxr": (("metadata_csv", None), ("labels_csv", None), ("demographics_csv", None)),
    "csv": (("csv", None),),
    "imagefolder": (("root", "metadata.jsonl"),),
    "volumes": (("table", None),),
    "chestxray14": (("csv", None), ("train_val_list", None), ("test_list", None)),
    "pcam": tuple(("root", name) for name in pcam.FILES),
}
"""Adapter -> ``(setting, file inside it)``: the settings of ``dataset.<adapter>`` naming the tables it reads
(a path, a list of paths or null), with the file's name when the setting names a folder."""


def _registry() -> dict[str, Adapter]:
    from workflow.data.adapters import chestxray14, chexpert, csv, imagefolder, mimic, volumes

    return {
        "chexpert": chexpert.build,
        "chestxray14": chestxray14.build,
        "pcam": pcam.build,
        "mimic-cxr": mimic.build,
        "csv": csv.build,
        "imagefolder": imagefolder.build,
        "volumes": volumes.build,
    }


def table_files(adapter: str, settings: Mapping[str, Any]) -> list[str]:
    """The table files ``adapter`` reads with its settings ``dataset.<adapter>`` (:data:`TABLE_FILES`)."""
    files = []
    for key, inside in TABLE_FILES[adapter]:
        value = settings.get(key)
        for path in value if isinstance(value, list) else [value]:
            if path is not None:
                files.append(str(Path(path) / inside) if inside else str(path))
    return files


def build_manifest(dataset: DatasetSettings) -> AdapterResult:
    """Run the adapter selected by ``dataset.adapter`` and return a validated manifest."""
    name = dataset.adapter
    adapters = _registry()
    if name not in adapters:
        raise InputError(f"dataset.adapter = '{name}' is unknown; choose one of {sorted(adapters)}")
    settings = dataset.adapter_settings()
    spec = DatasetSpec(
        labels=dataset.labels,
        uncertain_policy=dataset.uncertain_policy,
        blank_policy=dataset.blank_policy,
        tabular=tuple(settings.get("tabular", {}) or ()),
        mask_classes=tuple(dataset.mask_classes),
    )
    result = adapters[name](settings, spec)
    table = manifest.normalise(result.manifest, spec.labels, spec.tabular)
    manifest.validate(table, source=f"dataset.adapter '{name}'")
    return AdapterResult(table, result.rejected.astype(manifest.REJECTED_COLUMNS), result.summary)
