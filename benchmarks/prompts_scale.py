"""Scale benchmark of the prompts stage (issue 3: MEP-LDM clusters at PCam size, DINO throughput).

1. k-means on 330,000 x 768 embeddings (PCam's size with DINO ViT-B/8's CLS width; synthetic: k Gaussian
   clusters in 768-d, float32), with the estimators of ``workflow.prompts.clustering`` (MEP-LDM's KMeans
   and the MiniBatchKMeans option), k = 33 as MEP-LDM uses for PCam. Target: under 2 minutes on CPU.
2. Embeddings per second of ViT-B/8 at 224 px (the ``facebook/dino-vitb8`` architecture, random weights
   built offline from its config) through ``workflow.prompts.embeddings.embed`` on whatever device is
   present.

Run from the repository root:  .venv/bin/python benchmarks/prompts_scale.py [--skip-kmeans] [--vit-images 32]
Figures are recorded in docs/benchmarks.md; this is a script, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

from workflow.prompts import clustering
from workflow.prompts.settings import ClassSettings, ClusterSettings, OutlierSettings


def synthetic_embeddings(n: int, dim: int, k: int, spread: float, seed: int = 0) -> np.ndarray:
    """``n`` float32 points around ``k`` random centres (scale ``spread``; 0: pure noise) plus N(0, 1)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, dim)).astype(np.float32)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x += centres[rng.integers(0, k, size=n)]
    return x


def bench_kmeans(n: int, dim: int, k: int, spread: float, minibatch: int, n_init: int) -> dict[str, float]:
    x = synthetic_embeddings(n, dim, k, spread)
    outliers = {f.name: 0 for f in fields(OutlierSettings)} | {"enabled": False}
    settings = ClusterSettings(
        k=k,
        k_range=(3, 20),
        validity_index="calinski_harabasz",
        n_init=n_init,
        minibatch_size=None,
        outliers=OutlierSettings(**outliers),
        seed=18021999,
        classes=ClassSettings(column=None, names={}),
    )
    results = {}
    for name, size in (("minibatch_kmeans", minibatch), ("kmeans", None)):
        start = time.perf_counter()
        model, _ = clustering.fit(x, replace(settings, minibatch_size=size))
        results[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        results[f"{name}_iterations"] = int(model.n_iter_)
    return results


def bench_vit(images: int, batch_size: int, threads: int) -> dict[str, float | str]:
    import torch
    from transformers import ViTModel

    from workflow.common.devices import pick_device
    from workflow.prompts import embeddings

    torch.manual_seed(0)
    device = pick_device()
    network = ViTModel(embeddings.dino_vitb8_config(), add_pooling_layer=False).eval()
    processor = embeddings.image_processor(224)
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(images):
            paths.append(str(Path(folder) / f"{i}.png"))
            Image.fromarray(rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8)).save(paths[-1])
        embed = {"device": device, "batch_size": batch_size, "threads": threads}
        embeddings.embed(network, processor, paths[:batch_size], **embed)
        start = time.perf_counter()
        matrix, _ = embeddings.embed(network, processor, paths, **embed)
        seconds = time.perf_counter() - start
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "images": images,
        "dimension": int(matrix.shape[1]),
        "seconds": round(seconds, 2),
        "embeddings_per_second": round(images / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--images", type=int, default=330_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=33)
    parser.add_argument("--spread", type=float, default=0.2, help="cluster centre scale (0: no clusters)")
    parser.add_argument("--minibatch", type=int, default=4096)
    parser.add_argument("--n-init", type=int, default=1)
    parser.add_argument("--skip-kmeans", action="store_true")
    parser.add_argument("--vit-images", type=int, default=32)
    parser.add_argument("--vit-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, object] = {}
    if not args.skip_kmeans:
        results["kmeans"] = bench_kmeans(
            args.images, args.dim, args.k, args.spread, args.minibatch, args.n_init
        )
    results["vit_b8_224"] = bench_vit(args.vit_images, args.vit_batch, args.threads)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
