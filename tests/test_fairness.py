"""Subgroup metrics on a toy table whose gaps and equalized-odds difference are known by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow.classifier import fairness
from workflow.classifier.settings import FairnessSettings

# group a: TPR 2/3, FPR 1/3, AUROC 8/9; group b: TPR 1/2, FPR 0, AUROC 7/8 (threshold 0.5);
# two rows without sex: TPR 0, FPR 1, AUROC 0.
Y = [1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0]
S = [0.9, 0.8, 0.3, 0.2, 0.1, 0.6, 0.7, 0.4, 0.45, 0.3, 0.2, 0.1, 0.1, 0.9]
SEX = ["a"] * 6 + ["b"] * 6 + [None, None]
BOOT = {"resamples": 100, "confidence": 0.95, "seed": 0}


def _assess(missing: str = "unknown", attributes: tuple[str, ...] = ("sex",)) -> dict:
    test = pd.DataFrame({"sex": pd.array(SEX, dtype="string"), "age": [25.0] * 7 + [75.0] * 7})
    dataset = pd.concat([test, pd.DataFrame({"sex": pd.array(["c"], dtype="string"), "age": [40.0]})])
    truth, scores = pd.DataFrame({"F": np.array(Y, float)}), pd.DataFrame({"F": S})
    settings = FairnessSettings(attributes, (30, 50, 70), missing, "F")
    thresholds = {"F": {"value": 0.5}}
    return fairness.assess(test, truth, scores, thresholds, dataset, settings, BOOT)["attributes"]


def test_known_gaps_and_equalized_odds_difference_excluding_missing():
    sex = _assess(missing="exclude")["sex"]
    assert sex["missing"] == {"policy": "exclude", "rows": 2}
    label = sex["labels"]["F"]
    a, b = label["by_group"]["a"], label["by_group"]["b"]
    assert (a["n"], a["positives"], b["n"], b["positives"]) == (6, 3, 6, 2)
    assert a["auroc"] == pytest.approx(8 / 9) and b["auroc"] == pytest.approx(7 / 8)
    assert (a["tpr"], a["fpr"], b["tpr"], b["fpr"]) == pytest.approx((2 / 3, 1 / 3, 1 / 2, 0))
    assert label["gaps"]["auroc"]["value"] == pytest.approx(8 / 9 - 7 / 8)
    assert label["gaps"]["tpr"]["value"] == pytest.approx(1 / 6)
    assert label["gaps"]["fpr"]["max"] == ["a", pytest.approx(1 / 3)]
    assert label["equalized_odds_difference"]["value"] == pytest.approx(1 / 3)
    assert a["auroc_ci"][0] <= a["auroc"] <= a["auroc_ci"][1]


def test_missing_attribute_forms_an_unknown_group_outside_the_disparities_and_empty_groups_are_listed():
    sex = _assess()["sex"]
    assert sex["groups"] == ["a", "b", "c", "unknown"]
    assert sex["missing"] == {"policy": "unknown", "rows": 2}
    by_group = sex["labels"]["F"]["by_group"]
    assert by_group["c"] == {"n": 0, "note": "no test image in this group"}
    assert by_group["unknown"]["tpr"] == 0 and by_group["unknown"]["fpr"] == 1
    # the images without a recorded sex are reported but are not a group the disparities compare: with them,
    # TPR gap 2/3 and FPR gap 1 made an equalized-odds difference of 1 (the worst possible) out of two rows
    odds = sex["labels"]["F"]["equalized_odds_difference"]
    assert odds["value"] == pytest.approx(1 / 3) and odds["groups"] == ["a", "b"]
    assert odds["excluded"] == {"unknown": "attribute not recorded: not a group"}
    assert sex["labels"]["F"]["gaps"]["fpr"]["max"] == ["a", pytest.approx(1 / 3)]
    assert sex["underdiagnosis"]["by_group"]["unknown"] == 1
    assert sex["underdiagnosis"]["gap"]["value"] == pytest.approx(1 / 3)


def test_groups_with_one_class_are_null_with_reason_and_left_out_of_equalized_odds():
    age = _assess(attributes=("age_group",))["age_group"]
    assert age["groups"] == ["<=30", "31-50", "51-70", "71+"]
    label = age["labels"]["F"]
    young = label["by_group"]["<=30"]  # rows 0-6: positives and negatives
    old = label["by_group"]["71+"]  # rows 7-13: y = 1 0 0 0 0 1 0
    assert young["n"] == 7 and old["n"] == 7
    assert label["by_group"]["31-50"]["note"] == "no test image in this group"
    one_class = pd.DataFrame({"sex": pd.array(["a", "a", "b", "b"], dtype="string"), "age": [1.0] * 4})
    report = fairness.assess(
        one_class,
        pd.DataFrame({"F": [1.0, 0.0, 1.0, 1.0]}),
        pd.DataFrame({"F": [0.9, 0.1, 0.8, 0.2]}),
        {"F": {"value": 0.5}},
        one_class,
        FairnessSettings(("sex",), (30,), "unknown", "No Finding"),
        BOOT,
    )["attributes"]["sex"]
    b = report["labels"]["F"]["by_group"]["b"]
    assert b["auroc"] is None and b["undefined"]["auroc"] == "only positives (no negative image)"
    odds = report["labels"]["F"]["equalized_odds_difference"]
    assert odds["value"] is None and odds["excluded"] == {"b": "only one class in this group"}
    assert report["labels"]["F"]["gaps"]["auroc"]["value"] is None
    assert report["underdiagnosis"]["value"] is None and "No Finding" in report["underdiagnosis"]["reason"]


def test_age_groups_follow_the_configured_bins():
    frame = pd.DataFrame({"age": [18.0, 30.0, 31.0, 50.0, 70.0, 71.0, np.nan]})
    groups = fairness.attribute_values(frame, "age_group", [30, 50, 70]).tolist()
    assert groups[:6] == ["<=30", "<=30", "31-50", "31-50", "51-70", "71+"]
    assert pd.isna(groups[6])
    assert fairness.age_group_names([40, 65]) == ["<=40", "41-65", "66+"]
