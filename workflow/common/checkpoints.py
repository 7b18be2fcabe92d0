"""Atomic training checkpoints and automatic resume from the newest one.

A checkpoint is one ``checkpoint-<step>.pt`` file holding everything a training loop needs to continue
(fine-tuning: :class:`workflow.diffusion.training.TrainingState`; classifiers: the epoch state of
:func:`workflow.classifier.training.fit`; pixel generators and the segmenter:
:func:`workflow.common.resumable.fit`) and the step, which fixes the position in the seeded data order.
It is written to a temporary file and renamed, so a job killed while saving leaves the previous checkpoint
intact. Its name carries a *fingerprint*, ``checkpoint-<step>-<fingerprint>.pt``: a hash of what decides the
training trajectory (settings and inputs; not how often checkpoints or validation images are made).
Checkpoints of another fingerprint are never resumed from, and never deleted either: they are moved aside
into ``set-aside/`` (:func:`set_aside`), with a log line saying where, so that an edit made by mistake
costs no training.
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


SET_ASIDE = "set-aside"


def set_aside(folder: str | Path, fingerprint: str) -> list[Path]:
    """Move checkpoints of another fingerprint into ``folder/set-aside/`` (never deleting one) and remove
    temporary files left by a job killed while saving; returns where the moved checkpoints are now."""
    for leftover in Path(folder).glob(".checkpoint-*.tmp"):
        leftover.unlink()
    moved = []
    for path in sorted(set(Path(folder).glob("checkpoint-*.pt")) - set(_listed(folder, fingerprint))):
        target = Path(folder) / SET_ASIDE / path.name
        target.parent.mkdir(exist_ok=True)
        path.replace(target)
        log.warning(
            "%s was written with other training settings: not resumed from, moved to %s (move it back "
            "to resume it if the settings that differ do not change the training)",
            path.name,
            target,
        )
        moved.append(target)
    return moved


def newest(folder: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest checkpoint written with ``fingerprint``, or ``None`` to start from step 0."""
    found = _listed(folder, fingerprint)
    if not found:
        return None
    log.info("resuming from %s", found[0])
    return torch.load(found[0], map_location="cpu", weights_only=True)
