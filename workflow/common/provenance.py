"""Provenance records and atomic output writing.

Every result file says where it came from: the hash of the (validated) config, the seeds used, the hash of
its input manifest and the weights used. Writers go through a temporary file in the same folder followed by
``os.replace`` so that a killed job never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

_CHUNK = 1 << 20


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` to JSON with sorted keys and no whitespace, so equal objects hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON form of a config mapping."""
    return hashlib.sha256(canonical_json(dict(config)).encode()).hexdigest()[:16]


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
    config: Mapping[str, Any],
    *,
    seeds: Mapping[str, int] | None = None,
    inputs: Mapping[str, str | os.PathLike[str]] | None = None,
    weights: str = "none",
) -> dict[str, Any]:
    """Build the provenance block stored in every result file.

    Args:
        config: the validated workflow config (hashed, not copied).
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(
    path: str | os.PathLike[str], frame: pd.DataFrame, meta: Mapping[str, Any] | None = None
) -> None:
    """Write ``frame`` to parquet atomically; ``meta`` (e.g. provenance) goes into the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if meta:
        merged = dict(table.schema.metadata or {})
        merged[b"synthmed"] = canonical_json(meta).encode()
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the synthmed metadata (provenance) stored by :func:`write_parquet`, or ``{}``."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(b"synthmed")
    return json.loads(raw) if raw else {}
