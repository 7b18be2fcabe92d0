"""Image-quality metrics (FID, KID, precision/recall) on phantom sets with the tiny random-init extractor."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch_fidelity
import yaml
from configs import validated
from PIL import Image
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

from workflow.common.errors import InputError
from workflow.common.manifest import label_column
from workflow.common.model_card import read_card
from workflow.data import phantoms
from workflow.evaluation import extractors, fidelity, stage
from workflow.evaluation.features import FeatureCache, ImagePolicy, check_features, resolve_policy
from workflow.evaluation.settings import EvaluationSettings, extractor_inputs
from workflow.prompts.embeddings import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]
# The same patients imaged at two sites that differ in noise and contrast.
SITES = {"site_a": {"noise": 0.015, "contrast": 1.0}, "site_c": {"noise": 0.06, "contrast": 1.3}}
PREVALENCE = {"Cardiomegaly": 0.5, "Pneumothorax": 0.0}


def evaluation_settings(cache_dir: Path, **changes) -> EvaluationSettings:
    """evaluation.* with the schema's defaults, the tiny extractor and ``changes``."""
    section = validated({})["evaluation"] | {"extractor": "tiny", "cache_dir": str(cache_dir)} | changes
    return EvaluationSettings.of({"evaluation": section})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tiny") / "model"
    extractors.build_tiny(out, seed=0)
    return str(out)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, pd.DataFrame]:
    """Two phantom sets (about 60 images each, 48 px), flat folders, image paths sorted, truth labels."""
    root = tmp_path_factory.mktemp("phantoms")
    frames = {}
    for site, values in SITES.items():
        raw = {"n_patients": 30, "image_size": 48, "seed": 1, "sites": {site: values}}
        settings = phantoms.PhantomSettings.from_dict(raw | {"prevalence": PREVALENCE})
        phantoms.generate(settings, root / site)
        truth = pd.read_csv(root / site / phantoms.DATASET / "truth.csv")
        flat = root / f"{site}_flat"
        flat.mkdir()
        images = []
        for i, rel in enumerate(truth["Path"]):
            images.append(str(flat / f"{i:03d}.png"))
            shutil.copy(root / site / rel, images[-1])
        frame = truth.drop(columns="Path").rename(columns=label_column)
        frame.insert(0, "image", images)
        frame.insert(0, "image_id", [f"{site}/{i}" for i in range(len(frame))])
        frame["prompt_id"] = frame[label_column("Cardiomegaly")].astype("Int64")
        frame["prompt"] = frame["prompt_id"].map({1: "cardiomegaly", 0: "no finding"})
        frames[site] = frame
    return frames


@pytest.fixture(scope="module")
def features(tiny, sets, tmp_path_factory) -> dict[str, torch.Tensor]:
    spec = extractors.resolve(evaluation_settings(Path()), "tiny", tiny)
    cache = FeatureCache(tmp_path_factory.mktemp("cache"), spec, ImagePolicy(48, "grayscale"), False, 64)
    return {site: cache.features(frame["image"].tolist(), site)[0] for site, frame in sets.items()}


@pytest.fixture(scope="module")
def tiny_inception(tmp_path_factory) -> str:
    """The random-init torchvision Inception-v3 stand-in (a folder with its weights file and card)."""
    out = tmp_path_factory.mktemp("tiny") / "inception"
    extractors.build_tiny_inception(out, seed=0)
    return str(out)


@pytest.fixture(scope="module")
def inception_cache(tiny_inception, sets, tmp_path_factory) -> tuple[Path, pd.DataFrame, torch.Tensor]:
    """torchvision-Inception features of four images (about a second each on a shared CPU, and every 2048-d
    FID a minute of scipy's sqrtm) in a feature cache that the stage test reuses (same images, extractor and
    policy: the same content keys), so each image goes through the network once."""
    root = tmp_path_factory.mktemp("inception_cache")
    four = sets["site_a"].iloc[:4].reset_index(drop=True)
    spec = extractors.resolve(metric_settings(), extractors.TORCHVISION_KIND, tiny_inception)
    cache = FeatureCache(root, spec, ImagePolicy(48, "grayscale"), False, 8)
    return root, four, cache.features(four["image"].tolist(), "four")[0]


def write_inputs(folder: Path, real: pd.DataFrame, fake: pd.DataFrame) -> None:
    """dataset.parquet (real images with a split), samples.parquet and the real images' prompts table."""
    real.drop(columns=["prompt_id", "prompt"]).to_parquet(folder / "dataset.parquet")
    fake.to_parquet(folder / "samples.parquet")
    real[["image_id", "prompt_id"]].to_parquet(folder / "prompts.parquet")


