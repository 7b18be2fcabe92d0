"""Mask- and clinical-text-conditioned pixel diffusion, DGM-VLC (Xing, Ning, Nan, Yang, arXiv 2410.13823), in
2D and 3D with one code path (rules ``train_mask_text``, ``sample_mask_text``; generator kind ``mask-text``).

**Network.** The segmentation-guided generator's MONAI ``DiffusionModelUNet``
(:func:`workflow.diffusion.mask_guided.network`, ``spatial_dims`` 2 or 3): the one-hot mask concatenated to
the noisy image as input channels, plus cross-attention (``with_conditioning``) on the token embeddings of the
image's caption, the last hidden state of a frozen transformers text encoder (:func:`encode_captions`).
DGM-VLC fuses one 512-d MedCLIP sentence embedding into a 3D guided-diffusion UNet's middle block (seeds
spec 3.3); MedCLIP is not on the hub as a model, so ``text_encoder`` names a substitute (the schema's default,
Bio_ClinicalBERT, the model MedCLIP's text encoder starts from) or ``tiny`` (the tiny SD's random CLIP text
encoder and word tokenizer, :func:`workflow.diffusion.base_models.word_tokenizer`, offline). The captions are
the generator's prompt strategies' (``tabular`` for DGM-VLC: "Lung CT scan: Patient age: 68. ...").

**Training** (:func:`train`): epsilon prediction, Ho et al. 2020 eq. 14 (:func:`mask_guided.noise_loss`), on
random patches of ``patch_size`` (DGM-VLC's 64 x 64 x 32 crops; null: whole images), with the caption replaced
by the empty caption with probability ``text_dropout`` (classifier-free guidance, Ho and Salimans 2022, sec.
3.2); AdamW with warm-up and cosine decay, checkpoints and exact resume as :func:`mask_guided.fit`.

**Sampling** (:func:`generate`): DDIM (eta 0, Song et al. 2021 eq. 12) over the whole image or volume. At
every step the noise prediction of the whole comes from MONAI's ``sliding_window_inference``: windows of the
training patch size overlapping by ``overlap``, each prediction weighted by a gaussian centred on its window
and the weights normalised, so there are no seams at window borders; within a window the prediction is
classifier-free guided, ``uncond + w (cond - uncond)`` (Ho and Salimans 2022 eq. 6). The image of real image
``id`` starts from noise seeded with ``SeedSequence([seed, sha256(id)])`` (:func:`mask_guided.image_seed`),
and DDIM with eta 0 is deterministic given that noise: an image depends only on (model, settings, seed, id,
caption).

The paper's difference maps for changed clinical fields are :mod:`workflow.diffusion.differences`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from workflow.common.errors import InputError
from workflow.common.files import write_nifti
from workflow.common.interruption import StopRequest
from workflow.diffusion import mask_guided
from workflow.diffusion.settings import MaskTextSampleSettings, MaskTextTrainSettings

if TYPE_CHECKING:
    from monai.networks.nets import DiffusionModelUNet

TRAIN_KEY = "diffusion.mask_text.train"
TINY = "tiny"


def text_encoder(name: str, seed: int) -> tuple[Any, torch.nn.Module]:
    """The tokenizer and frozen text model ``name`` (``diffusion.mask_text.train.text_encoder``): ``tiny``,
    the tiny SD's CLIP text encoder with random weights seeded by ``seed`` and its word tokenizer, or a hub
    id.

    Raises:
        InputError: naming the key when the hub id cannot be loaded (offline, or no such model).
    """
    if name == TINY:
        from transformers import CLIPTextConfig, CLIPTextModel

        from workflow.diffusion.base_models import TINY_TEXT, word_tokenizer

        tokenizer = word_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPTextModel(CLIPTextConfig(**({"vocab_size": len(tokenizer)} | TINY_TEXT)))
        return tokenizer, model.eval()
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer, model = AutoTokenizer.from_pretrained(name), AutoModel.from_pretrained(name)
    except OSError as err:
        raise InputError(
            f"{TRAIN_KEY}.text_encoder: cannot load '{name}' ({err}); on an offline machine download it "
            "first (huggingface-cli download) or use 'tiny'"
        ) from err
    if hasattr(model, "text_model"):  # a dual encoder (CLIP, SigLIP): its text tower
        model = model.text_model
    elif model.config.is_encoder_decoder:  # T5 and the like: the encoder
        model = model.get_encoder()
    return tokenizer, model.eval()


def encode_captions(
    captions: Sequence[str],
    name: str,
    seed: int,
    max_tokens: int,
    device: torch.device | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """The frozen text encoder's last hidden state of each caption (n x tokens x features, on the CPU), run on
    ``device``, padded and cut to ``max_tokens`` (or the tokenizer's maximum); the empty caption is the
    unconditional context."""
    tokenizer, model = text_encoder(name, seed)
    model.to(device or "cpu")
    length = min(max_tokens, tokenizer.model_max_length)
    outputs = []
    with torch.no_grad():
        for start in range(0, len(captions), batch_size):
            tokens = tokenizer(
                list(captions[start : start + batch_size]),
                padding="max_length",
                max_length=length,
                truncation=True,
                return_tensors="pt",
            )
            tokens = tokens.to(device or "cpu")
            hidden = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
            outputs.append(hidden.float().cpu())
    return torch.cat(outputs)


def read_volume_pair(
    image_path: str,
    mask_path: str,
    classes: int,
    window: tuple[float, float],
    shape: Sequence[int] | None = None,
    reader: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A CT/MR volume (NIfTI or DICOM, read with ``reader``: :func:`workflow.data.slicing.load_volume`, the
    study's ``dataset.volumes.reader`` as its slices were read; canonical orientation) in
    8 bits through the dataset's intensity ``window`` (low, high: the volumes adapter's ``window_low`` and
    ``window_high``, as :func:`workflow.data.slicing.render_slice` renders its slices; DGM-VLC min-max
    scales each volume instead), its label volume (X x Y x Z class ids) and the volume's
    affine. With ``shape`` both are resampled onto that grid (:func:`resample`) and the affine follows.

    Returns:
        The volume (1 x X x Y x Z, uint8), the labels (X x Y x Z, uint8) and the 4 x 4 affine.

    Raises:
        InputError: naming the label volume when its shape, spacing or orientation (affine) differ from the
            volume's, or its class ids are outside ``dataset.mask_classes``.
    """
    from workflow.data.slicing import load_volume, windowed

    volume, affine = load_volume(image_path, reader)
    labels, label_affine = load_volume(mask_path, reader)
    if labels.shape != volume.shape:
        raise InputError(
            f"{mask_path}: label volume shape {labels.shape} does not match its volume {image_path} "
            f"({volume.shape})"
        )
    if not np.allclose(label_affine, affine, atol=1e-4):
        raise InputError(
            f"{mask_path}: spacing or orientation (affine {label_affine.round(4).tolist()}) differs from its "
            f"volume {image_path} ({affine.round(4).tolist()}); resample the label volume onto the volume"
        )
    mask = mask_guided.check_classes(labels.round().astype(np.int64), mask_path, classes)
    image, mask = torch.from_numpy(windowed(volume, *window))[None], torch.from_numpy(mask.astype(np.uint8))
    if shape is None or tuple(shape) == volume.shape:
        return image, mask, affine
    return *resample(image, mask, shape), resampled_affine(affine, volume.shape, shape)


def resample(
    image: torch.Tensor, mask: torch.Tensor, shape: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A volume (1 x X x Y x Z, uint8) trilinearly and its labels (X x Y x Z) by nearest neighbour onto a grid
    of ``shape`` covering the same extent (voxel centres as ``align_corners=False``)."""
    size = tuple(int(s) for s in shape)
    volume = torch.nn.functional.interpolate(image[None].float(), size=size, mode="trilinear")
    labels = torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")
    return volume[0].round().clamp(0, 255).to(torch.uint8), labels[0, 0].to(torch.uint8)


def resampled_affine(affine: np.ndarray, shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """The affine of a volume of ``shape`` resampled onto ``new_shape`` voxels over the same extent: voxel
    ``j`` of the new grid lies at old voxel ``(j + 0.5) s - 0.5``, ``s = old / new`` per axis."""
    scale = np.asarray(shape, dtype=float) / np.asarray(new_shape, dtype=float)
    to_old = np.eye(4)
    to_old[:3, :3] = np.diag(scale)
    to_old[:3, 3] = (scale - 1) / 2
    return np.asarray(affine, dtype=float) @ to_old


def architecture(settings: MaskTextTrainSettings, spatial_dims: int, text_features: int) -> dict[str, Any]:
    """What sampling needs to rebuild the network and its text encoder (kept in the model card).

    Raises:
        InputError: naming the key when no level has attention (cross-attention needs one), or
            ``patch_size`` has not one side per spatial axis.
    """
    if not any(settings.attention_levels):
        raise InputError(f"{TRAIN_KEY}.attention_levels: at least one level needs attention to see the text")
    patch = settings.patch_size
    if patch is not None and len(patch) != spatial_dims:
        raise InputError(
            f"{TRAIN_KEY}.patch_size: {list(patch)} has {len(patch)} sides, the images have "
            f"{spatial_dims} axes"
        )
    return mask_guided.architecture_of(settings, TRAIN_KEY) | {
        "spatial_dims": spatial_dims,
        "cross_attention_dim": text_features,
        "patch_size": None if patch is None else list(patch),
        "volume_shape": None if settings.volume_shape is None else list(settings.volume_shape),
        "text_encoder": settings.text_encoder,
        "text_seed": settings.seed,
        "max_tokens": settings.max_tokens,
    }


def patch_of(architecture: dict[str, Any], shape: Sequence[int]) -> tuple[int, ...]:
    """The patch (window) size: the architecture's, or the whole image's ``shape`` when it has none.

    Raises:
        InputError: naming the key when the patch is larger than the images.
    """
    patch = tuple(architecture["patch_size"] or shape)
    if any(p > s for p, s in zip(patch, shape, strict=True)):
        raise InputError(f"{TRAIN_KEY}.patch_size: {list(patch)} is larger than the images ({list(shape)})")
    return patch


def crop(
    generator: torch.Generator, images: torch.Tensor, masks: torch.Tensor, patch: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``patch`` of each image (B x 1 x ...) and the same patch of its mask (B x ...), the corner
    drawn uniformly per image from ``generator``."""
    shape = masks.shape[1:]
    corners = [
        [
            int(torch.randint(0, s - p + 1, (1,), generator=generator))
            for s, p in zip(shape, patch, strict=True)
        ]
        for _ in range(len(masks))
    ]
    window = [tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True)) for corner in corners]
    return (
        torch.stack([image[(slice(None), *w)] for image, w in zip(images, window, strict=True)]),
        torch.stack([mask[w] for mask, w in zip(masks, window, strict=True)]),
    )


