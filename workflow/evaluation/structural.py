"""3D structural similarity between generated and real volumes from the same mask (DGM-VLC's volume metric).

Multi-scale SSIM (MS-SSIM; Wang, Simoncelli and Bovik 2003, "Multiscale structural similarity for image
quality assessment", Asilomar Conference on Signals, Systems and Computers, eq. 7): contrast and structure
terms at scales 1..M-1 and SSIM (luminance too) at the coarsest scale M, each raised to its weight beta_j,
the image halved (2x2x2 average pooling) between scales. Computed by MONAI's
:func:`monai.metrics.regression.compute_ms_ssim` on 5-D ``(B, 1, X, Y, Z)`` tensors (Gaussian window of
``kernel_size`` voxels, sigma ``kernel_sigma``; the paper's 11 and 1.5).

The paper's five scales need at least 16 x ``kernel_size`` voxels per axis (176 for the 11-voxel window); the
small volumes of tests and demos allow fewer. :func:`scales_for` picks the most scales the volume allows,
and the weights are the paper's first ``M`` betas (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) rescaled to sum
to 1 (so identical volumes still score 1). The result records ``scales`` and ``betas``; compare MS-SSIM
values only at the same number of scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics.regression import compute_ms_ssim

from workflow.common.errors import InputError

WANG_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Scale weights beta_1..beta_5 of Wang et al. 2003 (finest scale first)."""


@dataclass(frozen=True)
class VolumeSimilarity:
    """MS-SSIM of each (generated, real) pair, their mean, and how it was computed."""

    values: tuple[float, ...]
    mean: float
    scales: int
    betas: tuple[float, ...]
    kernel_size: int
    data_range: float


def scales_for(shape: Sequence[int], kernel_size: int = 11, max_scales: int = len(WANG_BETAS)) -> int:
    """The most MS-SSIM scales (at most ``max_scales``) a volume of spatial ``shape`` allows; 0 if none.

    Scale ``M`` needs every axis, halved ``M - 1`` times, to hold the window (``size // 2**(M-1) >=
    kernel_size``) and MONAI's own size check (``size // (M-1)**2 > kernel_size - 1``) to pass.
    """
    smallest = min(int(n) for n in shape)
    allowed = [
        m
        for m in range(1, max_scales + 1)
        if smallest // 2 ** (m - 1) >= kernel_size and smallest // max(1, m - 1) ** 2 > kernel_size - 1
    ]
    return max(allowed, default=0)


def volume_ms_ssim(
    generated: np.ndarray,
    real: np.ndarray,
    *,
    data_range: float | None = None,
    kernel_size: int = 11,
    kernel_sigma: float = 1.5,
    max_scales: int = len(WANG_BETAS),
) -> VolumeSimilarity:
    """MS-SSIM between generated and real volumes paired by their mask (Wang et al. 2003; module docstring).

    Args:
        generated: one volume ``(X, Y, Z)`` or a stack ``(N, X, Y, Z)``, e.g. generated from the real
            volumes' label volumes.
        real: the real volumes, same shape, pair ``i`` sharing ``generated[i]``'s mask.
        data_range: the intensity range the stability constants scale with (e.g. the CT window's width in
            HU); default: ``real``'s max minus min.
        kernel_size: Gaussian window size in voxels (the paper's 11).
        kernel_sigma: its standard deviation in voxels (the paper's 1.5).
        max_scales: at most this many scales (1..5); fewer when the volume is too small (:func:`scales_for`).

    Raises:
        InputError: shapes differ or are not 3D/4D, values are not finite, the data range is not positive, or
            the volume is smaller than the window along an axis (not even one scale fits).
    """
    fake, true = np.asarray(generated, dtype=np.float32), np.asarray(real, dtype=np.float32)
    if fake.shape != true.shape or fake.ndim not in (3, 4):
        raise InputError(
            f"generated volumes {fake.shape} and real volumes {true.shape} must have the same (X, Y, Z) or "
            "(N, X, Y, Z) shape; resample the generated volumes onto the real volumes' grid"
        )
    if not (np.isfinite(fake).all() and np.isfinite(true).all()):
        raise InputError("volumes for MS-SSIM hold NaN or infinite values")
    if not 1 <= max_scales <= len(WANG_BETAS):
        raise InputError(f"max_scales = {max_scales} must be in 1..{len(WANG_BETAS)}")
    if fake.ndim == 3:
        fake, true = fake[None], true[None]
    scales = scales_for(fake.shape[1:], kernel_size, max_scales)
    if scales == 0:
        raise InputError(
            f"volumes of shape {fake.shape[1:]} are smaller than the {kernel_size}-voxel SSIM window along "
            "an axis; use larger volumes (or patches) or a smaller kernel_size"
        )
    span = float(true.max() - true.min()) if data_range is None else float(data_range)
    if not span > 0:
        raise InputError(
            f"MS-SSIM data range {span} must be positive (constant real volumes need data_range)"
        )
    betas = np.asarray(WANG_BETAS[:scales]) / sum(WANG_BETAS[:scales])
    values = compute_ms_ssim(
        torch.from_numpy(fake[:, None]),
        torch.from_numpy(true[:, None]),
        spatial_dims=3,
        data_range=span,
        kernel_size=kernel_size,
        kernel_sigma=kernel_sigma,
        weights=tuple(betas.tolist()),
    ).flatten()
    return VolumeSimilarity(
        values=tuple(values.tolist()),
        mean=float(values.mean()),
        scales=scales,
        betas=tuple(round(float(b), 6) for b in betas),
        kernel_size=kernel_size,
        data_range=span,
    )
