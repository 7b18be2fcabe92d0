"""Multi-label classifier training: masked BCE, seeded augmentation, early stopping, checkpoint and resume.

Training follows the LoRA-fairness recipe (seeds spec 5.4) made reproducible: Adam with weight decay, cosine
annealing over ``epochs``, one logit per finding and binary cross-entropy. Labels missing after the dataset's
uncertain-label policy (NaN: U-Ignore, or a column a synthetic manifest lacks) are masked out of the loss.

**Model selection** on the real validation split (``selection``), after every epoch:

- ``val_auroc``: the highest macro AUROC over the findings that have positives and negatives in ``val`` (the
  lowest validation loss when none has);
- ``val_loss``: the lowest validation loss (the masked BCE of training), as the LoRA-fairness study keeps
  ``classification_best_model.pth`` (seeds spec 5.4).

The best epoch's weights are kept, and training stops once ``patience`` epochs passed without a better score
on the same criterion, but not before ``min_epochs`` (the study: patience 10 after epoch 50).

**Determinism.** Same seed, same weights: torch runs in deterministic mode, the model is initialised after
``torch.manual_seed(seed)``, and epoch ``e`` draws its data order and augmentation from
``numpy.random.default_rng([seed, e])``, so no random state has to be saved.

**Checkpoints.** After every epoch the whole state (weights, optimizer, scheduler, history, best weights,
early-stopping counter) is written atomically with :mod:`workflow.common.checkpoints`. A restarted job
resumes from the newest checkpoint that has the same fingerprint (settings + input hashes) and ends with the
same result as an uninterrupted run; checkpoints of other settings are moved aside, never deleted.
On SIGTERM (Slurm's time limit, :mod:`workflow.common.interruption`) the batch in progress is finished and
the epoch so far is saved too (batches done, the epoch generator's state, the running loss), so the next
attempt continues the epoch where this one stopped, to the same result.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from workflow.classifier import metrics, networks
from workflow.classifier.regimes import TrainingData
from workflow.classifier.settings import TrainSettings
from workflow.common import checkpoints
from workflow.common.errors import InputError
from workflow.common.figures import load_image
from workflow.common.interruption import stop_on_signal
from workflow.common.manifest import label_column
from workflow.common.progress import progress as progress_bar
from workflow.common.tracking import Trackers

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """The best model (loaded) and how training went."""

    model: networks.Classifier
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    selection: str
    stops: list[dict[str, Any]] = field(default_factory=list)
    """Where earlier attempts stopped on a signal (``workflow.common.interruption.StopRequest.record``)."""


def image_tensor(path: str, spec: networks.ModelSpec) -> torch.Tensor:
    """The image at ``path`` as the classifier of ``spec`` reads it: ``(C, size, size)`` in [0, 1], one
    channel for grayscale, three for colour (``spec.color``)."""
    image = torch.from_numpy(load_image(path, spec.image_size, spec.color).copy()).float().div(255)
    return image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)


class ImageTable(Dataset):
    """Rows of a manifest as (image as the classifier of ``spec`` reads it, :func:`image_tensor`; label
    vector of ``spec.labels`` with NaN for missing)."""

    def __init__(self, frame: pd.DataFrame, spec: networks.ModelSpec) -> None:
        self.paths = frame["image"].astype(str).tolist()
        targets = frame[[label_column(name) for name in spec.labels]].to_numpy(dtype=np.float32)
        self.targets = torch.tensor(targets)
        self.spec = spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return image_tensor(self.paths[index], self.spec), self.targets[index]


def trainable_labels(train: pd.DataFrame, labels: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The findings with positive and negative training images, and the reason each other one is skipped."""
    kept, skipped = [], {}
    for name in labels:
        values = train[label_column(name)].dropna()
        if not (values == 1).any():
            skipped[name] = "no positive training image"
        elif not (values == 0).any():
            skipped[name] = "no negative training image"
        else:
            kept.append(name)
    if not kept:
        raise InputError(f"no finding of dataset.labels has positive and negative training images: {skipped}")
    return kept, skipped


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits over the known (non-NaN) targets; NaN never enters the loss."""
    known = ~torch.isnan(targets)
    loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets), reduction="none")
    return torch.where(known, loss, 0.0).sum() / known.sum().clamp(min=1)


def augment(
    images: torch.Tensor, rng: np.random.Generator, max_shift: float, intensity: float
) -> torch.Tensor:
    """Per image: a random translation by up to ``max_shift`` of the side (edge pixels repeated) and a
    random contrast and brightness change by up to ``intensity``. No flips: left and right matter in a chest
    X-ray."""
    count, _, height, width = images.shape
    pad = round(max_shift * height)
    if pad:
        padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
        offsets = rng.integers(0, 2 * pad + 1, size=(count, 2))
        images = torch.stack(
            [padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(offsets)]
        )
    if intensity:
        contrast = torch.from_numpy(1 + rng.uniform(-intensity, intensity, count)).float().view(-1, 1, 1, 1)
        brightness = torch.from_numpy(rng.uniform(-intensity, intensity, count)).float().view(-1, 1, 1, 1)
        images = ((images - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    return images


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """A seeded permutation of ``range(n)`` cut into batches; a last batch of one joins the one before it
    (batch normalisation cannot train on a single image)."""
    order = rng.permutation(n).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] += last
    return batches


def configure_determinism() -> None:
    """Deterministic torch kernels (on GPU too: cuBLAS needs its workspace setting before CUDA starts)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


