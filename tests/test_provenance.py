import json

import pandas as pd
import pytest

from workflow.common.provenance import (
    atomic_path,
    config_hash,
    frame_hash,
    provenance,
    read_parquet_meta,
    write_json,
    write_parquet,
)


def test_config_hash_ignores_key_order_but_not_values():
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_parquet_carries_provenance(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("data")
    meta = provenance({"k": 1}, seeds={"split": 3}, inputs={"in": source}, weights="none")
    frame = pd.DataFrame({"x": [1, 2]})
    write_parquet(tmp_path / "t.parquet", frame, meta)
    stored = read_parquet_meta(tmp_path / "t.parquet")
    assert stored["seeds"] == {"split": 3}
    assert stored["config_hash"] == config_hash({"k": 1})
    assert stored["inputs"]["in"]["sha256_16"] == meta["inputs"]["in"]["sha256_16"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame)
    write_json(tmp_path / "m.json", {"provenance": meta})
    assert json.loads((tmp_path / "m.json").read_text())["provenance"]["weights"] == "none"


def test_frame_hash_tracks_content():
    frame = pd.DataFrame({"x": [1, 2], "y": ["a", "b"]})
    assert frame_hash(frame) == frame_hash(frame.copy())
    assert frame_hash(frame) != frame_hash(frame.assign(y=["a", "c"]))
    assert frame_hash(frame) != frame_hash(frame.rename(columns={"y": "z"}))
