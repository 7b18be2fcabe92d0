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
# Modules that start first (the longest), so that no worker is left alone with one of them at the end.
LONGEST_FIRST = ("test_slurm", "test_presets", "test_report")
# Tests that are a work unit of their own rather than part of their module's (each takes minutes).
ALONE = ("tests/test_presets.py::test_preset_runs_the_whole_study_end_to_end[",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first (the order the xdist scheduler hands out work units in)."""
    first = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.module.__name__, len(first)))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist's ``loadscope`` scheduling (``make test``: ``-n CORES --dist loadscope``) with one work
    unit per test module, so that its module-scoped fixtures (the Slurm cluster, a whole-DAG run) are built
    once, by one worker; but each test of :data:`ALONE` is a unit of its own. (xdist's ``loadgroup`` marks
    cannot do this under pytest 9: xdist 3.8 renames ``Item._nodeid``, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if nodeid.startswith(ALONE) else nodeid.split("::", 1)[0]

    return ModuleScheduling(config, log) if config.getvalue("dist") == "loadscope" else None


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
