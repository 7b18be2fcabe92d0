"""Atomic training checkpoints and automatic resume from the newest one.

A checkpoint is one ``checkpoint-<step>.pt`` file holding everything needed to continue: the trainable
weights, the optimizer, the learning-rate scheduler, the EMA weights, the fp16 gradient scaler, the loss
history and the optimizer step (which fixes the position in the seeded data order: see
:mod:`workflow.finetune`). It is written to a temporary file and renamed, so a job killed while saving leaves
the previous checkpoint intact. Its name carries a *fingerprint* (hash of the training settings, the cache
and the base model): ``checkpoint-<step>-<fingerprint>.pt``; checkpoints of other settings are never resumed
from, and are deleted without being read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workflow.common.provenance import atomic_path

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
    with atomic_path(path) as tmp:
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


@dataclass
class TrainingState:
    """What a checkpoint saves and restores: the trained weights (all of the UNet for ``full``, the adapters
    for ``lora``), the optimizer, the learning-rate schedule, the EMA weights and the fp16 gradient scaler."""

    accelerator: Any
    unet: torch.nn.Module
    optimizer: Any
    lr_schedule: Any
    ema: Any

    def snapshot(self) -> dict[str, Any]:
        model = self.accelerator.unwrap_model(self.unet)
        scaler = self.accelerator.scaler
        return {
            "trainable": {
                n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad
            },
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        named = dict(self.accelerator.unwrap_model(self.unet).named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
