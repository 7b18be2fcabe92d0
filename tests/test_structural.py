"""3D MS-SSIM between generated and real volumes (workflow/evaluation/structural.py)."""

from __future__ import annotations

import numpy as np
import pytest

from workflow.common.errors import InputError
from workflow.data import phantom_volumes, phantoms
from workflow.evaluation.structural import WANG_BETAS, scales_for, volume_ms_ssim

WINDOW = 1400.0  # HU range the similarity's constants scale with


def _phantom(size: int) -> np.ndarray:
    settings = phantoms.PhantomSettings.from_dict({"seed": 5, "volume_size": size})
    patient = phantoms.sample_patient(settings, 1)
    clinical = phantom_volumes.Clinical(patient.smoking, patient.anatomy.bone)
    noise = phantom_volumes.volume_noise(settings, 1, patient.site)
    return phantom_volumes.render_volume(patient.anatomy, patient.studies[0].findings, clinical, noise)[0]


def test_identical_volumes_score_one_and_noise_lowers_the_score() -> None:
    real = _phantom(32).astype(np.float32)
    rng = np.random.default_rng(0)
    assert volume_ms_ssim(real, real, data_range=WINDOW).mean == pytest.approx(1.0, abs=1e-5)
    noisy = [real + rng.normal(0, sd, real.shape) for sd in (20, 80, 300)]
    result = volume_ms_ssim(np.stack(noisy), np.stack([real] * 3), data_range=WINDOW)
    assert 1.0 > result.values[0] > result.values[1] > result.values[2]
    assert result.mean == pytest.approx(np.mean(result.values))
    assert result.scales == 2 and result.kernel_size == 11  # 32 voxels: halved once, the window still fits
    assert result.betas == pytest.approx(np.asarray(WANG_BETAS[:2]) / sum(WANG_BETAS[:2]), abs=1e-6)


@pytest.mark.parametrize(
    ("size", "scales"), [(11, 1), (16, 1), (22, 2), (32, 2), (44, 3), (100, 4), (176, 5)]
)
def test_scales_follow_the_volume_size(size: int, scales: int) -> None:
    assert scales_for((size, 200, 200)) == scales
    assert scales_for((size,) * 3, kernel_size=11, max_scales=1) == 1


def test_small_volume_uses_fewer_scales_and_too_small_one_is_an_error() -> None:
    real = _phantom(16).astype(np.float32)
    assert volume_ms_ssim(real, real + 50).scales == 1
    with pytest.raises(InputError, match=r"smaller than the 11-voxel SSIM window"):
        volume_ms_ssim(real[:10], real[:10])
    assert volume_ms_ssim(real[:10], real[:10], kernel_size=7).scales == 1


@pytest.mark.parametrize(
    ("generated", "real", "kwargs", "message"),
    [
        (np.zeros((16, 16, 16)), np.zeros((16, 16, 15)), {}, "must have the same"),
        (np.zeros((16, 16)), np.zeros((16, 16)), {}, "must have the same"),
        (np.zeros((16, 16, 16)), np.zeros((16, 16, 16)), {}, "data range 0.0 must be positive"),
        (np.full((16, 16, 16), np.nan), np.zeros((16, 16, 16)), {}, "NaN"),
        (np.zeros((16, 16, 16)), np.ones((16, 16, 16)), {"max_scales": 6}, "max_scales"),
    ],
)
def test_bad_input_is_a_clear_error(generated, real, kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        volume_ms_ssim(generated, real, **kwargs)
