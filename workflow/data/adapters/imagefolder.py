"""Image-folder adapter: the layout of diffusers' and Hugging Face ``datasets``' ``imagefolder`` loader.

Layout: a folder (``dataset.imagefolder.root``) holding the images and a ``metadata.jsonl`` with one JSON
object per line; ``file_name`` is the image path relative to the folder and the other keys are fields::

    root/
      metadata.jsonl     {"file_name": "img/0001.png", "patient": "P7", "text": "...", "Edema": 1}
      img/0001.png

Fields are mapped exactly as in the CSV adapter (``columns``, ``label_columns``, ``tabular``; see
:mod:`workflow.data.adapters.csv`) except that ``columns.path`` defaults to ``file_name``. A patient id field
is required because splits keep each patient's images together. Rejections report the line number in
``metadata.jsonl`` (first line = 1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from workflow.common.errors import InputError, where
from workflow.data.adapters.base import AdapterResult, DatasetSpec, setting
from workflow.data.adapters.csv import frame_from_columns

METADATA = "metadata.jsonl"


def build(settings: Mapping[str, Any], spec: DatasetSpec) -> AdapterResult:
    """Build the manifest from ``<root>/metadata.jsonl`` (settings: ``dataset.imagefolder``).

    Settings:
        root: the image folder holding ``metadata.jsonl`` (required).
        columns: manifest field -> JSON key, as for the CSV adapter; ``path`` defaults to ``file_name``
            and ``patient_id`` is required.
        label_columns: finding name -> JSON key; default: the finding name.
        tabular: manifest field -> JSON key, copied into ``tab_<field>``.
    """
    root = Path(setting(settings, "imagefolder", "root"))
    metadata = root / METADATA
    if not metadata.is_file():
        raise InputError(
            f"dataset.imagefolder.root = '{root}' has no {METADATA}; the folder needs one with a JSON "
            "object per line naming the image ('file_name', relative to the folder), the patient id "
            "and the labels"
        )
    table = read_jsonl(metadata)
    return frame_from_columns(
        table,
        settings,
        spec,
        adapter="imagefolder",
        source=str(metadata),
        root=root,
        row_offset=1,
        defaults={"path": "file_name"},
    )


def read_jsonl(path: Path) -> pd.DataFrame:
    """Read a JSON-lines file into a table with one row per line.

    Blank lines are allowed only at the end of the file, so that row positions match line numbers.

    Raises:
        InputError: a line is not a JSON object (the error names the file and the line number), or the
            file holds no objects.
    """
    lines = path.read_text(encoding="utf-8").rstrip().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problem = "blank" if not line.strip() else f"not valid JSON ({err.msg})"
            raise InputError(
                f"{where(path)} line {number} is {problem}; every line must be one JSON object such "
                'as {"file_name": "img/0001.png", ...}'
            ) from err
        if not isinstance(record, dict):
            raise InputError(
                f"{where(path)} line {number} holds a {type(record).__name__}, not a JSON object; "
                'every line must be one object such as {"file_name": "img/0001.png", ...}'
            )
        records.append(record)
    if not records:
        raise InputError(f"{where(path)} is empty; it needs one JSON object per image")
    return pd.DataFrame.from_records(records)
