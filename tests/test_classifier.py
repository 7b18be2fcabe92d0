"""Training: masked loss, label selection, determinism, checkpoint resume, backbones and weights."""

from __future__ import annotations

import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from classifier_data import LABELS, fabricate, training_settings
from configs import validated

from workflow.classifier import networks, regimes, training
from workflow.common import checkpoints
from workflow.common.errors import InputError
from workflow.common.interruption import Stopped
from workflow.common.manifest import label_column


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pd.DataFrame:
    return fabricate(tmp_path_factory.mktemp("images"), n=60)


def _fit(dataset: pd.DataFrame, work_dir, **changes) -> training.FitResult:
    settings = training_settings(**changes)
    data = regimes.training_data("real", dataset, {}, 1.0, settings.seed)
    spec = networks.ModelSpec(
        settings.backbone, settings.channels, ("A", "B"), settings.image_size, settings.color
    )
    return training.fit(data, spec, settings, str(work_dir), "fingerprint", torch.device("cpu"))


def _same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_masked_bce_ignores_missing_labels_in_value_and_gradient():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]], requires_grad=True)
    targets = torch.tensor([[1.0, float("nan")], [0.0, float("nan")]])
    loss = training.masked_bce(logits, targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 0])
    assert torch.isclose(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, 1] == 0).all()


def test_labels_without_positives_are_skipped_with_a_reason(dataset):
    train = dataset[dataset["split"] == "train"].copy()
    train.loc[:, label_column("B")] = np.nan
    train.iloc[0, train.columns.get_loc(label_column("B"))] = 1.0
    kept, skipped = training.trainable_labels(train, LABELS)
    assert kept == ["A"]
    assert skipped == {"B": "no negative training image", "C": "no positive training image"}
    with pytest.raises(InputError, match="no finding"):
        training.trainable_labels(train, ["C"])


@pytest.fixture(scope="module")
def whole(dataset, tmp_path_factory) -> training.FitResult:
    """An uninterrupted run, 3 epochs."""
    return _fit(dataset, tmp_path_factory.mktemp("whole"), epochs=3, patience=1)


def test_same_seed_same_model_and_resume_reaches_the_same_result(dataset, whole, tmp_path, monkeypatch):
    again = _fit(dataset, tmp_path / "again", epochs=3, patience=1)
    assert _same_weights(whole.model, again.model)
    assert whole.history == again.history

    real_save, saved = checkpoints.save, []

    def killed_after_two(folder, state, keep):
        real_save(folder, state, keep)
        saved.append(state["step"])
        if len(saved) == 2:
            raise KeyboardInterrupt("job killed")

    monkeypatch.setattr(checkpoints, "save", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        _fit(dataset, tmp_path / "resumed", epochs=3, patience=1)
    monkeypatch.setattr(checkpoints, "save", real_save)
    assert [p.name.split("-")[1] for p in (tmp_path / "resumed").glob("checkpoint-*.pt")] == ["00000002"]
    resumed = _fit(dataset, tmp_path / "resumed", epochs=3, patience=1)
    assert _same_weights(whole.model, resumed.model)
    assert resumed.history == whole.history
    assert resumed.best_epoch == whole.best_epoch


def test_sigterm_mid_epoch_saves_the_epoch_so_far_and_the_rerun_continues_it(
    dataset, whole, tmp_path, monkeypatch
):
    """Slurm's time limit sends SIGTERM: the batch in progress finishes, the epoch so far is saved and the
    process exits with 143; the rerun continues that epoch and ends where an uninterrupted run ends."""
    real_augment, calls = training.augment, []

    def augment_then_signal(*args):
        calls.append(1)
        if len(calls) == 5:  # 3 batches an epoch: the second batch of the second epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return real_augment(*args)

    monkeypatch.setattr(training, "augment", augment_then_signal)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped:
        _fit(dataset, tmp_path, epochs=3, patience=1)
    assert stopped.value.code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) == handler
    saved = checkpoints.newest(tmp_path, "fingerprint")
    assert saved["step"] == 1 and saved["epoch_progress"]["batches"] == 2 and len(saved["history"]) == 1
    resumed = _fit(dataset, tmp_path, epochs=3, patience=1)
    assert len(calls) == 3 * len(whole.history)  # no batch trained twice
    assert _same_weights(whole.model, resumed.model) and resumed.history == whole.history
    assert resumed.stops == [{"step": 1, "signal": "SIGTERM", "slurm_job_id": None}]