def train(
    pairs: mask_guided.Pairs,
    contexts: torch.Tensor,
    null: torch.Tensor,
    architecture: dict[str, Any],
    settings: MaskTextTrainSettings,
    fingerprint: str,
    folder: str,
    device: torch.device,
    stop: StopRequest,
) -> tuple[DiffusionModelUNet, list[float]]:
    """Train the network (module docstring) on random patches of ``pairs`` (2D images or 3D volumes) and the
    text embeddings ``contexts`` of their captions (one per pair; ``null``: the empty caption's) for
    ``settings.steps`` steps, resuming from the newest checkpoint of ``fingerprint`` in ``folder``. Returns
    the model and the loss of every step."""
    from monai.networks.schedulers import DDPMScheduler

    classes = architecture["classes"]
    patch = patch_of(architecture, pairs.masks.shape[1:])
    torch.manual_seed(settings.seed)
    model = mask_guided.network(architecture).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=settings.timesteps)

    def loss(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(pairs.masks), (settings.batch_size,), generator=generator)
        images, masks = crop(generator, *pairs.batch(index), patch)
        kept = torch.rand(len(index), generator=generator) >= settings.text_dropout
        context = torch.where(kept[:, None, None], contexts[index], null)
        condition = mask_guided.one_hot(masks, classes)
        return mask_guided.noise_loss(model, scheduler, images, condition, context, generator, device)

    return model.eval(), mask_guided.fit(model, settings, loss, fingerprint, folder, stop)


