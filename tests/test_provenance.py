"""Provenance records and the one atomic writer of files and folders."""

import json

import pandas as pd
import pytest
from configs import validated

from workflow.common.files import atomic_output, read_parquet_meta, write_json, write_parquet
from workflow.common.provenance import config_hash, frame_hash, provenance
from workflow.data.settings import SplitSettings


def test_config_hash_ignores_key_order_but_not_values():
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_config_hash_of_settings_equals_that_of_their_section():
    """The hash a result records is that of its config section as the rules see it (defaults filled in)."""
    section = validated({"split": {"seed": 3}})["split"]
    assert config_hash(SplitSettings.from_dict(section)) == config_hash(section)


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_folder_replaces_the_old_one_only_when_complete(tmp_path):
    target = tmp_path / "models"
    with atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


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
