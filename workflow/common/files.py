"""Writing outputs atomically: one writer for files and folders, and the JSON, CSV, text and parquet helpers
built on it.

Every output goes through :func:`atomic_output`: the caller writes a file *or* builds a folder at a temporary
path next to the target, and only when that succeeded is it renamed onto the target (``os.replace``, atomic
within a file system; a folder already at the target is removed first). A job killed midway leaves the
previous output, or none, never a half-written one; its temporary ``.<name>.<random>.tmp`` is removed on
failure and is otherwise harmless.

Parquet files carry the step's provenance in their schema metadata (key ``synthmed``), read back with
:func:`read_parquet_meta`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from workflow.common.provenance import canonical_json

METADATA_KEY = b"synthmed"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write a file or create a folder there. On success it
    replaces ``path`` in one rename; on failure it is removed and ``path`` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        if tmp.is_dir():
            tmp.chmod(0o755)  # folders made by tempfile-like code may be private; outputs are not
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """Write ``frame`` as CSV without its index, atomically."""
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_parquet(
    path: str | os.PathLike[str], frame: pd.DataFrame, meta: Mapping[str, Any] | None = None
) -> None:
    """Write ``frame`` to parquet atomically; ``meta`` (e.g. provenance) goes into the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if meta:
        merged = dict(table.schema.metadata or {})
        merged[METADATA_KEY] = canonical_json(meta).encode()
        table = table.replace_schema_metadata(merged)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def write_nifti(path: str | os.PathLike[str], array: Any, affine: Any) -> None:
    """``array`` as a NIfTI-1 image with ``affine`` (nibabel), gzipped when ``path`` ends in ``.gz`` with no
    time stamp in the gzip header, so equal arrays give byte-identical files."""
    import gzip

    import nibabel as nib

    data = nib.Nifti1Image(array, affine).to_bytes()
    with atomic_output(path) as tmp:
        tmp.write_bytes(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def read_parquet_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the synthmed metadata (provenance) stored by :func:`write_parquet`, or ``{}``."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Hard-link ``source`` to ``target`` (no copy of the bytes), or copy it across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
