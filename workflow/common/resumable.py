"""The training loop of seeded steps that resumes exactly, shared by the pixel-space generators
(:func:`workflow.diffusion.mask_guided.fit`: segmentation-guided diffusion and DGM-VLC) and the mask
faithfulness segmenter (:func:`workflow.evaluation.segmentation.train`).

Step ``s`` computes its loss with a generator seeded with ``SeedSequence([seed, s])``
(:func:`workflow.common.seeding.derive_seed`), so what a step draws (batch, noise, ablation) does not depend
on where the run started: a run resumed from its checkpoint (:mod:`workflow.common.checkpoints`: model,
optimizer, learning-rate schedule and losses) continues exactly as one that never stopped. A stop request
(:mod:`workflow.common.interruption`) saves a checkpoint after the step it arrived in and ends the process.
The caller chooses the optimizer, the schedule (none: a constant learning rate) and gradient clipping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import torch

from workflow.common import checkpoints
from workflow.common.interruption import StopRequest
from workflow.common.seeding import derive_seed

log = logging.getLogger(__name__)


class StepSettings(Protocol):
    """The settings :func:`fit` reads: the seed of the steps' draws, how many steps, a checkpoint every
    ``checkpoint_steps`` steps."""

    @property
    def seed(self) -> int: ...

    @property
    def steps(self) -> int: ...

    @property
    def checkpoint_steps(self) -> int: ...


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: Callable[[torch.Generator], torch.Tensor],
    settings: StepSettings,
    fingerprint: str,
    folder: str,
    stop: StopRequest,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = None,
) -> list[float]:
    """Optimize ``model`` with ``optimizer`` for ``settings.steps`` steps (module docstring), resuming from
    the newest checkpoint of ``fingerprint`` in ``folder``; ``loss`` computes step ``s``'s loss from the
    step's seeded generator. ``schedule`` steps after every optimizer step; ``max_grad_norm`` clips the
    gradient norm (``None``: not clipped). Returns the loss of every step; ``model`` is left in eval mode."""
    losses: list[float] = []
    checkpoints.set_aside(folder, fingerprint)
    state = checkpoints.newest(folder, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        losses = list(state["losses"])
    model.train()
    for step in range(len(losses), settings.steps):
        value = loss(torch.Generator().manual_seed(derive_seed(settings.seed, step)))
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        losses.append(value.item())
        done = len(losses)
        if stop or (done % settings.checkpoint_steps == 0 and done < settings.steps):
            state = {
                "step": done,
                "fingerprint": fingerprint,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "losses": losses,
            }
            if schedule is not None:
                state["schedule"] = schedule.state_dict()
            saved = checkpoints.save(folder, state, keep=1)
            if stop:
                stop.stop(done, saved)
        if done % 100 == 0:
            log.info("step %d/%d loss %.4f", done, settings.steps, losses[-1])
    model.eval()
    return losses
