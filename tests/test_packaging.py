"""The conda environment and pyproject.toml pin the same packages; `make demo` runs as documented."""

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs" / "synthmed.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(project)


def demo_command(tmp_path: Path, gpus: int | None) -> list[str]:
    """The snakemake command line `make demo` runs, on a machine whose `nvidia-smi -L` lists ``gpus`` GPUs
    (None: no nvidia-smi)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if gpus is not None:
        lines = "".join(f"echo 'GPU {i}: NVIDIA A100 (UUID: GPU-{i})'\n" for i in range(gpus))
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{lines}")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    make = ["make", "--no-print-directory", "-n", "-C", str(ROOT), "demo", "CORES=2", f"VENV={tmp_path}/venv"]
    done = subprocess.run(make, env=env, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if "snakemake --profile profiles/local" in x)
    return line.split()


@pytest.mark.parametrize("gpus", [None, 0, 1])
def test_make_demo_shares_the_cores_without_a_gpu_and_starts_the_generators_first(tmp_path, gpus):
    """Without a GPU the demo's GPU jobs share the cores (the profile's gpu: 1 would run them one at a time);
    with one, the profile's one job per GPU stands. Light GPU jobs take one thread; the generators' chains run
    first (docs/benchmarks.md: 842 s without these, 575 s with them)."""
    argv = demo_command(tmp_path, gpus)
    assert ("--resources" in argv) == (not gpus)
    if not gpus:
        assert argv[argv.index("--resources") + 1] == "gpu=2"
    threads = argv[argv.index("--set-threads") + 1 : argv.index("--prioritize")]
    assert "sample_images=1" in threads and "finetune_sd=1" not in threads
    assert argv[argv.index("--prioritize") + 1 :] == ["collect_samples", "collect_mask_guided"]
