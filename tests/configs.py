"""Configs as the workflow sees them: validated against the schema, defaults filled in."""

from __future__ import annotations

import builtins
import copy
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import pytest
from snakemake.utils import validate

from workflow.data.settings import DatasetSettings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "resources" / "config.schema.yaml")
TABLES = (".csv", ".csv.gz", ".jsonl", ".xlsx", ".txt")


def validated(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` validated against the schema, with every default filled in (what the rules see).
    Without a dataset section it reads a CheXpert CSV (the demo's adapter)."""
    config = copy.deepcopy(config)
    config.setdefault("dataset", {}).setdefault("chexpert", {"csv": "x.csv", "image_root": "."})
    validate(config, SCHEMA)
    return config


def dataset_settings(section: dict[str, Any]) -> DatasetSettings:
    """``DatasetSettings`` of a ``dataset`` section that may leave out mask classes and rejection bound."""
    defaults = {"mask_classes": ["background"], "max_rejected_fraction": 0.01}
    return DatasetSettings.from_dict(defaults | section)


def tables_opened(monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]) -> set[str]:
    """The table files (CSV, gzipped CSV, JSON lines, Excel, text lists, HDF5) ``action`` opens."""
    opened: set[str] = set()
    real_open = builtins.open
    real_h5 = h5py.File

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | Path) and str(file).endswith(TABLES):
            opened.add(str(Path(file)))
        return real_open(file, *args, **kwargs)

    def spy_h5(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.add(str(Path(file)))
        return real_h5(file, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", spy)
        patch.setattr(io, "open", spy)
        patch.setattr(h5py, "File", spy_h5)
        action()
    return opened