@torch.no_grad()
def logits(
    model: networks.Classifier, table: ImageTable, batch_size: int, where: torch.device, workers: int = 0
) -> torch.Tensor:
    """The model's logits for every row of ``table``, in order."""
    model.eval()
    loader = DataLoader(table, batch_size=batch_size, shuffle=False, num_workers=workers)
    return torch.cat([model(images.to(where)).cpu() for images, _ in loader])


def predict(
    model: networks.Classifier,
    frame: pd.DataFrame,
    spec: networks.ModelSpec,
    batch_size: int,
    where: torch.device,
    workers: int = 0,
) -> pd.DataFrame:
    """Predicted probabilities (sigmoid of the logits), one column per finding, indexed by ``image_id``."""
    table = ImageTable(frame, spec)
    probabilities = torch.sigmoid(logits(model, table, batch_size, where, workers)).numpy()
    return pd.DataFrame(
        probabilities, index=pd.Index(frame["image_id"], name="image_id"), columns=spec.labels
    )


@dataclass
class EpochProgress:
    """An epoch so far: batches done, the state of the epoch's generator after them, summed loss, images."""

    batches: int = 0
    rng: dict[str, Any] | None = None
    total: float = 0.0
    seen: int = 0


def _train_epoch(
    model: networks.Classifier,
    table: ImageTable,
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    epoch: int,
    where: torch.device,
    progress: EpochProgress,
) -> Iterator[EpochProgress]:
    """Train epoch ``epoch`` from ``progress`` on (its batches done are skipped, its generator state taken
    over), yielding the progress after each batch."""
    rng = np.random.default_rng([settings.seed, epoch])
    batches = epoch_batches(len(table), settings.batch_size, rng)
    if progress.rng is not None:
        rng.bit_generator.state = progress.rng
    loader = DataLoader(table, batch_sampler=batches[progress.batches :], num_workers=settings.loader_workers)
    model.train()
    total, seen = progress.total, progress.seen
    for done, (images, targets) in enumerate(loader, start=progress.batches + 1):
        images = augment(images, rng, settings.augment_shift, settings.augment_intensity)
        loss = masked_bce(model(images.to(where)), targets.to(where))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(images)
        seen += len(images)
        yield EpochProgress(done, rng.bit_generator.state, total, seen)


def validate(
    model: networks.Classifier, table: ImageTable, settings: TrainSettings, where: torch.device
) -> tuple[float, float | None]:
    """Validation loss (masked BCE) and macro AUROC over the findings with positives and negatives in
    ``table`` (None when none has)."""
    val_logits = logits(model, table, settings.batch_size, where, settings.loader_workers)
    loss = float(masked_bce(val_logits, table.targets))
    scores = torch.sigmoid(val_logits).numpy()
    truth = table.targets.numpy()
    aurocs = [metrics.auroc(truth[:, j], scores[:, j]) for j in range(truth.shape[1])]
    defined = [a for a in aurocs if a is not None]
    return loss, float(np.mean(defined)) if defined else None


