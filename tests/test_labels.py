import numpy as np
import pandas as pd
import pytest

from workflow.common.errors import InputError
from workflow.data.labels import apply_label_policy

RAW = pd.DataFrame({"Edema": [1.0, 0.0, -1.0, np.nan], "Fracture": ["1", "", "-1", "0"]})


@pytest.mark.parametrize(
    ("uncertain", "blank", "expected"),
    [
        ("zeros", "zeros", [1.0, 0.0, 0.0, 0.0]),
        ("ones", "zeros", [1.0, 0.0, 1.0, 0.0]),
        ("ignore", "zeros", [1.0, 0.0, np.nan, 0.0]),
        ("zeros", "ignore", [1.0, 0.0, 0.0, np.nan]),
    ],
)
def test_policies_follow_chexpert_paper(uncertain, blank, expected):
    out = apply_label_policy(RAW, ["Edema"], uncertain=uncertain, blank=blank, source="t.csv")
    np.testing.assert_array_equal(out["label_Edema"].to_numpy(), np.array(expected))


def test_string_cells_are_parsed():
    out = apply_label_policy(RAW, ["Fracture"], uncertain="ones", blank="ignore", source="t.csv")
    np.testing.assert_array_equal(out["label_Fracture"].to_numpy(), [1.0, np.nan, 1.0, 0.0])


def test_invalid_value_names_file_row_and_column():
    raw = pd.DataFrame({"Edema": [1.0, 2.0]})
    with pytest.raises(InputError, match=r"'t\.csv' row 3 column 'Edema' holds 2\.0"):
        apply_label_policy(raw, ["Edema"], uncertain="zeros", blank="zeros", source="t.csv")
    raw = pd.DataFrame({"Edema": ["yes"]})
    with pytest.raises(InputError, match="row 2 column 'Edema' holds 'yes'"):
        apply_label_policy(raw, ["Edema"], uncertain="zeros", blank="zeros", source="t.csv")


def test_missing_label_column_says_how_to_fix():
    with pytest.raises(InputError, match=r"no column\(s\) \['Pneumonia'\]; fix dataset\.labels"):
        apply_label_policy(RAW, ["Pneumonia"], uncertain="zeros", blank="zeros", source="t.csv")
