"""DINO-style CLS embeddings with a tiny randomly initialised ViT built offline; shards and their merge."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from workflow.common.errors import InputError
from workflow.common.files import read_parquet_meta
from workflow.common.model_card import read_card, weights_label
from workflow.common.tiny_models import build_tiny_model
from workflow.prompts import embeddings, stage
from workflow.prompts.settings import EmbedSettings


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("models") / "vit"
    build_tiny_model("vit", 3, str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """A dataset table of 7 grayscale PNGs of different brightness (ids deliberately unsorted); image 3's
    source is a patch inside an HDF5 file (``slice_index`` set), which embedding must never open."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in (4, 0, 6, 2, 5, 1, 3):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 30 * (i + 1), size=(48, 48), dtype=np.uint8)).save(path)
        source, index = (root / "patches.h5", 3) if i == 3 else (path, None)
        rows.append({"image_id": f"p{i}/view", "image": str(path), "path": str(source), "slice_index": index})
    frame = pd.DataFrame(rows).astype({"slice_index": "Int64"})
    frame.to_parquet(root / "dataset.parquet")
    return str(root / "dataset.parquet")


def test_tiny_model_is_labelled_as_random_weights(tiny):
    card = read_card(tiny)
    assert card["weights"] == weights_label(tiny) == "random-init tiny ViT (demo)"
    assert card["seed"] == 3
    assert weights_label("facebook/dino-vitb8").endswith("hub: facebook/dino-vitb8")


def test_images_are_rescaled_once(tiny, tmp_path):
    Image.new("L", (40, 40), 255).save(tmp_path / "white.png")
    _, processor = embeddings.load(tiny)
    pixels, _ = embeddings.load_item(processor, (str(tmp_path / "white.png"), None))
    expected = (1 - np.array(embeddings.IMAGENET_MEAN)) / np.array(embeddings.IMAGENET_STD)
    np.testing.assert_allclose(pixels.amax(dim=(1, 2)).numpy(), expected, rtol=1e-4)
    assert pixels.shape == (3, 32, 32)


def test_cls_embeddings_are_deterministic_and_order_preserving(tiny, dataset):
    network, processor = embeddings.load(tiny)
    paths = pd.read_parquet(dataset)["image"].tolist()
    cpu = torch.device("cpu")
    first, none = embeddings.embed(network, processor, paths, device=cpu, batch_size=3, threads=2)
    second, _ = embeddings.embed(network, processor, paths[::-1], device=cpu, batch_size=7, threads=1)
    assert first.shape == (7, 32) and first.dtype == np.float32 and none is None
    np.testing.assert_allclose(first, second[::-1], atol=1e-5)
    assert np.linalg.matrix_rank(first) > 1


def test_shards_merge_into_the_unsharded_result(tiny, dataset, tmp_path):
    settings = EmbedSettings(batch_size=2, shards=3, outlier_features=True)
    parts = [str(tmp_path / f"{k}.parquet") for k in range(3)]
    for k, part in enumerate(parts):
        stage.embed_images(dataset, tiny, settings, k, 0, 1, part)
    stage.merge_embeddings(parts[::-1], str(tmp_path / "merged.parquet"))
    whole = tmp_path / "whole.parquet"
    stage.embed_images(dataset, tiny, replace(settings, shards=1), 0, 0, 1, str(whole))
    merged, single = pd.read_parquet(tmp_path / "merged.parquet"), pd.read_parquet(whole)
    assert merged["image_id"].tolist() == sorted(merged["image_id"]) == single["image_id"].tolist()
    np.testing.assert_allclose(np.stack(merged["embedding"]), np.stack(single["embedding"]), atol=1e-5)
    assert {"mean_v", "contours"} <= set(merged.columns)
    meta = read_parquet_meta(tmp_path / "merged.parquet")
    assert meta["weights"] == "random-init tiny ViT (demo)" and meta["rows"] == 7
    with pytest.raises(InputError, match=r"prompts\.mep\.shards"):
        stage.embed_images(dataset, tiny, settings, 3, 0, 1, str(tmp_path / "x.parquet"))


def test_a_job_given_no_gpu_embeds_on_the_cpu_where_a_gpu_is_visible(tiny, dataset, tmp_path, monkeypatch):
    """`prompts.mep.gpus: 0` keeps the job off a visible GPU (this CPU-only torch cannot move a model to one,
    which is how the test sees where it computed; it took any visible GPU before)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    settings = EmbedSettings(batch_size=4, shards=1, outlier_features=False)
    stage.embed_images(dataset, tiny, settings, 0, 0, 1, str(tmp_path / "cpu.parquet"))
    assert read_parquet_meta(tmp_path / "cpu.parquet")["device"] == "cpu"


def test_unloadable_model_names_the_key(tmp_path):
    with pytest.raises(InputError, match=r"prompts\.mep\.model = "):
        embeddings.load(str(tmp_path / "no_such_model"))
