"""Fine-tuning Stable Diffusion on cached latents: the full UNet (PRISM) or LoRA adapters (LoRA-fairness).

One loop for both methods (rule ``finetune_sd``, launched with ``accelerate launch``); the VAE and the text
encoder are frozen and their outputs come from the cache (:mod:`workflow.diffusion.latent_cache`), so a
step runs the UNet only. Per step, for a batch of latents ``z0 = s * z`` (``z`` drawn from the cached VAE
posterior, ``s`` the VAE scaling factor) and text embeddings ``c``:

- **Caption dropout** (classifier-free guidance, Ho & Salimans 2022): ``c`` is replaced by the empty prompt's
  embedding with probability ``caption_dropout``, so the model also learns the unconditional score.
- **Noise offset** (Guttenberg 2023, "Diffusion with offset noise"): ``eps += offset * n`` with ``n`` one
  normal draw per (sample, channel), constant over the image.
- **DDPM forward process** (Ho et al. 2020, eq. 4): ``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps``, ``t``
  uniform over the 1000 training steps.
- **Loss**: the simple epsilon loss ``|| eps - eps_theta(z_t, t, c) ||^2`` (Ho et al. 2020, eq. 14), or the
  v-prediction target (Salimans & Ho 2022) when the base model's scheduler says so; with ``snr_gamma`` each
  sample is weighted by min-SNR-gamma (Hang et al. 2023): ``min(SNR_t, gamma) / SNR_t`` (epsilon) or
  ``min(SNR_t, gamma) / (SNR_t + 1)`` (v).
- AdamW, gradient clipping, a diffusers learning-rate schedule, and for ``full`` optionally an EMA of the
  UNet weights (diffusers' ``EMAModel``; the saved model then holds the EMA weights, as diffusers does).

**Seeded data order and noise.** Epoch ``e`` visits the images in the permutation seeded by ``(seed, 0, e)``;
micro-step ``m`` draws the flip views, caption dropout, latent samples, noise and timesteps of its whole
*global* batch from generators seeded with ``(seed, 1, m)`` and each process keeps its slice
(:func:`step_draws`), so the draws do not depend on the number of processes; torch's default generators,
which draw LoRA dropout inside the UNet, are reseeded with ``(seed, 1, m, r)`` on process ``r``
(:func:`workflow.common.seeding.derive_seed`). The random state is therefore a function of the step, and a
run resumed from a checkpoint draws exactly what an uninterrupted run draws.

**Stopped by the batch system.** On SIGTERM (Slurm's time limit, ``scancel``;
:mod:`workflow.common.interruption`) the step in progress is finished, every process agrees to stop at the
same step, a checkpoint is saved and the job exits with status 143; the next attempt resumes from it.

**Data parallel.** With ``n`` processes, every optimizer step consumes ``n * batch_size * accumulation``
images: process ``r`` takes the ``r``-th slice of each global batch and of its random draws; gradients are
averaged by DDP. ``n`` processes at ``batch_size`` therefore train the same weights as one process at
``n * batch_size`` up to rounding (with LoRA, when ``diffusion.lora.dropout`` is 0: dropout masks are drawn
per process). tests/test_diffusion.py checks it with 2 CPU processes (gloo).

**Precision.** ``mixed_precision: auto`` (the default) is bf16 on a GPU that has it natively (Ampere and
newer) and fp32 (``no``) elsewhere, the CPU included (:func:`training_precision`); the resolved value is
passed to accelerate's ``Accelerator``, whose argument overrides ``accelerate launch --mixed_precision``,
and written to the report. ``no`` keeps fp32 everywhere (the LoRA-fairness study).

**Fast path** (``diffusion.train``; none changes what is computed beyond rounding): TF32 matmuls on CUDA
(``tf32``), torch's fused AdamW kernel (``fused_adam``, CUDA and CPU), a multi-tensor EMA update
(``foreach_ema``), a channels-last UNet (``channels_last``), ``torch.compile`` of the UNet (``compile``),
SDPA attention (always).
A batch's latents are one gather from the memory-mapped cache, read by a torch ``DataLoader`` (one
worker process prefetching batches into pinned memory on CUDA, in the training process on the CPU;
:func:`micro_batches`) and copied to the GPU asynchronously; the epoch's permutation is drawn once. The
step never waits for the GPU: losses and gradient norms stay on the device and are read back every
``log_steps`` steps (and at checkpoints), when they go to the log, a progress line and the tracker
(``log_with``, :mod:`workflow.common.tracking`) with the learning rate and, at every validation, the
validation images.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from workflow.common import checkpoints
from workflow.common.devices import pick_device, use_tf32
from workflow.common.errors import InputError
from workflow.common.figures import loss_curve
from workflow.common.files import write_json
from workflow.common.interruption import attempt_log, stop_on_signal
from workflow.common.model_card import weights_label
from workflow.common.progress import progress
from workflow.common.provenance import config_hash, provenance
from workflow.common.seeding import derive_seed
from workflow.common.tracking import Trackers
from workflow.diffusion import base_models, saving
from workflow.diffusion.latent_cache import EMPTY_PROMPT, LatentCache
from workflow.diffusion.settings import TrainSettings
from workflow.diffusion.validation import Validator

log = logging.getLogger(__name__)

ORDER, NOISE = 0, 1  # seed domains: data order per epoch, random draws per micro-step
PREFETCH = 4  # batches a CUDA run reads ahead


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
        """Load a :meth:`snapshot` (read on the CPU) into the training objects, the EMA weights onto the
        training device: loading them after ``ema.to(device)`` left them on the CPU, and the first EMA step
        on a GPU failed."""
        named = dict(self.accelerator.unwrap_model(self.unet).named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
            self.ema.to(self.accelerator.device)
        if self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])


def steps_per_epoch(n_images: int, settings: TrainSettings, processes: int) -> int:
    """Micro-batches per epoch on each process (the last incomplete global batch is dropped)."""
    micro = n_images // (settings.batch_size * processes)
    if micro == 0:
        raise InputError(
            f"diffusion.train.batch_size: {n_images} training images are fewer than batch_size "
            f"{settings.batch_size} x {processes} processes"
        )
    return micro


def total_steps(n_images: int, settings: TrainSettings, processes: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``epochs`` over the data."""
    if settings.max_steps is not None:
        return settings.max_steps
    micro = settings.epochs * steps_per_epoch(n_images, settings, processes)
    return max(1, micro // settings.gradient_accumulation_steps)


@lru_cache(maxsize=2)
def epoch_order(n_images: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of the images in epoch ``epoch`` (drawn once per epoch)."""
    order = torch.Generator().manual_seed(derive_seed(seed, ORDER, epoch))
    return torch.randperm(n_images, generator=order)


def batch_indices(
    n_images: int, settings: TrainSettings, processes: int, rank: int, micro: int
) -> torch.Tensor:
    """Cache rows of micro-step ``micro`` on process ``rank`` in the seeded data order."""
    per_epoch = steps_per_epoch(n_images, settings, processes)
    epoch, position = divmod(micro, per_epoch)
    permutation = epoch_order(n_images, settings.seed, epoch)
    start = (position * processes + rank) * settings.batch_size
    return permutation[start : start + settings.batch_size]


TRAJECTORY_FREE = (
    "checkpoint_steps",
    "checkpoints_total_limit",
    "validation_steps",
    "validation_prompts",
    "validation_inference_steps",
    "log_with",
    "log_steps",
    "tf32",
    "fused_adam",
    "foreach_ema",
    "channels_last",
    "compile",
)
"""Training settings that do not change the weights a run reaches beyond rounding: how often it checkpoints,
validates and logs, and the fast path."""


def trajectory_fingerprint(settings: TrainSettings, cache_id: str, location: str) -> str:
    """What a checkpoint must share with the run resuming from it: every setting that changes the training
    trajectory (not :data:`TRAJECTORY_FREE`), the latent cache and the base model. The process count is left
    out: a run resumed on another number of GPUs continues with the new global batch and says so."""
    decisive = {k: v for k, v in settings.to_dict().items() if k not in TRAJECTORY_FREE}
    return config_hash({"settings": decisive, "cache": cache_id, "base": location})


def adamw(parameters: list[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) with the settings' hyperparameters, torch's fused kernel when
    ``fused_adam``."""
    return torch.optim.AdamW(
        parameters,
        lr=settings.learning_rate,
        betas=settings.adam_betas,
        eps=settings.adam_epsilon,
        weight_decay=settings.weight_decay,
        fused=settings.fused_adam,
    )


def weight_average(unet: torch.nn.Module, settings: TrainSettings) -> Any:
    """diffusers' ``EMAModel`` of the UNet's weights (``ema``; torch's multi-tensor kernels when
    ``foreach_ema``), or ``None``."""
    from diffusers.training_utils import EMAModel

    if not settings.ema:
        return None
    return EMAModel(unet.parameters(), decay=settings.ema_decay, foreach=settings.foreach_ema)


def learning_rate_schedule(optimizer: torch.optim.Optimizer, settings: TrainSettings, steps: int) -> Any:
    """diffusers' schedule ``lr_scheduler`` over ``steps`` optimizer steps (``lr_warmup_steps`` warm-up).

    Arguments are passed by name: diffusers 0.42's third positional parameter is ``step_rules``, so the
    positional call crashed for ``linear``, ``cosine``, ``cosine_with_restarts`` and ``polynomial`` and warmed
    ``constant_with_warmup`` up over the whole run.
    """
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        settings.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=settings.lr_warmup_steps,
        num_training_steps=steps,
    )


def step_schedule(lr_schedule: Any, accelerator: Any) -> None:
    """Advance the learning-rate schedule after an optimizer step, unless the fp16 gradient scaler skipped it
    (inf/NaN gradients): the schedule counts the steps taken. Stepped once per optimizer step by hand, not
    through accelerate, which steps it once per process."""
    if not accelerator.optimizer_step_was_skipped:
        lr_schedule.step()


def training_precision(setting: str, device: torch.device) -> str:
    """accelerate's mixed precision for ``diffusion.train.mixed_precision`` on ``device``: ``auto`` is bf16 on
    a GPU with native bf16 (compute capability 8.0 and newer: Ampere, Hopper) and ``no`` (fp32) on older GPUs
    and the CPU; other values pass through.

    Raises:
        InputError: fp16 on a CPU.
    """
    if setting == "auto":
        native = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
        return "bf16" if native else "no"
    if setting == "fp16" and device.type == "cpu":
        raise InputError(
            "diffusion.train.mixed_precision: fp16 needs a GPU; use 'no', 'bf16' or 'auto' on a CPU"
        )
    return setting


@dataclass(frozen=True)
class StepDraws:
    """The random draws of one micro-step's batch: per image the cached flip view, whether the caption is
    dropped (CPU), the standard normal of the latent sample, the diffusion noise (offset included) and the
    timestep (on the training device)."""

    view: torch.Tensor
    dropped: torch.Tensor
    latent: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor

    def part(self, rank: int, size: int) -> StepDraws:
        """The draws of images ``rank * size`` to ``(rank + 1) * size``: process ``rank``'s slice."""
        part = slice(rank * size, (rank + 1) * size)
        return StepDraws(*(getattr(self, f.name)[part] for f in fields(self)))


def step_draws(
    settings: TrainSettings,
    micro: int,
    images: int,
    latent_shape: tuple[int, int, int],
    flips: int,
    train_timesteps: int,
    device: torch.device,
) -> StepDraws:
    """The draws of micro-step ``micro``'s global batch of ``images`` (all processes together), from a CPU
    and a device generator seeded with ``(seed, 1, micro)``: the same on every process and for any number of
    processes (module docstring)."""
    seed = derive_seed(settings.seed, NOISE, micro)
    host = torch.Generator().manual_seed(seed)
    on_device = torch.Generator(device).manual_seed(seed)
    view = torch.randint(0, flips, (images,), generator=host)
    dropped = torch.rand(images, generator=host) < settings.caption_dropout
    latent = torch.randn((images, *latent_shape), generator=on_device, device=device)
    noise = torch.randn((images, *latent_shape), generator=on_device, device=device)
    if settings.noise_offset:  # Guttenberg 2023: one normal draw per (image, channel)
        offset = torch.randn((images, latent_shape[0], 1, 1), generator=on_device, device=device)
        noise += settings.noise_offset * offset
    timesteps = torch.randint(0, train_timesteps, (images,), generator=on_device, device=device)
    return StepDraws(view, dropped, latent, noise, timesteps)


def diffusion_loss(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    text: torch.Tensor,
    noise_scheduler: Any,
    settings: TrainSettings,
    draws: StepDraws,
) -> torch.Tensor:
    """The DDPM training loss of one batch (epsilon or v target, min-SNR weights) with the batch's
    ``draws`` of noise and timesteps."""
    from diffusers.training_utils import compute_snr

    noise, timesteps = draws.noise, draws.timesteps
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    v_prediction = noise_scheduler.config.prediction_type == "v_prediction"
    target = noise_scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    prediction = unet(noisy, timesteps, text).sample.float()
    if settings.snr_gamma is None:
        return F.mse_loss(prediction, target.float())
    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=settings.snr_gamma) / (snr + 1 if v_prediction else snr)
    per_sample = F.mse_loss(prediction, target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


class MicroBatches(torch.utils.data.Dataset):
    """Item ``m``: the cached posteriors (``(batch_size, flips, 2 * channels, h, w)``, float32) and prompt
    rows of micro-step ``m``'s batch on process ``rank`` (:func:`batch_indices`), read with one gather."""

    def __init__(self, cache: LatentCache, settings: TrainSettings, processes: int, rank: int) -> None:
        self.cache, self.settings, self.processes, self.rank = cache, settings, processes, rank

    def __getitem__(self, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = batch_indices(len(self.cache), self.settings, self.processes, self.rank, micro)
        return self.cache.posteriors(rows), self.cache.prompt_index[rows]


def _ignore_sigterm(worker: int) -> None:
    """A loader worker ignores SIGTERM (Slurm signals every process of the job): the training process
    finishes its step and stops the worker itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def micro_batches(
    cache: LatentCache,
    settings: TrainSettings,
    processes: int,
    rank: int,
    micros: range,
    device: torch.device,
) -> torch.utils.data.DataLoader:
    """The batches of micro-steps ``micros`` on process ``rank`` (:class:`MicroBatches`), in order: on CUDA
    read ahead by one worker process into pinned memory (``PREFETCH`` batches), on the CPU in the training
    process."""
    cuda = device.type == "cuda"
    return torch.utils.data.DataLoader(
        MicroBatches(cache, settings, processes, rank),
        batch_size=None,
        sampler=micros,
        num_workers=1 if cuda else 0,
        pin_memory=cuda,
        prefetch_factor=PREFETCH if cuda else None,
        worker_init_fn=_ignore_sigterm if cuda else None,
    )


def batch_inputs(
    cache: LatentCache,
    batch: tuple[torch.Tensor, torch.Tensor],
    draws: StepDraws,
    settings: TrainSettings,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents ``s * z``, ``z`` sampled from the batch's cached posteriors (each in its drawn flip view), and
    text embeddings with the drawn caption dropout."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    posteriors, prompt_rows = batch
    chosen = posteriors.to(device, non_blocking=True)[torch.arange(len(prompt_rows)), draws.view]
    posterior = DiagonalGaussianDistribution(chosen)
    latents = (posterior.mean + posterior.std * draws.latent) * cache.scaling_factor
    prompt_rows = torch.where(draws.dropped, EMPTY_PROMPT, prompt_rows)
    return latents, cache.embeddings[prompt_rows].to(device, non_blocking=True)


def build_unet(location: str, settings: TrainSettings, weight_dtype: torch.dtype) -> torch.nn.Module:
    """The base UNet with SDPA attention, made trainable whole (full) or through LoRA adapters, in the
    channels-last memory format and compiled if the settings say so."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = UNet2DConditionModel.from_pretrained(location, subfolder="unet")
    unet.set_attn_processor(AttnProcessor2_0())
    if settings.method == "lora":
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        unet.requires_grad_(False)
        if weight_dtype != torch.float32:  # frozen base weights in the mixed-precision dtype
            unet.to(dtype=weight_dtype)
        torch.manual_seed(settings.seed)  # the adapters' Gaussian initialisation
        lora = settings.lora
        unet.add_adapter(
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                init_lora_weights="gaussian",
                target_modules=list(lora.target_modules),
            )
        )
        cast_training_params(unet, dtype=torch.float32)
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if settings.channels_last:
        unet.to(memory_format=torch.channels_last)
    if settings.compile:
        unet.compile()  # in place: parameter names, checkpoints and saving are unchanged
    unet.train()
    return unet


def write_report(
    path: str,
    settings: TrainSettings,
    base_model: str,
    cache: Mapping[str, Any],
    run: Mapping[str, Any],
    losses: list[float],
) -> None:
    """The run's JSON report: provenance (which weights it started from), throughput and the loss curve."""
    per_step = settings.batch_size * settings.gradient_accumulation_steps * run["processes"]
    seconds = run["seconds"]
    meta = provenance(settings.to_dict() | {"base_model": base_model}, seeds={"train": settings.seed})
    meta["weights"] = f"fine-tuned ({settings.method}) from {cache['weights']}"
    report = {
        "provenance": meta,
        "method": settings.method,
        "base_model": base_model,
        "cache_id": cache["cache_id"],
    }
    report |= {key: value for key, value in run.items() if key != "seconds"}
    report |= {
        "train_seconds_this_job": round(seconds, 3),
        "images_per_second_this_job": (
            round((run["steps"] - run["resumed_from_step"]) * per_step / seconds, 3) if seconds > 0 else None
        ),
        "loss_first_10": sum(losses[:10]) / max(len(losses[:10]), 1),
        "loss_last_10": sum(losses[-10:]) / max(len(losses[-10:]), 1),
        "losses": losses,
    }
    write_json(path, report)


def train(
    cache_path: str,
    base_model: str,
    settings: TrainSettings,
    gpus: int,
    paths: Mapping[str, str],
) -> None:
    """Fine-tune, checkpointing every ``checkpoint_steps`` and on SIGTERM; resume from the newest checkpoint.

    Args:
        cache_path: the latent cache (:mod:`workflow.diffusion.latent_cache`).
        base_model: folder or hub id of the base model (the tiny stand-in's folder for ``tiny``).
        gpus: GPUs of the job (``resources.gpu``); 0 trains on the CPU.
        paths: ``model`` (output folder), ``report`` (JSON), ``loss`` and ``grid`` (PNGs), ``checkpoints``
            and ``validation`` (working folders, kept across a killed job; the main process keeps the log of
            every attempt in ``checkpoints``, :func:`workflow.common.interruption.attempt_log`), ``logs``
            (the tracker's folder).
    """
    from accelerate import Accelerator, PartialState

    cpu = pick_device(gpus).type == "cpu"
    # the process's device first (this process's GPU, not GPU 0 of every process), then its precision
    device = PartialState(cpu=cpu).device
    accelerator = Accelerator(
        mixed_precision=training_precision(settings.mixed_precision, device),
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        cpu=cpu,
    )
    with attempt_log(paths["checkpoints"]) if accelerator.is_main_process else nullcontext():
        _train(accelerator, cache_path, base_model, settings, paths)
    accelerator.end_training()


def _train(
    accelerator: Any, cache_path: str, base_model: str, settings: TrainSettings, paths: Mapping[str, str]
) -> None:
    """:func:`train` on this process of the run."""
    from diffusers import DDPMScheduler

    device, processes, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    precision = str(accelerator.mixed_precision)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    use_tf32(settings.tf32)
    location = base_models.resolve_base(base_model)
    cache = LatentCache(cache_path)
    steps = total_steps(len(cache), settings, processes)
    fingerprint = trajectory_fingerprint(
        replace(settings, mixed_precision=precision), cache.provenance["cache_id"], location
    )

    unet = build_unet(location, settings, weight_dtype).to(device)
    noise_scheduler = DDPMScheduler.from_pretrained(location, subfolder="scheduler")
    parameters = [p for p in unet.parameters() if p.requires_grad]
    optimizer = adamw(parameters, settings)
    lr_schedule = learning_rate_schedule(optimizer, settings, steps)
    ema = weight_average(unet, settings)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    if ema is not None:
        ema.to(device)

    work = Path(paths["checkpoints"])
    if accelerator.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        checkpoints.set_aside(work, fingerprint)
    accelerator.wait_for_everyone()
    training = TrainingState(accelerator, unet, optimizer, lr_schedule, ema)
    state = checkpoints.newest(work, fingerprint)
    step, losses, images_seen, process_change, stops = 0, [], 0, None, []
    if state is not None:
        training.restore(state)
        step, losses, images_seen = state["step"], list(state["losses"]), state["images_seen"]
        stops = list(state.get("stops", []))
        if state["processes"] != processes:
            process_change = {"step": step, "from": state["processes"], "to": processes}
            log.warning(
                "resuming at step %d with %d processes instead of %d: the global batch changes from here on",
                step,
                processes,
                state["processes"],
            )

    validator = None
    if rank == 0:
        validator = Validator(
            location,
            cache,
            settings.validation_prompts,
            settings.validation_inference_steps,
            settings.seed,
            weight_dtype,
            device,
        )
    main = accelerator.is_main_process
    trackers = Trackers(
        settings.log_with, paths["logs"], "finetune", settings.to_dict() | {"processes": processes}, main
    )
    bar = progress(total=steps, initial=step, desc="finetune_sd", unit="step", disable=not main)
    pending: list[torch.Tensor] = []  # (loss, gradient norm) of each optimizer step since the last read-back

    def read_back(step: int) -> None:
        """Read the pending losses and gradient norms from the device (the one host sync), averaged over
        the processes, into ``losses``, the log, the progress line and the tracker."""
        if not pending:
            return
        values = accelerator.reduce(torch.stack(pending), "mean").cpu()
        pending.clear()
        losses.extend(values[:, 0].tolist())
        loss, grad_norm = values.mean(dim=0).tolist()
        rate = lr_schedule.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        log.info("step %d: loss %.5f, gradient norm %.4f, learning rate %.3g", step, loss, grad_norm, rate)
        trackers.log({"train/loss": loss, "train/grad_norm": grad_norm, "train/learning_rate": rate}, step)

    accumulation = settings.gradient_accumulation_steps
    per_step = settings.batch_size * accumulation * processes
    started, first_step = time.perf_counter(), step
    running = torch.zeros((), device=device)
    grad_norm = torch.zeros((), device=device)
    micros = range(step * accumulation, steps * accumulation)
    latent_shape = (cache.latent_channels, cache.latent_size, cache.latent_size)
    global_batch = settings.batch_size * processes
    train_timesteps = noise_scheduler.config.num_train_timesteps
    with stop_on_signal() as stop, bar:
        loader = micro_batches(cache, settings, processes, rank, micros, device)
        for micro, batch in zip(micros, loader, strict=True):
            torch.manual_seed(derive_seed(settings.seed, NOISE, micro, rank))  # LoRA dropout
            draws = step_draws(
                settings, micro, global_batch, latent_shape, cache.flips, train_timesteps, device
            )
            draws = draws.part(rank, settings.batch_size)
            latents, text = batch_inputs(cache, batch, draws, settings, device)
            with accelerator.accumulate(unet), accelerator.autocast():
                loss = diffusion_loss(unet, latents, text.to(weight_dtype), noise_scheduler, settings, draws)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(parameters, settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running = running + loss.detach().float() / accumulation
            if not accelerator.sync_gradients:
                continue
            step_schedule(lr_schedule, accelerator)
            if ema is not None:
                ema.step(accelerator.unwrap_model(unet).parameters())
            step += 1
            images_seen += per_step
            pending.append(torch.stack([running, grad_norm.detach().float()]))
            running = torch.zeros((), device=device)
            bar.update(1)
            if processes == 1:
                stopping = bool(stop)
            else:  # a signal to any process stops all after this step (one small all-reduce)
                if stop:
                    accelerator.set_trigger()
                stopping = accelerator.check_trigger()
            due = step % settings.checkpoint_steps == 0 or step == steps or stopping
            if due or step % settings.log_steps == 0:
                read_back(step)
            saved = None
            if due:
                if main:
                    state = training.snapshot() | {"step": step, "fingerprint": fingerprint, "losses": losses}
                    state |= {"processes": processes, "images_seen": images_seen}
                    state["stops"] = [*stops, stop.record(step)] if stopping else stops
                    saved = checkpoints.save(work, state, settings.checkpoints_total_limit)
                accelerator.wait_for_everyone()
            if stopping:
                trackers.finish()
                stop.stop(step, saved)
            if validator is not None and settings.validation_steps and step % settings.validation_steps == 0:
                grid = validator.grid(
                    accelerator.unwrap_model(unet), ema, Path(paths["validation"]) / f"step-{step:08d}.png"
                )
                trackers.log_images("validation", grid, step)
    seconds = time.perf_counter() - started

    if main:
        final = accelerator.unwrap_model(unet)
        trackers.log_images("validation", validator.grid(final, ema, paths["grid"]), step)
        trackers.finish()
        saving.save_trained(
            final, ema, settings.method, location, paths["model"], cache.provenance["weights"]
        )
        run = {"processes": processes, "device": device.type, "mixed_precision": precision}
        run |= {"steps": step, "resumed_from_step": first_step}
        run |= {"images_seen": images_seen, "process_change": process_change, "stopped_by_signal": stops}
        run |= {"seconds": seconds, "trainable_parameters": sum(p.numel() for p in parameters)}
        write_report(paths["report"], settings, base_model, cache.provenance, run, losses)
        loss_curve(losses, paths["loss"], f"{settings.method} fine-tuning, base {weights_label(location)}")
        for path in work.glob("checkpoint-*.pt"):
            path.unlink()
    accelerator.wait_for_everyone()
