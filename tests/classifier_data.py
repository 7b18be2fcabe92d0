"""Fabricated image datasets for the classifier tests: tiny PNGs whose findings are visible by construction.

Finding ``A`` is a bright square (top left), ``B`` a bright bar (bottom); ``C`` is never positive in the
training split (so it must be skipped). Masks mark the square's place as class 1 and the bar's as class 2 on
every image, whether or not the finding is there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from workflow.classifier.settings import EvaluationSettings, FairnessSettings, FocusSettings, TrainSettings
from workflow.common.manifest import label_column

LABELS = ("A", "B", "C")
MASK_CLASSES = ["background", "square", "bar"]
REGIONS = {"A": ["square"], "B": ["bar"]}
SIZE = 32
SPLIT_OF_DIGIT = ["train"] * 6 + ["val"] * 2 + ["test"] * 2


def _png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return str(path)


def fabricate(
    root: Path, n: int = 80, seed: int = 0, prefix: str = "p", split: str | None = None
) -> pd.DataFrame:
    """``n`` one-image patients with PNGs under ``root``, split by patient number (or all in ``split``)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:14, 4:14], mask[22:28, 6:26] = 1, 2
    for i in range(n):
        a, b = rng.random() < 0.5, rng.random() < 0.4
        image = 60 + 40 * rng.random((SIZE, SIZE))
        image[4:14, 4:14] += 120 * a
        image[22:28, 6:26] += 120 * b
        patient = f"{prefix}{i:04d}"
        this_split = split or SPLIT_OF_DIGIT[i % 10]
        rows.append(
            {
                "image_id": f"{patient}/s1",
                "patient_id": patient,
                "path": f"{patient}.png",
                "split": this_split,
                "image": _png(root / f"{patient}.png", image),
                "mask": _png(root / f"{patient}_mask.png", mask),
                "sex": ["female", "male"][i % 2],
                "age": float(20 + (i * 7) % 70),
                "race": ["Asian", "Black", "White"][i % 3],
                "site": "site_a",
                label_column("A"): float(a),
                label_column("B"): float(b),
                label_column("C"): float(this_split == "test" and i % 20 == 9),
            }
        )
    return pd.DataFrame(rows)


def training_settings(**changes: Any) -> TrainSettings:
    """classifier.training for tests: small CNN, 32 px, two epochs."""
    settings = {
        "backbone": "small-cnn",
        "weights": "random",
        "channels": "repeat",
        "image_size": SIZE,
        "epochs": 2,
        "min_epochs": 0,
        "patience": 5,
        "selection": "val_auroc",
        "batch_size": 16,
        "learning_rate": 0.003,
        "weight_decay": 0.0001,
        "augment_shift": 0.06,
        "augment_intensity": 0.1,
        "loader_workers": 0,
        "seed": 5,
        "log_with": "none",
    }
    return TrainSettings.from_dict(settings | changes)


EVALUATION = EvaluationSettings.from_dict(
    {
        "threshold": "youden",
        "fixed_threshold": 0.5,
        "ece_bins": 10,
        "bootstrap_resamples": 50,
        "confidence": 0.95,
        "batch_size": 32,
        "seed": 9,
    }
)
FAIRNESS = FairnessSettings.from_dict(
    {
        "attributes": ["sex", "age_group", "race", "site"],
        "age_bins": [30, 50, 70],
        "missing": "unknown",
        "no_finding_label": "No Finding",
    }
)
FOCUS = FocusSettings.from_dict(
    {"images": 4, "overlays": 2, "regions": REGIONS, "mask_classes": MASK_CLASSES, "seed": 9}
)
