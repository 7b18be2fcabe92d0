"""Training curves through accelerate's experiment trackers (``log_with``: tensorboard, wandb, mlflow, none).

Fine-tuning writes to ``results/models/<generator>/logs/``, the classifier to its run folder's ``logs/``;
``tensorboard --logdir results`` shows every run of a study. The trackers are accelerate's own classes
(``accelerate.tracking``), started on the main process only; wandb and mlflow read their usual environment
variables (project, tracking URI) and need their package installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workflow.common.errors import InputError

TRACKERS = ("tensorboard", "wandb", "mlflow", "none")


def scalar_config(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A settings dict flattened to the scalars trackers store as hyperparameters (``lora.rank``; lists and
    ``None`` as text)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= scalar_config(value, f"{name}.")
        else:
            flat[name] = value if isinstance(value, bool | int | float | str) else str(value)
    return flat


class Trackers:
    """The trackers of one run (none when ``log_with`` is ``none`` or ``active`` is false)."""

    def __init__(
        self, log_with: str, folder: str | Path, run: str, config: Mapping[str, Any], active: bool = True
    ) -> None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        if log_with not in TRACKERS:
            raise InputError(f"log_with: '{log_with}' is none of {list(TRACKERS)}")
        self.trackers: list[Any] = []
        if not active or log_with == "none":
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        kind = LOGGER_TYPE_TO_CLASS[log_with]
        tracker = kind(run, str(folder)) if kind.requires_logging_directory else kind(run)
        tracker.start()
        tracker.store_init_configuration(scalar_config(config))
        self.trackers.append(tracker)

    def log(self, values: Mapping[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(dict(values), step=step)

    def log_images(self, name: str, images: Sequence[Any], step: int) -> None:
        """PIL images as one image set, on the trackers that take images."""
        arrays = np.stack([np.asarray(image.convert("RGB")) for image in images])
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({name: arrays}, step=step, dataformats="NHWC")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({name: list(arrays)}, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
