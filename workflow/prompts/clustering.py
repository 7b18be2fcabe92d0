"""Morphology clusters of image embeddings (MEP-LDM) and montages that show what each one looks like.

MEP-LDM (Osorio et al., Diagnostics 2024; ``prompt_building/pipeline.py``) clusters the raw, unscaled DINO
CLS tokens of its outlier-free training images with scikit-learn ``KMeans(n_clusters=k, n_init=10,
random_state=seed)``, or ``MiniBatchKMeans(batch_size, tol=1e-4, max_iter=300)`` when a batch size is set;
k = 33 for histology, 10 for chest X-ray. The same here, fitted on the training split; validation and test
images get their nearest centroid, so every split is described with the same prompt vocabulary.

k can instead be chosen over a range by a cluster validity index from scikit-learn: Calinski-Harabasz
(Calinski and Harabasz 1974; higher is better), silhouette (Rousseeuw 1987; higher is better; computed on
a seeded sample of at most 10,000 images) or Davies-Bouldin (Davies and Bouldin 1979; lower is better).
MEP-LDM ships S_Dbw/SD index helpers for this purpose but never calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image, ImageOps
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from workflow.common.errors import InputError
from workflow.common.manifest import label_column
from workflow.prompts.settings import ClusterSettings

SILHOUETTE_SAMPLE = 10_000
MONTAGE_TILES = 16
MONTAGE_COLUMNS = 4
TILE_PIXELS = 96

# index name -> (score function of (X, labels, seed), True when higher is better)
VALIDITY: dict[str, tuple[Any, bool]] = {
    "calinski_harabasz": (lambda x, y, seed: calinski_harabasz_score(x, y), True),
    "silhouette": (
        lambda x, y, seed: silhouette_score(
            x, y, sample_size=min(len(x), SILHOUETTE_SAMPLE), random_state=seed
        ),
        True,
    ),
    "davies_bouldin": (lambda x, y, seed: davies_bouldin_score(x, y), False),
}


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The table of an embeddings file without its ``embedding`` column, and the N x D float32 matrix."""
    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    matrix = column.flatten().to_numpy().astype(np.float32, copy=False).reshape(len(table), -1)
    return table.drop(["embedding"]).to_pandas(), matrix


def kmeans(k: int, settings: ClusterSettings) -> KMeans | MiniBatchKMeans:
    """MEP-LDM's estimator: KMeans(k, n_init) or, with ``minibatch_size``, MiniBatchKMeans."""
    if settings.minibatch_size:
        return MiniBatchKMeans(
            n_clusters=k,
            batch_size=settings.minibatch_size,
            n_init=settings.n_init,
            tol=1e-4,
            max_iter=300,
            random_state=settings.seed,
        )
    return KMeans(n_clusters=k, n_init=settings.n_init, random_state=settings.seed)


def choose_k(x: np.ndarray, settings: ClusterSettings) -> tuple[KMeans | MiniBatchKMeans, dict[int, float]]:
    """The k-means model fitted on ``x`` whose k in ``prompts.mep.k_range`` has the best
    ``prompts.mep.validity_index``, and every k's score."""
    low, high = settings.k_range
    if not 2 <= low <= high < len(x):
        raise InputError(
            f"prompts.mep.k_range = {[low, high]} must satisfy 2 <= low <= high < {len(x)} "
            "(the number of training images to cluster)"
        )
    score, higher_is_better = VALIDITY[settings.validity_index]
    models = {k: kmeans(k, settings).fit(x) for k in range(low, high + 1)}
    scores = {k: float(score(x, model.labels_, settings.seed)) for k, model in models.items()}
    pick = max if higher_is_better else min
    return models[pick(scores, key=lambda k: scores[k])], scores


def fit(x: np.ndarray, settings: ClusterSettings) -> tuple[KMeans | MiniBatchKMeans, dict]:
    """Fit k-means on the training embeddings ``x``; returns the model and how k was chosen."""
    if settings.k == "auto":
        model, scores = choose_k(x, settings)
        choice = {
            "method": settings.validity_index,
            "k_range": list(settings.k_range),
            "scores": scores,
        }
        return model, choice | {"k": model.n_clusters}
    k = int(settings.k)
    if k > len(x):
        raise InputError(
            f"prompts.mep.k = {k} is larger than the number of training images to cluster ({len(x)}, "
            "after outlier removal); lower prompts.mep.k or use k: auto with prompts.mep.k_range"
        )
    return kmeans(k, settings).fit(x), {"method": "fixed (prompts.mep.k)", "k": k}


def nearest(x: np.ndarray, centre: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` rows of ``x`` closest to ``centre`` (ties by position)."""
    distance = ((x - centre) ** 2).sum(axis=1)
    return np.argsort(distance, kind="stable")[:n]


def montage(paths: Sequence[str], columns: int = MONTAGE_COLUMNS, tile: int = TILE_PIXELS) -> Image.Image:
    """The images side by side, ``columns`` per row, each scaled to fit a ``tile`` x ``tile`` square."""
    rows = max(1, -(-len(paths) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * tile))
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            thumb = ImageOps.contain(image.convert("RGB"), (tile, tile))
        offset = ((tile - thumb.width) // 2, (tile - thumb.height) // 2)
        sheet.paste(thumb, ((i % columns) * tile + offset[0], (i // columns) * tile + offset[1]))
    return sheet


def cluster_summary(frame: pd.DataFrame, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """Per cluster: images per split, per class and positives per finding (``frame`` has ``cluster``)."""
    summary = []
    for c in range(k):
        part = frame[frame["cluster"] == c]
        summary.append(
            {
                "cluster": c,
                "images": {str(s): int(n) for s, n in part["split"].value_counts().sort_index().items()},
                "classes": {
                    str(n): int(v) for n, v in part["class_name"].value_counts().sort_index().items()
                },
                "findings": {name: int((part[label_column(name)] == 1.0).sum()) for name in labels},
            }
        )
    return summary