def test_checkpoints_of_other_settings_are_not_resumed(dataset, tmp_path):
    _fit(dataset, tmp_path, epochs=1)
    fresh = training.fit(
        regimes.training_data("real", dataset, {}, 1.0, 5),
        networks.ModelSpec("small-cnn", "repeat", ("A", "B"), 32),
        training_settings(epochs=1),
        str(tmp_path),
        "other fingerprint",
        torch.device("cpu"),
    )
    assert len(fresh.history) == 1
    assert checkpoints.newest(tmp_path, "fingerprint") is None


def test_training_learns_the_fabricated_findings(dataset, tmp_path):
    result = _fit(dataset, tmp_path, epochs=4, learning_rate=0.01)
    assert result.selection == "val macro AUROC"
    assert result.history[-1]["val_macro_auroc"] > 0.8
    scores = training.predict(
        result.model,
        dataset,
        networks.ModelSpec("small-cnn", "repeat", ("A", "B"), 32),
        32,
        torch.device("cpu"),
    )
    assert list(scores.columns) == ["A", "B"] and scores.index.name == "image_id"
    assert scores.to_numpy().min() >= 0 and scores.to_numpy().max() <= 1


# Scripted validation results per epoch: the lowest loss (epoch 2) and the highest AUROC (epoch 3) differ.
VAL_LOSS = [0.9, 0.5, 0.7, 0.8, 0.6, 0.95, 0.99]
VAL_AUROC = [0.6, 0.7, 0.9, 0.65, 0.66, 0.5, 0.4]


@pytest.mark.parametrize(
    ("selection", "min_epochs", "best", "stopped_after"),
    [("val_loss", 0, 2, 4), ("val_auroc", 0, 3, 5), ("val_loss", 6, 2, 6)],
)
def test_selection_keeps_the_best_epoch_of_its_criterion_and_stops_on_it(
    dataset, tmp_path, monkeypatch, selection, min_epochs, best, stopped_after
):
    """val_loss (the LoRA-fairness study) keeps the lowest-loss epoch, val_auroc the highest-AUROC one; early
    stopping counts epochs without improvement of the same criterion, and never before min_epochs."""
    weights = []

    def scripted(model, table, settings, where):
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return VAL_LOSS[len(weights) - 1], VAL_AUROC[len(weights) - 1]

    monkeypatch.setattr(training, "validate", scripted)
    result = _fit(dataset, tmp_path, epochs=7, patience=2, min_epochs=min_epochs, selection=selection)
    assert result.best_epoch == best and result.stopped_early
    assert len(result.history) == stopped_after
    assert [row["val_loss"] for row in result.history] == VAL_LOSS[:stopped_after]
    assert result.selection == {"val_loss": "lowest val loss", "val_auroc": "val macro AUROC"}[selection]
    kept = result.model.state_dict()
    assert all(torch.equal(kept[k], weights[best - 1][k]) for k in kept)


def test_selection_score_without_a_defined_auroc_falls_back_to_the_loss():
    assert training.selection_score("val_loss", 0.4, 0.9) == (-0.4, "lowest val loss")
    assert training.selection_score("val_auroc", 0.4, 0.9) == (0.9, "val macro AUROC")
    score, name = training.selection_score("val_auroc", 0.4, None)
    assert score == -0.4 and name.startswith("lowest val loss (no finding has positives and negatives")


