"""k-means morphology clusters (MEP-LDM), k chosen by a validity index, montages, MEP's outlier rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import make_blobs
from test_prompts import section

from workflow.common.errors import InputError
from workflow.common.files import write_parquet
from workflow.prompts import clustering, outliers
from workflow.prompts.settings import ClusterSettings

SETTINGS = {
    "k": 4,
    "k_range": [2, 7],
    "validity_index": "calinski_harabasz",
    "n_init": 3,
    "minibatch_size": None,
    "outliers": section()["mep"]["outliers"],
    "classes": {"column": None, "names": {}},
}


def _settings(seed: int, **changes) -> ClusterSettings:
    return ClusterSettings.from_dict(SETTINGS | {"seed": seed} | changes)


def _blobs(seed: int = 0) -> np.ndarray:
    x, _ = make_blobs(n_samples=400, centers=4, n_features=16, cluster_std=0.5, random_state=seed)
    return x.astype(np.float32)


@pytest.mark.parametrize("minibatch", [None, 64])
def test_kmeans_is_deterministic_under_a_seed(minibatch):
    x, settings = _blobs(), _settings(18021999, minibatch_size=minibatch)
    first, choice = clustering.fit(x, settings)
    second, _ = clustering.fit(x, settings)
    assert choice == {"method": "fixed (prompts.mep.k)", "k": 4}
    np.testing.assert_array_equal(first.predict(x), second.predict(x))
    np.testing.assert_array_equal(first.cluster_centers_, second.cluster_centers_)


@pytest.mark.parametrize("index", ["calinski_harabasz", "silhouette", "davies_bouldin"])
def test_validity_index_finds_the_number_of_blobs(index):
    model, choice = clustering.fit(_blobs(), _settings(1, k="auto", validity_index=index))
    assert choice["k"] == model.n_clusters == 4
    assert sorted(choice["scores"]) == list(range(2, 8))


def test_k_larger_than_the_images_names_the_key():
    with pytest.raises(InputError, match=r"prompts\.mep\.k = 500 is larger than the number of training"):
        clustering.fit(_blobs(), _settings(0, k=500))
    with pytest.raises(InputError, match=r"prompts\.mep\.k_range = \[2, 900\]"):
        clustering.fit(_blobs(), _settings(0, k="auto", k_range=[2, 900]))


def test_embeddings_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    write_parquet(tmp_path / "e.parquet", pd.DataFrame({"image_id": list("abcde"), "embedding": list(x)}))
    info, matrix = clustering.read_embeddings(tmp_path / "e.parquet")
    assert info["image_id"].tolist() == list("abcde")
    np.testing.assert_array_equal(matrix, x)


def test_montage_tiles_and_nearest(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        Image.new("L", (40, 20), color=40 * i).save(paths[-1])
    sheet = clustering.montage([str(p) for p in paths], columns=4, tile=32)
    assert sheet.size == (128, 64)
    assert sheet.getpixel((16, 16))[0] == 0 and sheet.getpixel((1 * 32 + 16, 16))[0] == 40
    points = np.array([[0.0], [5.0], [1.0], [3.0]])
    assert clustering.nearest(points, np.array([0.9]), 2).tolist() == [2, 0]


def test_contour_count_on_known_shapes():
    image = np.zeros((20, 20), dtype=bool)
    image[2:8, 2:8] = True  # a square ...
    image[4:6, 4:6] = False  # ... with a hole: 2 contours
    image[12:15, 12:15] = True  # another square: 1
    image[0:3, 17:20] = True  # touching the border: 1
    assert outliers.count_contours(image) == 4


def test_features_match_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(50):
        gray = (rng.random((int(rng.integers(5, 40)), 33)) * 255).astype(np.uint8)
        _, binary = cv2.threshold(gray, 150, 255, cv2.THRESH_BINARY)
        found, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        assert outliers.count_contours(gray > 150) == len(found)
        assert outliers.laplacian_variance(gray) == pytest.approx(cv2.Laplacian(gray, cv2.CV_64F).var())


def test_outlier_rule_flags_flat_background(tmp_path):
    rng = np.random.default_rng(0)
    tissue = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(tissue).save(tmp_path / "tissue.png")
    Image.new("RGB", (64, 64), (240, 240, 240)).save(tmp_path / "glass.png")
    features = pd.DataFrame([outliers.image_features(str(tmp_path / f)) for f in ("tissue.png", "glass.png")])
    thresholds = {"min_mean_v": 70, "min_mean_s": 3, "min_std_v": 4, "min_std_s": 4, "min_std_h": 1.5,
                  "min_laplacian_var": 100, "min_contours": 10}  # fmt: skip
    flags = outliers.flag(features, thresholds)
    assert flags["outlier"].tolist() == [False, True]
    assert flags.loc[1, "min_std_v"] and not flags.loc[1, "min_mean_v"]
