import pandas as pd
import pytest

from workflow.common.errors import InputError
from workflow.common.manifest import rejected
from workflow.data.stage import enforce_rejection_bound, rejected_fraction


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
