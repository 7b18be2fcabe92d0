"""Grad-CAM focus metrics: hand-computed entropy, sparsity and region fraction, and a CAM run end to end."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from classifier_data import FOCUS, MASK_CLASSES, fabricate

from workflow.classifier import cam, networks


def test_entropy_sparsity_and_region_fraction_by_hand():
    uniform = cam.distribution(np.ones((2, 2)))
    assert cam.entropy(uniform) == pytest.approx(math.log(4))
    assert cam.entropy(np.array([1.0, 0.0, 0.0])) == 0.0
    assert cam.sparsity(uniform) == 1.0  # 3 pixels hold 0.75 < 0.85
    assert cam.sparsity(np.array([0.5, 0.1, 0.3, 0.1])) == 0.75  # 0.5 + 0.3 + 0.1
    assert cam.sparsity(np.array([0.15, 0.85])) == 0.5
    mask = np.array([[0, 2], [2, 1]])
    p = cam.distribution(np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert cam.region_fraction(p, mask, [2]) == pytest.approx(0.5)
    assert cam.region_fraction(p, mask, [1, 2]) == pytest.approx(0.9)
    assert cam.distribution(np.zeros((3, 3))) is None


def test_regions_are_mask_class_ids_and_unavailable_ones_are_named():
    ids, unavailable = cam.region_ids({"A": ["square"], "B": ["bar", "square"]}, MASK_CLASSES)
    assert ids == {"A": [1], "B": [2, 1]} and unavailable == {}
    ids, unavailable = cam.region_ids({"A": ["heart"], "B": ["bar"]}, MASK_CLASSES)
    assert ids == {"B": [2]}
    assert unavailable["A"].startswith("classifier.focus.regions['A'] = ['heart']: ['heart'] not in")


def test_focus_without_the_regions_masks_reports_what_it_can(tmp_path):
    """A dataset with no mask classes for the default regions (every preset: [background]) used to stop
    classifier_focus with an InputError; now the CAM metrics come without region fractions, and say why."""
    test = fabricate(tmp_path, n=20, split="test").assign(mask=None)
    spec = networks.ModelSpec("small-cnn", "repeat", ("A", "B"), 32)
    torch.manual_seed(0)
    model = networks.build(spec).eval()
    settings = replace(FOCUS, mask_classes=("background",))
    report, overlays = cam.focus(model, spec, test, settings)
    assert set(report["regions_unavailable"]) == {"A", "B"}
    assert report["cases"] and all(case["region_fraction"] is None for case in report["cases"])
    assert report["overall"]["mean_entropy"] is not None and overlays


def test_focus_explains_positive_findings_of_seeded_test_images(tmp_path):
    test = fabricate(tmp_path, n=20, split="test")
    spec = networks.ModelSpec("small-cnn", "repeat", ("A", "B"), 32)
    torch.manual_seed(0)
    model = networks.build(spec).eval()
    report, overlays = cam.focus(model, spec, test, replace(FOCUS, seed=3))
    again, _ = cam.focus(model, spec, test, replace(FOCUS, seed=3))
    assert [c["image_id"] for c in report["cases"]] == [c["image_id"] for c in again["cases"]]
    assert len({c["image_id"] for c in report["cases"]}) == FOCUS.images
    assert len(overlays) == FOCUS.overlays and overlays[0][0].shape == (32, 32, 3)
    for case in report["cases"]:
        row = test.set_index("image_id").loc[case["image_id"]]
        assert row[f"label_{case['label']}"] == 1
        if case["entropy"] is not None:
            assert 0 <= case["entropy"] <= report["entropy_max"]
            assert 0 < case["sparsity_85"] <= 1 and 0 <= case["region_fraction"] <= 1
    assert report["overall"]["cams"] == len(report["cases"])
    assert set(report["labels"]) <= {"A", "B"}
