"""Scale benchmark of the data stage (issue: split and DAG at CheXpert size).

1. Split a CheXpert-sized manifest (224,316 images, 65,240 patients, 14 labels; generated synthetically
   with CheXpert-like prevalences) on one core, and check leakage and fractions.
2. Build the Snakemake DAG (dry run) for a CheXpert-sized study with sharded preprocessing.

Run from the repository root:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_scale.py [--shards 256]
Figures are recorded in docs/benchmarks.md; this is a script, not a timed test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from workflow.common.manifest import label_column
from workflow.data.labels import CHEXPERT_LABELS
from workflow.data.split import assign_splits, check_no_leakage

N_IMAGES = 224_316
N_PATIENTS = 65_240
# Approximate CheXpert training-set prevalences of the 14 findings (positives only).
PREVALENCE = (0.09, 0.05, 0.12, 0.47, 0.04, 0.23, 0.07, 0.03, 0.15, 0.09, 0.39, 0.02, 0.04, 0.52)


def synthetic_manifest(seed: int = 0) -> pd.DataFrame:
    """CheXpert-sized manifest: every patient has at least one image, the rest spread at random."""
    rng = np.random.default_rng(seed)
    patients = np.concatenate([np.arange(N_PATIENTS), rng.integers(0, N_PATIENTS, N_IMAGES - N_PATIENTS)])
    patients.sort()
    labels = rng.random((N_IMAGES, len(CHEXPERT_LABELS))) < np.asarray(PREVALENCE)
    frame = pd.DataFrame(
        {
            "image_id": [f"img{i:06d}" for i in range(N_IMAGES)],
            "patient_id": [f"patient{p:05d}" for p in patients],
            "path": "x",
        }
    )
    for j, name in enumerate(CHEXPERT_LABELS):
        frame[label_column(name)] = labels[:, j].astype(float)
    return frame


def bench_split() -> dict[str, float]:
    frame = synthetic_manifest()
    start = time.perf_counter()
    splits = assign_splits(frame, CHEXPERT_LABELS, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    seconds = time.perf_counter() - start
    check_no_leakage(frame.assign(split=splits), "benchmark")
    shares = splits.value_counts(normalize=True).round(4).to_dict()
    return {"split_seconds": round(seconds, 2), **{f"images_{k}": v for k, v in shares.items()}}


def bench_dag(shards: int) -> dict[str, float]:
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "train.csv"
        csv.write_text("Path\n")
        config = yaml.safe_load((root / "resources" / "presets" / "chexpert.yaml").read_text())
        config["dataset"]["chexpert"]["csv"] = str(csv)
        config["preprocess"]["shards"] = shards
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config))
        command = [
            str(Path(sys.executable).with_name("snakemake")),
            "--snakefile", str(root / "Snakefile"),
            "--directory", tmp,
            "--configfile", str(Path(tmp) / "config.yaml"),
            "--dry-run", "--quiet", "--cores", "1",
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return {"dag_seconds": round(seconds, 2), "shards": shards}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--shards", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(bench_split())
    print(bench_dag(args.shards))


if __name__ == "__main__":
    main()