def test_augmentation_and_batches_are_seeded():
    images = torch.rand(5, 1, 16, 16)
    first = training.augment(images, np.random.default_rng([1, 0]), 0.1, 0.2)
    second = training.augment(images, np.random.default_rng([1, 0]), 0.1, 0.2)
    assert torch.equal(first, second) and first.shape == images.shape
    assert not torch.equal(first, images)
    batches = training.epoch_batches(9, 4, np.random.default_rng(0))
    assert [len(b) for b in batches] == [4, 5]  # a last batch of one joins the one before
    assert sorted(i for b in batches for i in b) == list(range(9))


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121"])
@pytest.mark.parametrize("channels", ["repeat", "adapt"])
def test_torchvision_backbones_take_gray_images(backbone, channels):
    torch.manual_seed(0)
    model = networks.build(networks.ModelSpec(backbone, channels, ("A", "B", "C"), 32)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == (3 if channels == "repeat" else 1)
    assert networks.cam_layer(model) is not None


def test_resnet50_at_the_studys_320_px():
    """The LoRA-fairness classifier input (Resize 320 x 320): image_size is all it takes; Grad-CAM reads a
    10 x 10 map."""
    torch.manual_seed(0)
    model = networks.build(networks.ModelSpec("resnet50", "repeat", ("A", "B"), 320)).eval()
    maps = []
    networks.cam_layer(model).register_forward_hook(lambda module, args, out: maps.append(out.shape))
    with torch.no_grad():
        assert model(torch.rand(1, 1, 320, 320)).shape == (1, 2)
    assert maps == [(1, 2048, 10, 10)]


def test_weights_from_a_file_and_their_errors(tmp_path):
    torch.manual_seed(1)
    source = networks.build(networks.ModelSpec("resnet18", "repeat", ("A",), 32))
    path = tmp_path / "r18.pt"
    torch.save(source.backbone.state_dict(), path)
    loaded = networks.build(networks.ModelSpec("resnet18", "adapt", ("A", "B"), 32), str(path))
    assert torch.allclose(loaded.backbone.conv1.weight, source.backbone.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(loaded.backbone.layer1[0].conv1.weight, source.backbone.layer1[0].conv1.weight)
    assert networks.describe_weights(str(path)).startswith(f"file {path} (sha256_16 ")
    assert networks.describe_weights("random") == "random-init (demo)"
    with pytest.raises(InputError, match="not a torchvision resnet50 state dict"):
        networks.build(networks.ModelSpec("resnet50", "repeat", ("A",), 32), str(path))
    with pytest.raises(InputError, match="neither 'random', 'imagenet' nor an existing file"):
        networks.build(networks.ModelSpec("resnet18", "repeat", ("A",), 32), str(tmp_path / "absent.pt"))


@pytest.mark.parametrize(("channels", "color"), [("adapt", "grayscale"), ("repeat", "rgb")])
def test_saved_model_rebuilds_identically(tmp_path, channels, color):
    spec = networks.ModelSpec("small-cnn", channels, ("A", "B"), 32, color)
    torch.manual_seed(2)
    model = networks.build(spec).eval()
    networks.save(str(tmp_path / "model.pt"), model, spec, {"weights": "random-init (demo)"})
    loaded, loaded_spec, meta = networks.load(str(tmp_path / "model.pt"))
    assert loaded_spec == spec and meta == {"weights": "random-init (demo)"}
    images = torch.rand(3, 3 if color == "rgb" else 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


def colour_findings(root) -> pd.DataFrame:
    """The fabricated dataset in colour: finding A's square is red with A and green without, at the same
    luma (PIL's 'L', 0.299 R + 0.587 G + 0.114 B: 76 for both), so only colour tells A (PCam's H&E stains
    carry their findings in colour the same way)."""
    from PIL import Image

    rows = fabricate(root, n=60)
    for row in rows.itertuples():
        rgb = np.repeat(np.asarray(Image.open(row.image))[..., None], 3, axis=2)
        rgb[4:14, 4:14] = (255, 0, 0) if getattr(row, label_column("A")) else (0, 130, 0)
        Image.fromarray(rgb).save(row.image)
    return rows


def test_colour_images_train_a_classifier_that_sees_colour(tmp_path):
    """preprocess.color rgb: the classifier reads three channels and learns a finding that only colour shows
    (it read every image as grayscale before, where A's red and green squares are the same)."""
    from sklearn.metrics import roc_auc_score

    from workflow.classifier.settings import TrainSettings
    from workflow.common.figures import load_gray

    data = colour_findings(tmp_path / "images")
    positive, negative = (data[data[label_column("A")] == v]["image"].iloc[0] for v in (1.0, 0.0))
    assert np.array_equal(load_gray(positive, 32)[6:12, 6:12], load_gray(negative, 32)[6:12, 6:12])
    study = validated({"preprocess": {"color": "rgb"}})
    settings = TrainSettings.of(study)
    assert settings.color == "rgb"
    with pytest.raises(InputError, match=r"classifier\.training\.channels"):
        TrainSettings.of(
            validated({"preprocess": {"color": "rgb"}, "classifier": {"training": {"channels": "adapt"}}})
        )
    result = _fit(data, tmp_path, color="rgb", epochs=4, learning_rate=0.01)
    assert next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 3
    spec = networks.ModelSpec("small-cnn", "repeat", ("A", "B"), 32, "rgb")
    test = data[data["split"] != "train"]
    scores = training.predict(result.model, test, spec, 32, torch.device("cpu"))
    assert roc_auc_score(test[label_column("A")], scores["A"]) > 0.9


def test_a_model_saved_before_colour_input_loads_as_grayscale(tmp_path):
    """model.pt files written before ModelSpec had `color` load (KeyError before), reading grayscale."""
    spec = networks.ModelSpec("small-cnn", "repeat", ("A",), 32)
    model = networks.build(spec).eval()
    payload = {
        "state_dict": model.state_dict(),
        "spec": {k: v for k, v in vars(spec).items() if k != "color"},
    }
    torch.save(payload | {"provenance": {}}, tmp_path / "old.pt")
    assert networks.load(str(tmp_path / "old.pt"))[1] == spec
    with pytest.raises(InputError, match=r"classifier\.training\.channels: adapt"):
        networks.ModelSpec("resnet18", "adapt", ("A",), 32, "rgb")  # a one-channel network for colour images
