"""Shared fixtures: small synthetic manifests built in memory, and the small phantom study's data stage; the
order and grouping of tests for pytest-xdist (``make test`` runs the suite in ``CORES`` workers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_workflow_data import DATA_TARGETS, snakemake, write_config

from workflow.common.manifest import label_column

LABELS = ("A", "B", "C", "D")
# The longest modules start first, so that no worker is left alone with one of them at the end.
LONGEST_FIRST = ("test_slurm", "test_presets", "test_report")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test module is one xdist group (``--dist loadgroup``: its module-scoped fixtures, such as the
    Slurm cluster or a whole-DAG run, are built by one worker once), but tests marked with a group of their
    own, such as each preset's end-to-end run; the longest modules first. Runs before xdist's own hook,
    which reads the groups."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    first = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.module.__name__, len(first)))


def make_manifest(n_patients: int, seed: int = 0, labels: tuple[str, ...] = LABELS) -> pd.DataFrame:
    """A manifest with 1-4 images per patient and correlated, imbalanced labels."""
    rng = np.random.default_rng(seed)
    rows = []
    prevalence = np.linspace(0.05, 0.4, len(labels))
    for p in range(n_patients):
        base = rng.random(len(labels)) < prevalence
        for i in range(int(rng.integers(1, 5))):
            flips = rng.random(len(labels)) < 0.1
            values = np.where(flips, ~base, base).astype(float)
            rows.append(
                {
                    "image_id": f"patient{p:05d}/study{i + 1}/view1",
                    "patient_id": f"patient{p:05d}",
                    "path": "x",
                }
                | {label_column(name): v for name, v in zip(labels, values, strict=True)}
            )
    return pd.DataFrame(rows)


@pytest.fixture
def manifest() -> pd.DataFrame:
    return make_manifest(400)


@pytest.fixture(scope="session")
def data_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data stage of the small phantom study (tests/test_workflow_data.py ``write_config``), run once per
    session through real Snakemake. Read only: whole-DAG fixtures start from a copy (``from_data_stage``)."""
    workdir = tmp_path_factory.mktemp("data-stage")
    write_config(workdir)
    snakemake(workdir, *DATA_TARGETS)
    return workdir