def guided(
    model: torch.nn.Module, contexts: torch.Tensor, null: torch.Tensor, scale: float, timestep: torch.Tensor
) -> Callable[[torch.Tensor, Sequence[Sequence[slice]]], torch.Tensor]:
    """The classifier-free guided noise prediction at ``timestep`` of a batch of windows (noisy image and mask
    channels), each window with the caption embedding of the image it lies in (its coordinates' first slice,
    as ``sliding_window_inference(with_coord=True)`` gives them; ``contexts``: images x tokens x features):
    ``uncond + scale (cond - uncond)``, ``null`` the empty caption's embedding; scale 1 is the conditional
    prediction alone."""

    def predict(windows: torch.Tensor, where: Sequence[Sequence[slice]]) -> torch.Tensor:
        n = len(windows)
        context = contexts[[w[0].start for w in where]]
        if scale == 1:
            return model(windows, timestep.expand(n), context)
        both = model(
            torch.cat([windows, windows]),
            timestep.expand(2 * n),
            torch.cat([context, null.expand_as(context)]),
        )
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    return predict


def denoise(
    model: torch.nn.Module,
    condition: torch.Tensor,
    contexts: torch.Tensor,
    null: torch.Tensor,
    noise: torch.Tensor,
    settings: MaskTextSampleSettings,
    timesteps: int,
    patch: Sequence[int],
) -> torch.Tensor:
    """DDIM (eta 0) from ``noise`` (B x 1 x ...) to images of the same size given their mask channels
    ``condition`` (B x classes x ...) and caption embeddings ``contexts`` (B x tokens x features); each step's
    noise prediction over the whole comes from gaussian-blended overlapping windows of ``patch`` (MONAI
    ``sliding_window_inference``), guided by :func:`guided`."""
    from monai.inferers import sliding_window_inference
    from monai.networks.schedulers import DDIMScheduler

    device = next(model.parameters()).device
    scheduler = DDIMScheduler(num_train_timesteps=timesteps)
    scheduler.set_timesteps(settings.steps)
    image, condition = noise.to(device), condition.to(device)
    contexts, null = contexts.to(device), null.to(device)
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            prediction = sliding_window_inference(
                torch.cat([image, condition], dim=1),
                roi_size=tuple(patch),
                sw_batch_size=settings.window_batch_size,
                predictor=guided(model, contexts, null, settings.guidance_scale, timestep.to(device)),
                overlap=settings.overlap,
                mode="gaussian",
                with_coord=True,
            )
            image, _ = scheduler.step(torch.as_tensor(prediction), int(timestep), image)
    return image


