"""Atomic training checkpoints and automatic resume from the newest one.

A checkpoint is one ``checkpoint-<step>.pt`` file holding everything a training loop needs to continue
(fine-tuning: :class:`workflow.diffusion.training.TrainingState`; classifiers: the epoch state of
:func:`workflow.classifier.training.fit`) and the step, which fixes the position in the seeded data order.
It is written to a temporary file and renamed, so a job killed while saving leaves the previous checkpoint
intact. Its name carries a *fingerprint* (hash of the training settings and inputs),
``checkpoint-<step>-<fingerprint>.pt``; checkpoints of other settings are never resumed from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from workflow.common.files import atomic_output

log = logging.getLogger(__name__)


def checkpoint_path(folder: str | Path, step: int, fingerprint: str) -> Path:
    """The file of the checkpoint after optimizer step ``step``."""
    return Path(folder) / f"checkpoint-{step:08d}-{fingerprint}.pt"


def _listed(folder: str | Path, fingerprint: str) -> list[Path]:
    """Checkpoint files of ``fingerprint`` in ``folder``, newest (highest step) first."""
    return sorted(Path(folder).glob(f"checkpoint-*-{fingerprint}.pt"), reverse=True)


def save(folder: str | Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` (with ``step`` and ``fingerprint``) atomically; keep only the ``keep`` newest files."""
    path = checkpoint_path(folder, state["step"], state["fingerprint"])
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    for old in _listed(folder, state["fingerprint"])[keep:]:
        old.unlink()
    log.info("saved %s", path)
    return path


def discard_foreign(folder: str | Path, fingerprint: str) -> None:
    """Delete checkpoints of other settings and temporary files left by a job killed while saving."""
    for leftover in Path(folder).glob(".checkpoint-*.tmp"):
        leftover.unlink()
    for path in set(Path(folder).glob("checkpoint-*.pt")) - set(_listed(folder, fingerprint)):
        log.warning("deleting %s: it was written with other training settings", path)
        path.unlink()


def newest(folder: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest checkpoint written with ``fingerprint``, or ``None`` to start from step 0."""
    found = _listed(folder, fingerprint)
    if not found:
        return None
    log.info("resuming from %s", found[0])
    return torch.load(found[0], map_location="cpu", weights_only=True)
