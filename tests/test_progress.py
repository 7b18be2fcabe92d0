"""Progress lines of long jobs in log files, and training curves through accelerate's trackers."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from workflow.common.errors import InputError
from workflow.common.progress import progress
from workflow.common.tracking import Trackers, scalar_config


def test_a_log_file_gets_one_plain_line_per_interval_with_rate_and_eta():
    """Not a terminal (a Slurm log file): whole lines, no carriage returns, at most one per interval."""
    stream = io.StringIO()
    for _ in progress(range(40), desc="sampling", unit="img", interval=0.05, stream=stream):
        time.sleep(0.005)
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert 3 <= len(lines) <= 8  # 0.2 s at one line per 0.05 s, plus the first and the last
    assert lines[-1].startswith("sampling: 100%") and "40/40" in lines[-1] and "img/s" in lines[-1]
    assert "<" in lines[1]  # elapsed<remaining: the ETA


def test_a_long_interval_writes_only_the_first_and_last_lines():
    stream = io.StringIO()
    with progress(total=1000, desc="finetune_sd", unit="step", initial=200, stream=stream) as bar:
        for _ in range(800):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert "200/1000" in lines[0] and all("1000/1000" in line for line in lines[1:])


def test_tensorboard_tracker_writes_curves_and_images(tmp_path):
    config = {"lr": 1e-3, "betas": (0.9, 0.999), "lora": {"rank": 4}, "steps": None}
    assert scalar_config(config) == {"lr": 1e-3, "betas": "(0.9, 0.999)", "lora.rank": 4, "steps": "None"}
    trackers = Trackers("tensorboard", tmp_path / "logs", "run", config)
    trackers.log({"train/loss": 0.5}, step=1)
    trackers.log_images("validation", [Image.new("L", (8, 8), 128)] * 2, step=1)
    trackers.finish()
    assert list((tmp_path / "logs" / "run").glob("events.out.tfevents.*"))


def test_no_tracker_writes_nothing_and_unknown_ones_are_refused(tmp_path):
    trackers = Trackers("none", tmp_path / "logs", "run", {})
    trackers.log({"train/loss": 0.5}, step=1)
    trackers.finish()
    assert not (tmp_path / "logs").exists()
    with pytest.raises(InputError, match="log_with"):
        Trackers("neptune", tmp_path / "logs", "run", {})