def starting_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The noise (1 x 1 x ``shape``) an image starts from, drawn from its own seed."""
    return torch.randn((1, 1, *shape), generator=torch.Generator().manual_seed(int(seed)))


def generate(
    model: torch.nn.Module,
    masks: torch.Tensor,
    contexts: torch.Tensor,
    null: torch.Tensor,
    seeds: Sequence[int],
    settings: MaskTextSampleSettings,
    architecture: dict[str, Any],
) -> torch.Tensor:
    """Images (B x 1 x ... in [-1, 1]) for ``masks`` (B x ..., 2D or 3D, any size at least a patch) and the
    text embeddings ``contexts`` (B x tokens x features) of their captions, one per seed, denoised together
    (:func:`denoise`), each from its own seed's noise (:func:`starting_noise`)."""
    patch = patch_of(architecture, masks.shape[1:])
    condition = mask_guided.one_hot(masks, architecture["classes"])
    noise = torch.cat([starting_noise(seed, masks.shape[1:]) for seed in seeds])
    return denoise(model, condition, contexts, null, noise, settings, architecture["timesteps"], patch).cpu()


def in_units(volume: np.ndarray | torch.Tensor, window: tuple[float, float]) -> np.ndarray:
    """A generated volume (in [-1, 1]) in the units of its real volume through the intensity ``window`` it
    was trained in (low, high: -1 -> low, 1 -> high), float32."""
    low, high = window
    values = np.clip(np.asarray(volume, dtype=np.float64), -1.0, 1.0)
    return (low + (values + 1.0) / 2.0 * (high - low)).astype(np.float32)


def save_volume(volume: np.ndarray, window: tuple[float, float], affine: np.ndarray, path: str) -> None:
    """A generated volume (X x Y x Z in [-1, 1]) back in the units of its real volume (:func:`in_units`), as
    float32 gzipped NIfTI with the real volume's (or its resampled grid's) ``affine``."""
    write_nifti(path, in_units(volume, window), np.asarray(affine, dtype=float))


def slice_image(volume: np.ndarray, row: Any, resolution: int, fit: str) -> Image.Image:
    """The slice of a generated volume (X x Y x Z in [-1, 1]) at real slice ``row``'s place (its
    ``slice_index`` along ``slice_axis`` of a volume of ``volume_shape``, mapped onto the generated grid when
    that was resampled), made as the real slice's PNG was: 8 bits, upright
    (:func:`workflow.data.slicing.render_slice`), the real slice's size, then ``resolution`` and ``fit`` as
    ``preprocess`` does (:func:`workflow.data.preprocess.resize_to_square`)."""
    from workflow.data.preprocess import resize_to_square
    from workflow.data.slicing import render_slice

    axis, real = int(row.slice_axis), json.loads(row.volume_shape)
    index = int(np.clip(round((int(row.slice_index) + 0.5) * volume.shape[axis] / real[axis] - 0.5), 0, None))
    plane = Image.fromarray(render_slice(volume, min(index, volume.shape[axis] - 1), axis, -1.0, 1.0))
    size = [side for number, side in enumerate(real) if number != axis]
    upright = plane.resize((size[0], size[1]), Image.Resampling.BILINEAR)
    return resize_to_square(upright, resolution, fit, Image.Resampling.LANCZOS)
