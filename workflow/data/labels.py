"""Finding labels and the uncertain-label policy.

CheXpert (Irvin et al., AAAI 2019, section 3 "Uncertainty approaches") encodes each finding as 1 (positive),
0 (negative), -1 (uncertain) or blank (not mentioned). The paper compares three ways of training with
uncertain labels, all selectable here through ``dataset.uncertain_policy``:

- ``zeros`` (U-Zeros): uncertain counts as negative;
- ``ones`` (U-Ones): uncertain counts as positive;
- ``ignore`` (U-Ignore): uncertain becomes missing (NaN) and is masked out of losses and metrics.

Blank means "not mentioned in the report" and is negative in CheXpert's own evaluation; ``blank_policy``
can make it missing instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from workflow.common.errors import InputError, where
from workflow.common.manifest import label_column

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

UncertainPolicy = Literal["zeros", "ones", "ignore"]
BlankPolicy = Literal["zeros", "ignore"]

_UNCERTAIN = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}
_BLANK = {"zeros": 0.0, "ignore": np.nan}


def apply_label_policy(
    raw: pd.DataFrame,
    labels: Sequence[str],
    *,
    uncertain: UncertainPolicy,
    blank: BlankPolicy,
    source: str,
    row_offset: int = 2,
) -> pd.DataFrame:
    """Turn raw CheXpert-coded label columns into manifest label columns (1, 0 or NaN).

    Args:
        raw: table with one column per name in ``labels`` holding 1, 0, -1 or blank.
        labels: finding names to keep, in output order.
        uncertain: policy for -1 (see module docstring).
        blank: policy for blank cells.
        source: file name used in error messages.
        row_offset: added to the 0-based position to report rows as a spreadsheet shows them
            (2 for a CSV with a header line).

    Raises:
        InputError: a label column is missing or holds a value other than 1, 0, -1 or blank.
    """
    missing = [name for name in labels if name not in raw]
    if missing:
        raise InputError(
            f"{where(source)} has no column(s) {missing}; fix dataset.labels in config.yaml or the CSV"
        )
    out = pd.DataFrame(index=raw.index)
    for name in labels:
        values = pd.to_numeric(raw[name], errors="coerce")
        unparsable = values.isna() & raw[name].notna() & (raw[name].astype(str).str.strip() != "")
        invalid = unparsable | ~(values.isin([1.0, 0.0, -1.0]) | values.isna())
        if invalid.any():
            pos = int(np.flatnonzero(invalid.to_numpy())[0])
            raise InputError(
                f"{where(source, pos + row_offset, name)} holds {raw[name].tolist()[pos]!r}; "
                "labels must be 1, 0, -1 (uncertain) or blank"
            )
        coded = np.select(
            [values == 1.0, values == 0.0, values == -1.0],
            [1.0, 0.0, _UNCERTAIN[uncertain]],
            default=_BLANK[blank],
        )
        out[label_column(name)] = coded
    return out