def metric_settings(**changes) -> EvaluationSettings:
    return evaluation_settings(Path(), **changes)


def test_tiny_extractor_is_random_init_and_not_degenerate(tiny, features):
    card = read_card(tiny)
    assert card["weights"] == extractors.TINY_WEIGHTS
    assert "random-init" in card["weights"] and "(demo)" in card["weights"]
    a = features["site_a"]
    assert a.shape == (len(a), 32)
    assert float(a.std(dim=0).min()) > 1e-3  # every feature varies across images
    with pytest.raises(InputError, match="do not vary across images"):
        check_features(torch.full((5, 8), 1e-8), "set")


def test_self_fid_is_zero_and_metrics_equal_torch_fidelity_on_the_folders(tiny, sets, features):
    settings = metric_settings()
    a, c = features["site_a"], features["site_c"]
    same = fidelity.compare(a, a, settings)
    assert abs(same["fid"]) < 1e-6
    assert same["precision"] == same["recall"] == 1.0
    ours = fidelity.compare(c, a, settings)
    direct = torch_fidelity.calculate_metrics(
        input1=str(Path(sets["site_c"]["image"][0]).parent),
        input2=str(Path(sets["site_a"]["image"][0]).parent),
        fid=True,
        kid=True,
        prc=True,
        feature_extractor=extractors.TRANSFORMERS,
        feature_extractor_weights_path=tiny,
        kid_subset_size=ours["kid_subset_size"],
        rng_seed=settings.seed,
        cuda=False,
        cache=False,
        verbose=False,
    )
    assert ours["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-5)
    assert ours["kid_mean"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-5)
    # the two sets are equally large, so every KID subset is both sets whole: torch-fidelity's std over
    # equal subsets is rounding noise, which synthmed reports as null
    assert ours["kid_subset_size"] == len(a) == len(c) and ours["kid_std"] is None
    assert direct["kernel_inception_distance_std"] < 1e-3 * direct["kernel_inception_distance_mean"]
    assert (ours["precision"], ours["recall"]) == (direct["precision"], direct["recall"])


def test_another_site_is_further_away_than_the_other_half_of_the_same_site(features):
    a, c = features["site_a"], features["site_c"]
    half = len(a) // 2  # equal N on both sides: FID is biased in N
    within = fidelity.compare(a[:half], a[half : 2 * half], metric_settings())
    across = fidelity.compare(a[:half], c[half : 2 * half], metric_settings())
    assert across["fid"] > 2 * within["fid"] > 0
    assert across["kid_mean"] > within["kid_mean"]


def test_kid_subset_is_clamped_and_small_sets_are_flagged(features):
    a, c = features["site_a"], features["site_c"]
    row = fidelity.compare(a[:12], c[:20], metric_settings(kid_subset_size=1000))
    assert row["kid_subset_size"] == 12
    assert any("clamped" in w for w in row["warnings"])
    assert any("12 synthetic images < feature dimension 32" in w for w in row["warnings"])
    assert any("20 real images < feature dimension 32" in w for w in row["warnings"])
    large = fidelity.compare(a, c, metric_settings(kid_subset_size=40))
    assert large["kid_subset_size"] == 40 and large["warnings"] == []
    few = fidelity.compare(a[:5], c, metric_settings(min_images=10))
    assert few["fid"] is None and few["kid_mean"] is None
    assert few["reason"] == "fewer than evaluation.min_images = 10 images (synthetic 5, real 62)"
    # both sets whole in every subset: all subsets are equal, and a std of 0 claimed a certainty there is not
    whole = fidelity.compare(a[:12], c[:12], metric_settings(kid_subset_size=1000))
    assert whole["kid_mean"] is not None and whole["kid_std"] is None
    assert any("no std over subsets" in w for w in whole["warnings"])


def test_precision_recall_of_large_sets_are_computed_in_batches_with_the_same_values(features, monkeypatch):
    """Beyond PRC_FULL_MATRIX images torch-fidelity's batched distances (save_cpu_ram) replace the N x N
    matrix (a PCam-sized reference, 262,144 patches, needed 275 GB); the values are the same."""
    a, c = features["site_a"], features["site_c"]
    whole = fidelity.compare(c, a, metric_settings())
    monkeypatch.setattr(fidelity, "PRC_FULL_MATRIX", 10)
    batched = fidelity.compare(c, a, metric_settings())
    assert (batched["precision"], batched["recall"]) == (whole["precision"], whole["recall"])


def test_kid_takes_the_studys_100_subsets_of_100():
    """LoRA-fairness KID: 100 subsets of 100 images (evaluation.kid_subset_size, kid_subsets),
    torch-fidelity's unbiased estimator with the cubic polynomial kernel."""
    generator = torch.Generator().manual_seed(0)
    fake, real = torch.randn(150, 16, generator=generator), torch.randn(130, 16, generator=generator) + 0.3
    row = fidelity.compare(fake, real, metric_settings(kid_subset_size=100, kid_subsets=100))
    assert row["kid_subset_size"] == 100 and row["warnings"] == []
    direct = kid_features_to_metric(
        fake, real, kid_subsets=100, kid_subset_size=100, rng_seed=2020, verbose=False
    )
    assert (row["kid_mean"], row["kid_std"]) == (direct[KEY_METRIC_KID_MEAN], direct[KEY_METRIC_KID_STD])
    fewer = fidelity.compare(fake, real, metric_settings(kid_subset_size=100, kid_subsets=10))
    assert fewer["kid_std"] != row["kid_std"]


def test_torchvision_inception_is_the_studys_fid_evaluator(tiny_inception, inception_cache):
    """Through torch-fidelity's registry, 2048-d features equal to the LoRA-fairness FIDEvaluator's on the
    same images (grayscale -> RGB, transforms.Resize(299), ImageNet normalisation, fc = Identity)."""
    from torchvision import transforms
    from torchvision.models import inception_v3

    _, four, features = inception_cache
    assert features.shape == (4, 2048) and bool(torch.isfinite(features).all())
    assert float(features.std(dim=0).max()) > 1e-3
    spec = extractors.resolve(metric_settings(), extractors.TORCHVISION_KIND, tiny_inception)
    assert (spec.fidelity_name, spec.feature) == (extractors.TORCHVISION, "2048")
    assert spec.weights() == extractors.TINY_INCEPTION_WEIGHTS

    paper = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    paper.load_state_dict(torch.load(Path(tiny_inception) / extractors.TORCHVISION_FILE))
    paper.fc = torch.nn.Identity()
    preprocess = transforms.Compose(
        [transforms.Resize(299), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    images = [Image.open(path).convert("L").convert("RGB") for path in four["image"][:2]]
    with torch.no_grad():
        expected = paper.eval()(torch.stack([preprocess(image) for image in images]))
    # PIL's and torchvision's antialiased bilinear resize differ by at most 2 grey levels at some pixels
    torch.testing.assert_close(features[:2], expected, rtol=0, atol=2e-3 * float(expected.abs().max()))


def test_torchvision_weights_that_are_no_inception_name_the_key(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    for path, problem in [
        (tmp_path / "other.pth", "not a torchvision Inception-v3"),
        (tmp_path, "does not exist"),
    ]:
        with pytest.raises(InputError, match=f"evaluation.torchvision_weights: .*{problem}"):
            extractors.ExtractorSpec(extractors.TORCHVISION_KIND, str(path), None).create(cuda=False)


def test_extractor_inputs_per_feature_space():
    both = {"extractor": "tiny", "also": ["torchvision-inception"], "torchvision_weights": "tiny"}
    assert extractor_inputs(validated({"evaluation": both})) == {
        "tiny": "results/models/tiny/dinov2",
        "torchvision-inception": "results/models/tiny/inception",
    }
    study = {"also": ["torchvision-inception"], "torchvision_weights": "/w/inception_v3_google-0cc3c7bd.pth"}
    assert extractor_inputs(validated({"evaluation": study})) == {
        "torchvision-inception": "/w/inception_v3_google-0cc3c7bd.pth"
    }
    assert extractor_inputs(validated({"evaluation": {"torchvision_weights": "tiny"}})) == {}
    with pytest.raises(
        InputError, match=r"evaluation\.also: 'transformers' is evaluation\.extractor already"
    ):
        extractor_inputs(validated({"evaluation": {"extractor": "transformers", "also": ["transformers"]}}))


def test_cache_is_keyed_by_image_content(tiny, sets, tmp_path, monkeypatch):
    paths = [shutil.copy(source, tmp_path) for source in sets["site_a"]["image"][:12]]
    spec = extractors.resolve(evaluation_settings(tmp_path), "tiny", tiny)
    policy = ImagePolicy(48, "grayscale")
    first, key = FeatureCache(tmp_path / "cache", spec, policy, False, 8).features(paths, "set")
    entry = json.loads((tmp_path / "cache" / key / "entry.json").read_text())
    assert entry["extractor"]["weights_sha256_16"] and len(entry["images"]) == 12

    def no_model(self, cuda):
        raise AssertionError("the extractor was loaded although the features are cached")

    monkeypatch.setattr(extractors.ExtractorSpec, "create", no_model)
    again, same_key = FeatureCache(tmp_path / "cache", spec, policy, False, 8).features(paths, "set")
    assert same_key == key and torch.equal(again, first)
    monkeypatch.undo()

    pixels = np.array(Image.open(paths[3]))
    pixels[10:20, 10:20] = 255 - pixels[10:20, 10:20]
    Image.fromarray(pixels).save(paths[3])
    changed, new_key = FeatureCache(tmp_path / "cache", spec, policy, False, 8).features(paths, "set")
    assert new_key != key
    assert not torch.allclose(changed[3], first[3])
    assert torch.allclose(torch.cat([changed[:3], changed[4:]]), torch.cat([first[:3], first[4:]]), atol=1e-5)
    smaller = FeatureCache(tmp_path / "cache", spec, ImagePolicy(32, "grayscale"), False, 8)
    other_key = smaller.features(paths, "set")[1]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([key, new_key, other_key])


def test_resize_policy_converts_synthetic_rgb_like_real_grayscale(tmp_path):
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    Image.fromarray(gray).save(tmp_path / "real.png")
    Image.fromarray(np.stack([gray] * 3, axis=-1)[::2, ::2].copy()).save(tmp_path / "fake.png")
    settings = evaluation_settings(tmp_path)
    policy = resolve_policy(settings, [str(tmp_path / "real.png")], [str(tmp_path / "fake.png")])
    assert policy == ImagePolicy(32, "grayscale")
    real, fake = policy.load(str(tmp_path / "real.png")), policy.load(str(tmp_path / "fake.png"))
    assert real.shape == fake.shape == (3, 32, 32) and real.dtype == torch.uint8
    assert torch.equal(real[0], real[2]) and torch.equal(fake[0], fake[1])
    assert (real.int() - fake.int()).abs().max() <= 8  # bicubic shrink of the same ramp


def test_groups_per_label_per_prompt_and_per_slice_position():
    real = pd.DataFrame(
        {
            "label_A": [1.0, 1.0, 0.0, np.nan],
            "prompt_id": pd.array([0, 0, 1, pd.NA], dtype="Int64"),
            "volume_id": ["v1"] * 4,
            "slice_index": pd.array([0, 1, 2, 3], dtype="Int64"),
            "slice_axis": pd.array([2] * 4, dtype="Int64"),
            "volume_shape": ["[8, 8, 4]"] * 4,
        }
    )
    fake = pd.DataFrame({"label_A": [1.0, 0.0, 0.0], "prompt_id": [0, 1, 1], "prompt": ["a", "b", "b"]})
    found = {(g.kind, g.name): g for g in fidelity.groups(fake, real, slice_bins=2)}
    assert found[("label", "A")].fake.tolist() == [True, False, False]
    assert found[("label", "A")].real.tolist() == [True, True, False, False]
    assert found[("prompt", "1")].real.tolist() == [False, False, True, False]
    assert found[("prompt", "1")].extra == {"prompt": "b"}
    low, high = found[("slice_bin", "0.00-0.50")], found[("slice_bin", "0.50-1.00")]
    assert low.real.tolist() == [True, True, False, False]
    assert high.real.tolist() == [False, False, True, True]
    assert low.reason == "the synthetic images carry no slice position (slice_index)"
    flat = real.assign(volume_id=None)
    assert not any(group.kind == "slice_bin" for group in fidelity.groups(fake, flat, slice_bins=2))
    # a mask-text generator's prompt ids are text: they match the table's integers (they matched none before)
    texted = {(g.kind, g.name): g for g in fidelity.groups(fake.assign(prompt_id=["0", "1", "1"]), real, 2)}
    assert texted[("prompt", "1")].real.tolist() == [False, False, True, False]


def test_script_writes_report_and_per_class_table(tiny, sets, features, tmp_path):
    real, fake = sets["site_a"].assign(split="train"), sets["site_c"]
    test_rows = real.index[-4:]
    real.loc[test_rows, "split"] = "test"
    write_inputs(tmp_path, real, fake)
    settings = evaluation_settings(tmp_path / "cache", kid_subset_size=100)
    inputs = [f"--{name}={tmp_path / name}.parquet" for name in ("dataset", "samples", "prompts")]
    outputs = [f"--report={tmp_path / 'quality.json'}", f"--table={tmp_path / 'per_group.csv'}"]
    command = [sys.executable, "-m", "scripts.evaluation", "image_metrics", *inputs, *outputs]
    command += ["--settings", settings.to_json(), "--extractors", json.dumps({"tiny": tiny}), "--gpus", "0"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "random-init tiny DINOv2 (demo): the numbers check the plumbing" in done.stderr
    report = json.loads((tmp_path / "quality.json").read_text())
    assert report["extractor"]["kind"] == "tiny" and report["extractor"]["feature_dim"] == 32
    assert report["extractor"]["weights"] == report["provenance"]["weights"] == extractors.TINY_WEIGHTS
    assert report["provenance"]["seeds"] == {"kid": 2020, "tiny_extractor": 0}
    assert report["resize_policy"]["size"] == 48 and report["resize_policy"]["color"] == "grayscale"
    assert report["reference"] == {"split": "train", "images": len(real) - 4, "volumes": None}
    assert report["synthetic"]["images"] == len(fake) and report["seed"] == 2020
    assert report["metrics"]["kid_subset_size"] == len(real) - 4
    assert any("random-init" in w for w in report["warnings"])

    cardiomegaly = report["per_label"]["Cardiomegaly"]
    positive = (real["split"] == "train") & (real[label_column("Cardiomegaly")] == 1)
    a = features["site_a"][torch.from_numpy(np.flatnonzero(positive))]
    c = features["site_c"][torch.from_numpy(np.flatnonzero(fake[label_column("Cardiomegaly")] == 1))]
    expected = fidelity.compare(c, a, metric_settings(kid_subset_size=100))
    assert cardiomegaly["fid"] == pytest.approx(expected["fid"], rel=1e-5)
    assert cardiomegaly["kid_mean"] == pytest.approx(expected["kid_mean"], rel=1e-5)
    assert report["per_label"]["Pneumothorax"]["fid"] is None
    assert report["per_label"]["Pneumothorax"]["reason"].startswith("fewer than evaluation.min_images")
    assert set(report["per_prompt"]) == {"0", "1"}
    assert report["per_prompt"]["1"]["prompt"] == "cardiomegaly"
    assert report["per_slice_bin"] == {} and report["slicewise"]["volumes"] is False

    table = pd.read_csv(tmp_path / "per_group.csv")
    assert table.iloc[0][["group", "name"]].tolist() == ["overall", "all"]
    assert table.iloc[0]["fid"] == pytest.approx(report["metrics"]["fid"])
    assert set(table["group"]) == {"overall", "label", "prompt"}
    assert len(list((tmp_path / "cache").iterdir())) == 2

    # results/fid.json: one section per generator, and their rows with a generator column
    fid, fid_table = tmp_path / "fid.json", tmp_path / "fid_per_class.csv"
    reports, tables = [str(tmp_path / "quality.json")] * 2, [str(tmp_path / "per_group.csv")] * 2
    stage.collect_image_metrics(["sd-full", "sd-lora"], reports, tables, str(fid), str(fid_table))
    collected = json.loads(fid.read_text())
    assert list(collected["generators"]) == ["sd-full", "sd-lora"]
    assert collected["generators"]["sd-lora"]["metrics"] == report["metrics"]
    both = pd.read_csv(fid_table)
    assert both["generator"].tolist() == ["sd-full"] * len(table) + ["sd-lora"] * len(table)
    assert both.columns[0] == "generator"


def test_feature_spaces_side_by_side_in_fid_json(tiny, tiny_inception, inception_cache, tmp_path):
    """extractor tiny plus also torchvision-inception, a set against itself: the top level stays that of
    evaluation.extractor, feature_spaces and fid.json's overall table label every extractor's metrics (FID of
    a set with itself is 0 in both), the table has an extractor column. The Inception features come from the
    cache (same content key)."""
    cache_dir, four, features = inception_cache
    write_inputs(tmp_path, four.assign(split="train"), four)
    settings = evaluation_settings(
        cache_dir, also=("torchvision-inception",), torchvision_weights="tiny", min_images=4
    )
    args = [str(tmp_path / f"{n}.parquet") for n in ("dataset", "samples", "prompts")]
    local = {"tiny": tiny, "torchvision-inception": tiny_inception}
    report, table = tmp_path / "image_metrics.json", tmp_path / "per_group.csv"
    stage.image_metrics(*args, settings, local, 0, str(report), str(table))
    quality = json.loads(report.read_text())
    spaces = quality["feature_spaces"]
    assert list(spaces) == ["tiny", "torchvision-inception"]
    assert (
        quality["metrics"] == spaces["tiny"]["metrics"]
        and quality["extractor"] == spaces["tiny"]["extractor"]
    )
    inception = spaces["torchvision-inception"]
    assert inception["extractor"]["feature_dim"] == 2048 and spaces["tiny"]["extractor"]["feature_dim"] == 32
    assert inception["extractor"]["weights"] == extractors.TINY_INCEPTION_WEIGHTS
    assert inception["feature_cache"]["real"] == inception["feature_cache"]["synthetic"]
    assert (cache_dir / inception["feature_cache"]["real"] / "features.pt").is_file()
    scale = float(torch.cov(features.double().T).trace())
    assert abs(inception["metrics"]["fid"]) < 1e-5 * scale and abs(spaces["tiny"]["metrics"]["fid"]) < 1e-6
    assert "evaluation.extractor (tiny)" in quality["comparability"]
    seeds = {"kid": 2020, "tiny_extractor": 0, "tiny_extractor:torchvision-inception": 0}
    assert quality["provenance"]["seeds"] == seeds
    weights = quality["provenance"]["weights"]
    assert (
        weights
        == f"tiny: {extractors.TINY_WEIGHTS}; torchvision-inception: {extractors.TINY_INCEPTION_WEIGHTS}"
    )
    assert any(w.startswith(extractors.TINY_INCEPTION_WEIGHTS) for w in inception["warnings"])

    rows = pd.read_csv(table)
    assert rows.iloc[0][["extractor", "group", "name"]].tolist() == ["tiny", "overall", "all"]
    half = len(rows) // 2
    assert rows["extractor"].tolist() == ["tiny"] * half + ["torchvision-inception"] * half
    overall = rows[rows["group"] == "overall"].set_index("extractor")["fid"]
    assert overall["torchvision-inception"] == pytest.approx(inception["metrics"]["fid"])

    fid, fid_table = tmp_path / "fid.json", tmp_path / "fid_per_class.csv"
    stage.collect_image_metrics(["sd-lora"], [str(report)], [str(table)], str(fid), str(fid_table))
    collected = json.loads(fid.read_text())
    assert collected["overall"] == {"sd-lora": {kind: spaces[kind]["metrics"] for kind in spaces}}
    assert collected["generators"]["sd-lora"] == quality
    assert list(pd.read_csv(fid_table).columns[:2]) == ["generator", "extractor"]


def test_missing_image_and_empty_split_name_the_file(tiny, sets, tmp_path):
    real = sets["site_a"].assign(split="train")
    fake = sets["site_c"].copy()
    fake.loc[2, "image"] = str(tmp_path / "gone.png")
    write_inputs(tmp_path, real, fake)
    args = [str(tmp_path / f"{n}.parquet") for n in ("dataset", "samples", "prompts")]
    settings = evaluation_settings(tmp_path / "cache")
    with pytest.raises(InputError, match=r"samples.parquet row 2: cannot read image '.*gone.png'"):
        stage.image_metrics(
            *args, settings, {"tiny": tiny}, 0, str(tmp_path / "a.json"), str(tmp_path / "a.csv")
        )
    with pytest.raises(InputError, match="no images to evaluate in split 'val'"):
        stage.image_metrics(
            *args, replace(settings, reference_split="val"), {"tiny": tiny}, 0, "a.json", "a.csv"
        )


def test_config_defaults_and_demo_config():
    defaults = evaluation_settings(Path("results/cache/features"))
    assert defaults.reference_split == "train" and defaults.kid_subset_size == 1000
    demo = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(demo, str(ROOT / "resources/config.schema.yaml"))
    assert demo["evaluation"]["extractor"] == "classifier"  # the real classifier's feature space
    assert demo["evaluation"]["model"] == extractors.DEFAULT_MODEL
    bad = copy.deepcopy(demo)
    bad["evaluation"]["extractor"] = "inception"
    with pytest.raises(WorkflowError, match="'inception' is not one of"):
        validate(bad, str(ROOT / "resources/config.schema.yaml"))
