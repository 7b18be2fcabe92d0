"""Provenance records: where every result came from.

Every result file says where it came from: the hash of the settings the step used, the seeds, the content
hash of each input file and the weights. JSON outputs carry it as a ``provenance`` block, parquet files in
their metadata (:mod:`workflow.common.files`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd

_CHUNK = 1 << 20


def _plain(obj: Any) -> Any:
    """JSON form of what :func:`json.dumps` does not know: settings dataclasses as mappings, else text."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return str(obj)


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` to JSON with sorted keys and no whitespace, so equal objects hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_plain)


def config_hash(config: Mapping[str, Any] | Any) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON form of a config mapping or settings object."""
    plain = dict(config) if isinstance(config, Mapping) else config
    return hashlib.sha256(canonical_json(plain).encode()).hexdigest()[:16]


def file_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a data frame (values, index and column names), independent of file encoding."""
    values = pd.util.hash_pandas_object(frame, index=True).to_numpy()
    digest = hashlib.sha256(values.tobytes())
    digest.update(canonical_json([str(c) for c in frame.columns]).encode())
    return digest.hexdigest()[:16]


def provenance(
    config: Mapping[str, Any] | Any,
    *,
    seeds: Mapping[str, int] | None = None,
    inputs: Mapping[str, str | os.PathLike[str]] | None = None,
    weights: str = "none",
) -> dict[str, Any]:
    """Build the provenance block stored in every result file.

    Args:
        config: the settings the step used, a mapping or a settings dataclass (hashed, not copied).
        seeds: named seeds used by the step.
        inputs: named input files; each is recorded with its content hash.
        weights: which model weights were used (``"none"`` for steps without a model,
            ``"random-init (demo)"`` for randomly initialised models).
    """
    return {
        "generator": "synthmed",
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config_hash": config_hash(config),
        "seeds": dict(seeds or {}),
        "inputs": {name: {"path": str(p), "sha256_16": file_hash(p)} for name, p in (inputs or {}).items()},
        "weights": weights,
    }
