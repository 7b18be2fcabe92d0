import json

import pandas as pd
import pytest

from workflow.common.errors import InputError
from workflow.common.manifest import empty_rejected, rejected
from workflow.data.settings import RejectionSettings
from workflow.data.stage import enforce_rejection_bound, finalize_dataset, rejected_fraction


def _rejections():
    return pd.concat(
        [
            rejected("adapter", "a.csv", [2, 3], ["x", "y"], ["image file not found"] * 2),
            rejected("preprocess", "s.parquet", [None], ["z"], ["unreadable image: truncated"]),
            rejected("filter", "a.csv", [4] * 5, list("abcde"), ["lateral view excluded"] * 5),
        ],
        ignore_index=True,
    )


def test_filtered_rows_do_not_count_as_rejected():
    assert rejected_fraction(_rejections(), n_kept=97) == pytest.approx(3 / 100)


def test_bound_error_lists_reasons_and_where_to_look():
    enforce_rejection_bound(_rejections(), 97, 0.03, "results/data/rejected.parquet")
    with pytest.raises(InputError) as err:
        enforce_rejection_bound(_rejections(), 97, 0.01, "results/data/rejected.parquet")
    message = str(err.value)
    assert "3 rows rejected (3.0%)" in message
    assert "2 x image file not found" in message
    assert "results/data/rejected.parquet" in message
    assert "lateral" not in message


def test_data_report_counts_images_with_missing_demographics(tmp_path):
    """Images without race (e.g. CheXpert patients without a demographics row) are kept and counted."""
    shard = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "patient_id": ["p1", "p2", "p3"],
            "split": ["train", "val", "test"],
            "sex": ["female", None, "male"],
            "age": [50.0, 60.0, None],
            "race": ["white", None, None],
            "ethnicity": [None, None, None],
        }
    )
    shard.to_parquet(tmp_path / "0.parquet")
    empty_rejected().to_parquet(tmp_path / "rejected.parquet")
    report = tmp_path / "data_report.json"
    finalize_dataset(
        [str(tmp_path / "0.parquet")], str(tmp_path / "rejected.parquet"), RejectionSettings((), 0.01),
        str(tmp_path / "dataset.parquet"), str(report),
    )  # fmt: skip
    missing = json.loads(report.read_text())["missing_demographics"]
    assert missing == {"sex": 1, "age": 1, "race": 2, "ethnicity": 3}
