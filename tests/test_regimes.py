"""Training rows of the regimes, built from fabricated real, synthetic and counterfactual manifests."""

from __future__ import annotations

import pandas as pd
import pytest
from classifier_data import LABELS, fabricate
from configs import validated

from workflow.classifier import regimes
from workflow.common.errors import InputError
from workflow.common.manifest import label_column


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, pd.DataFrame]:
    root = tmp_path_factory.mktemp("regimes")
    real = fabricate(root / "real", n=50)
    synthetic = fabricate(root / "synthetic", n=30, seed=1, prefix="synthetic/", split="train")
    counterfactual = fabricate(root / "cf", n=10, seed=2, prefix="cf", split="train")
    # two counterfactuals are edits of a real validation and a real test image: they must not train
    held_out = real.loc[real["split"].isin(["val", "test"]), "patient_id"].iloc[[0, -1]].tolist()
    counterfactual.loc[:1, "patient_id"] = held_out
    paths = {}
    for name, frame in {"synthetic": synthetic, "counterfactual": counterfactual}.items():
        paths[name] = str(root / f"{name}.parquet")
        frame.drop(columns=["split"]).to_parquet(paths[name])
    return {"real": real, "synthetic": synthetic, "counterfactual": counterfactual, "paths": paths}


def _extras(frames, notes=None) -> dict[str, pd.DataFrame]:
    return {name: regimes.read_extra(path, LABELS, notes or []) for name, path in frames["paths"].items()}


def test_real_regime_trains_on_the_real_train_split_and_selects_on_val(frames):
    data = regimes.training_data("real", frames["real"], {}, 1.0, 0)
    real = frames["real"]
    assert set(data.train["image_id"]) == set(real.loc[real["split"] == "train", "image_id"])
    assert set(data.val["image_id"]) == set(real.loc[real["split"] == "val", "image_id"])
    assert data.counts == {"real": 30}


def test_synthetic_regime_trains_on_synthetic_rows_only(frames):
    data = regimes.training_data("synthetic", frames["real"], _extras(frames), 1.0, 0)
    assert data.counts == {"synthetic": 30}
    assert data.train["image_id"].str.startswith("synthetic/").all()
    assert (data.val["split"] == "val").all()


def test_mixed_regime_draws_synthetic_rows_per_real_row_with_the_seed(frames):
    half = regimes.training_data("mixed", frames["real"], _extras(frames), 0.5, 0)
    assert half.counts == {"real": 30, "synthetic": 15}
    same = regimes.training_data("mixed", frames["real"], _extras(frames), 0.5, 0)
    other = regimes.training_data("mixed", frames["real"], _extras(frames), 0.5, 1)
    assert half.train["image_id"].tolist() == same.train["image_id"].tolist()
    assert half.train["image_id"].tolist() != other.train["image_id"].tolist()
    double = regimes.training_data("mixed", frames["real"], _extras(frames), 2.0, 0)
    assert double.counts == {"real": 30, "synthetic": 30}
    assert double.notes == ["mixed: 60 synthetic rows wanted, only 30 available; all used"]


def test_counterfactuals_of_held_out_patients_never_train(frames):
    data = regimes.training_data("real+counterfactual", frames["real"], _extras(frames), 1.0, 0)
    assert data.counts == {"real": 30, "counterfactual": 8}
    assert data.notes == ["2 counterfactual rows excluded: their patient is in the real val or test split"]
    test_patients = set(frames["real"].loc[frames["real"]["split"] == "test", "patient_id"])
    assert not test_patients & set(data.train["patient_id"])


def test_counterfactuals_all_of_held_out_patients_stop_the_regime(frames):
    """The default editing split is test: the guard removed every row and the regime silently trained on the
    real images alone, reported as real+counterfactual."""
    extras = _extras(frames)
    extras["counterfactual"] = extras["counterfactual"].iloc[:2]  # the two edits of val and test images
    with pytest.raises(InputError, match=r"editing.split: train"):
        regimes.training_data("real+counterfactual", frames["real"], extras, 1.0, 0)


def test_missing_label_columns_are_noted_and_missing_sources_named(frames, tmp_path):
    path = tmp_path / "no_b.parquet"
    frames["synthetic"].drop(columns=[label_column("B")]).to_parquet(path)
    notes: list[str] = []
    extra = regimes.read_extra(str(path), LABELS, notes)
    assert extra[label_column("B")].isna().all()
    assert notes == [f"{path} has no label column for ['B']: counted as missing (not in the loss)"]
    with pytest.raises(InputError, match=r"regime 'mixed' needs a synthetic manifest"):
        regimes.training_data("mixed", frames["real"], {}, 1.0, 0)
    frames["synthetic"].drop(columns=["image"]).to_parquet(tmp_path / "no_image.parquet")
    with pytest.raises(InputError, match="column 'image'"):
        regimes.read_extra(str(tmp_path / "no_image.parquet"), LABELS, [])
    with pytest.raises(InputError, match="split"):
        regimes.real_splits(frames["real"][frames["real"]["split"] != "val"])


def test_synthetic_regimes_train_on_the_generators_classifier_generators_names():
    arms = {"sd-full": {}, "segguided": {"kind": "mask-guided"}}
    every = validated({"diffusion": {"generators": arms}, "classifier": {"regimes": ["real", "synthetic"]}})
    assert regimes.runs(every) == ["real", "synthetic/sd-full", "synthetic/segguided"]
    chosen = validated(
        {
            "diffusion": {"generators": arms},
            "classifier": {"regimes": ["synthetic", "mixed"], "generators": ["sd-full"]},
        }
    )
    assert regimes.runs(chosen) == ["synthetic/sd-full", "mixed/sd-full"]
    unknown = validated(
        {
            "diffusion": {"generators": arms},
            "classifier": {"regimes": ["synthetic"], "generators": ["sd-lora"]},
        }
    )
    with pytest.raises(InputError, match=r"classifier.generators: \['sd-lora'\]"):
        regimes.runs(unknown)
