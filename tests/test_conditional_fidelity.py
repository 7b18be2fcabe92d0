"""Conditional fidelity (the real-data classifier on samples vs their prompts' labels) and the classifier as
a torch-fidelity feature extractor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from configs import validated
from PIL import Image
from torch import nn

from workflow.classifier import networks
from workflow.common.errors import InputError
from workflow.evaluation import conditional, extractors, stage
from workflow.evaluation.settings import ConditionalSettings, EvaluationSettings

SIZE = 16
LABELS = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax")


def brightness_classifier() -> networks.Classifier:
    """Logit of Cardiomegaly = 20 x (mean brightness - 0.5); the other findings' logits are constant."""
    head = nn.Linear(1, len(LABELS))
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[20.0], [0.0], [0.0]]))
        head.bias.zero_()
    backbone = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    model = networks.Classifier(backbone, networks.ModelSpec("custom", "adapt", LABELS, SIZE))
    model.mean.fill_(0.5)
    model.std.fill_(1.0)
    return model.eval()


@pytest.fixture
def samples(tmp_path) -> pd.DataFrame:
    """12 samples: bright ones prompted with cardiomegaly; effusion prompted at random; no pneumothorax
    column (the prompts never say)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        bright = i % 2 == 0
        path = tmp_path / f"s{i}.png"
        Image.fromarray(np.full((SIZE, SIZE), 200 if bright else 50, np.uint8)).save(path)
        row = {"image_id": f"synthetic/{i}", "image": str(path), "label_Cardiomegaly": float(bright)}
        rows.append(row | {"label_Pleural Effusion": float(rng.integers(0, 2))})
    return pd.DataFrame(rows)


def real_metrics(aurocs: dict[str, float]) -> dict:
    labels = {name: {"auroc": value, "threshold": {"value": 0.5}} for name, value in aurocs.items()}
    return {"labels": labels, "settings": {"ece_bins": 5}}


def test_samples_are_scored_against_their_prompts_beside_the_real_ceiling(samples):
    settings = ConditionalSettings.of(validated({"evaluation": {"conditional_fidelity": {"seed": 1}}}))
    spec = networks.ModelSpec("small-cnn", "adapt", LABELS, SIZE)
    ceiling = {"Cardiomegaly": 0.97, "Pleural Effusion": 0.93, "Pneumothorax": 0.6}
    result = conditional.score(
        samples, brightness_classifier(), spec, real_metrics(ceiling), settings, torch.device("cpu")
    )
    rows = result["labels"]
    assert rows["Cardiomegaly"]["auroc"] == 1.0 and rows["Cardiomegaly"]["real_test_auroc"] == 0.97
    assert rows["Cardiomegaly"]["auroc_ci"] == [1.0, 1.0]
    assert rows["Pleural Effusion"]["auroc"] == 0.5  # a constant score: chance
    assert rows["Pneumothorax"]["auroc"] is None and rows["Pneumothorax"]["missing"] == 12
    assert result["macro"]["auroc"] == 0.75
    detected = result["macro_detected"]
    assert detected["findings"] == ["Cardiomegaly", "Pleural Effusion"] and detected["auroc"] == 0.75
    assert result["images"] == 12


def test_penultimate_features_are_what_the_head_reads():
    torch.manual_seed(0)
    model = networks.build(networks.ModelSpec("small-cnn", "adapt", LABELS, SIZE)).eval()
    images = torch.rand(3, 1, SIZE, SIZE)
    features = model.penultimate(images)
    assert features.shape == (3, 256)
    torch.testing.assert_close(model.head()(features), model(images))


def test_the_real_classifier_serves_as_torch_fidelity_extractor(tmp_path):
    torch.manual_seed(0)
    spec = networks.ModelSpec("small-cnn", "adapt", LABELS, SIZE)
    model = networks.build(spec).eval()
    networks.save(str(tmp_path / "model.pt"), model, spec, {"weights": "random-init (demo)"})
    settings = EvaluationSettings.of(validated({"evaluation": {"extractor": "classifier"}}))
    extractor_spec = extractors.resolve(settings, "classifier", str(tmp_path / "model.pt"))
    assert extractor_spec.feature == "penultimate" and "random-init" not in extractor_spec.weights()
    extractor = extractor_spec.create(cuda=False)
    gray = torch.randint(0, 256, (2, 1, SIZE, SIZE), dtype=torch.uint8)
    (features,) = extractor(gray.expand(-1, 3, -1, -1).contiguous())
    with torch.no_grad():
        expected = model.penultimate(gray.float() / 255)
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(Exception, match=r"add real to classifier\.regimes"):
        extractors.resolve(settings, "classifier", None)


def test_the_classifier_extractor_gets_images_in_the_colour_it_was_trained_on():
    """evaluation.color converts the images before any extractor: a colour study's classifier must not be
    handed their luma (nor a grayscale one colour)."""
    colour = {"preprocess": {"color": "rgb"}, "evaluation": {"extractor": "classifier"}}
    with pytest.raises(InputError, match=r"evaluation\.color: grayscale images would reach the classifier"):
        EvaluationSettings.of(validated(colour))
    both = colour | {"evaluation": {"extractor": "classifier", "color": "rgb"}}
    assert EvaluationSettings.of(validated(both)).color == "rgb"


def test_a_classifier_of_colour_images_extracts_features_of_their_colour(tmp_path):
    """A colour study's classifier (preprocess.color rgb) sees the images' three channels as a feature
    extractor too (it saw their luma only before)."""
    torch.manual_seed(0)
    spec = networks.ModelSpec("small-cnn", "repeat", LABELS, SIZE, "rgb")
    model = networks.build(spec).eval()
    networks.save(str(tmp_path / "model.pt"), model, spec, {"weights": "random-init (demo)"})
    settings = EvaluationSettings.of(validated({"evaluation": {"extractor": "classifier"}}))
    extractor = extractors.resolve(settings, "classifier", str(tmp_path / "model.pt")).create(cuda=False)
    colour = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    (features,) = extractor(colour)
    with torch.no_grad():
        expected = model.penultimate(colour.float() / 255)
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)


def test_fid_json_holds_every_generators_conditional_fidelity(tmp_path):
    generators, reports, tables, results = ["sd-a", "sd-b"], [], [], []
    for k, name in enumerate(generators):
        reports.append(tmp_path / f"{name}.json")
        reports[-1].write_text(json.dumps({"feature_spaces": {"tiny": {"metrics": {"fid": float(k)}}}}))
        tables.append(tmp_path / f"{name}.csv")
        pd.DataFrame({"extractor": ["tiny"], "group": ["overall"], "fid": [float(k)]}).to_csv(tables[-1])
        row = {"auroc": 0.8 + k / 10, "real_test_auroc": 0.97}
        result = {"labels": {"Cardiomegaly": row}, "macro": {"auroc": row["auroc"]}}
        results.append(tmp_path / f"{name}.conditional.json")
        results[-1].write_text(json.dumps(result | {"macro_detected": {"auroc": row["auroc"]}}))
    paths = [list(map(str, files)) for files in (reports, tables)]
    fid, table = str(tmp_path / "fid.json"), str(tmp_path / "fid.csv")
    stage.collect_image_metrics(generators, *paths, fid, table, [str(p) for p in results])
    collected = json.loads(Path(fid).read_text())
    summary = collected["conditional_fidelity"]
    assert summary["sd-b"] == {
        "macro_auroc": 0.9,
        "macro_auroc_detected": 0.9,
        "auroc": {"Cardiomegaly": 0.9},
        "real_test_auroc": {"Cardiomegaly": 0.97},
    }
    assert collected["generators"]["sd-a"]["conditional_fidelity"]["macro"] == {"auroc": 0.8}
    stage.collect_image_metrics(generators, *paths, fid, table)
    assert json.loads(Path(fid).read_text())["conditional_fidelity"].startswith("not computed")