def selection_score(criterion: str, val_loss: float, val_auroc: float | None) -> tuple[float, str]:
    """The score model selection maximises under ``criterion`` (``classifier.training.selection``), and
    its name."""
    if criterion == "val_auroc" and val_auroc is not None:
        return val_auroc, "val macro AUROC"
    if criterion == "val_auroc":
        return -val_loss, "lowest val loss (no finding has positives and negatives in val)"
    return -val_loss, "lowest val loss"


def fit(
    data: TrainingData,
    spec: networks.ModelSpec,
    settings: TrainSettings,
    work_dir: str,
    fingerprint: str,
    where: torch.device,
    trackers: Trackers | None = None,
) -> FitResult:
    """Train on ``data.train``, select on ``data.val``; resume from ``work_dir`` when a checkpoint fits.
    Each epoch's losses, val macro AUROC and learning rate go to ``trackers`` (curves of the run)."""
    configure_determinism()
    torch.manual_seed(settings.seed)
    model = networks.build(spec, settings.weights).to(where)
    optimizer = torch.optim.Adam(
        model.parameters(), settings.learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    train_table = ImageTable(data.train, spec)
    val_table = ImageTable(data.val, spec)
    checkpoints.set_aside(work_dir, fingerprint)
    state = checkpoints.newest(work_dir, fingerprint)
    if state is None:
        state = {
            "step": 0,
            "history": [],
            "best_score": None,
            "best_epoch": 0,
            "since_best": 0,
            "stopped": False,
        }
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    selection = state["history"][-1]["selection"] if state["history"] else ""
    per_epoch = len(epoch_batches(len(train_table), settings.batch_size, np.random.default_rng(0)))  # count
    done = state["step"] * per_epoch + (state.get("epoch_progress") or {}).get("batches", 0)
    bar = progress_bar(total=settings.epochs * per_epoch, initial=done, desc="train_classifier", unit="batch")
    with stop_on_signal() as stop, bar:
        while not state["stopped"] and state["step"] < settings.epochs:
            epoch = state["step"]
            progress = so_far = EpochProgress(**(state.get("epoch_progress") or {}))
            for progress in _train_epoch(model, train_table, optimizer, settings, epoch, where, so_far):
                bar.update(1)
                if stop:  # save the epoch so far; the checkpoint keeps the completed-epoch count as its step
                    state |= _training_state(model, optimizer, scheduler, fingerprint)
                    state |= {"epoch_progress": asdict(progress)}
                    state["stops"] = [*state.get("stops", []), stop.record(epoch)]
                    stop.stop(epoch, checkpoints.save(work_dir, state, keep=1))
            train_loss = progress.total / progress.seen
            learning_rate = scheduler.get_last_lr()[0]
            scheduler.step()
            val_loss, val_auroc = validate(model, val_table, settings, where)
            score, selection = selection_score(settings.selection, val_loss, val_auroc)
            if state["best_score"] is None or score > state["best_score"]:
                best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                state |= {"best_score": score, "best_epoch": epoch + 1, "since_best": 0, "best_state": best}
            else:
                state["since_best"] += 1
            record = {"epoch": epoch + 1, "learning_rate": learning_rate, "train_loss": train_loss}
            state["history"].append(
                record | {"val_loss": val_loss, "val_macro_auroc": val_auroc, "selection": selection}
            )
            log.info("epoch %d: %s", epoch + 1, state["history"][-1])
            bar.set_postfix(val_loss=f"{val_loss:.4f}", refresh=False)
            if trackers is not None:
                curves = {
                    "train/loss": train_loss,
                    "val/loss": val_loss,
                    "train/learning_rate": learning_rate,
                }
                trackers.log(
                    curves | ({"val/macro_auroc": val_auroc} if val_auroc is not None else {}), epoch + 1
                )
            state["stopped"] = epoch + 1 >= settings.min_epochs and state["since_best"] >= settings.patience
            state |= _training_state(model, optimizer, scheduler, fingerprint) | {"step": epoch + 1}
            state["epoch_progress"] = None
            checkpoints.save(work_dir, state, keep=1)
    model.load_state_dict(state["best_state"])
    stops = state.get("stops", [])
    return FitResult(model.eval(), state["history"], state["best_epoch"], state["stopped"], selection, stops)


def _training_state(
    model: networks.Classifier, optimizer: torch.optim.Optimizer, scheduler: Any, fingerprint: str
) -> dict[str, Any]:
    """The parts of a checkpoint that the model, optimizer and schedule hold."""
    return {
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
