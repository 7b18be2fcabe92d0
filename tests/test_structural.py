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


def test_volume_similarity_pairs_each_generated_volume_with_its_real_volume(tmp_path) -> None:
    """Rule volume_similarity: a generator that gave back the real volume (in its window, on its grid) scores
    1; one that gave back another patient's volume scores less."""
    import json

    import nibabel as nib
    import pandas as pd

    from workflow.diffusion.mask_text import save_volume
    from workflow.evaluation.settings import VolumeSimilaritySettings
    from workflow.evaluation.stage import volume_similarity

    low, high, affine = -1000.0, 400.0, np.diag([2.0, 2.0, 3.0, 1.0])
    real = _phantom(24)
    other = real + np.random.default_rng(1).normal(0, 600, real.shape)  # patient b: what a is not
    rows = []
    for name, volume in (("a", real), ("b", other)):
        nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), tmp_path / f"{name}.nii")
        nib.save(nib.Nifti1Image(np.ones(volume.shape, np.int16), affine), tmp_path / f"{name}_label.nii")
        rows.append({"image_id": f"{name}/slice0003", "path": str(tmp_path / f"{name}.nii")})
        rows[-1] |= {"mask_path": str(tmp_path / f"{name}_label.nii"), "window_low": low, "window_high": high}
    pd.DataFrame(rows).to_parquet(tmp_path / "dataset.parquet")
    windowed = np.rint(np.clip((real - low) * 255 / (high - low), 0, 255)) / 127.5 - 1
    for name in ("a", "b"):  # both generated volumes are patient a's
        save_volume(windowed, (low, high), affine, str(tmp_path / f"gen_{name}.nii.gz"))
    samples = pd.DataFrame(
        {
            "path": [str(tmp_path / f"gen_{n}.nii.gz") for n in "ab"],
            "source_image_id": ["a/slice0003", "b/slice0003"],
        }
    )
    samples.to_parquet(tmp_path / "samples.parquet")
    settings = VolumeSimilaritySettings(kernel_size=7, kernel_sigma=1.5, mask_classes=("background", "lungs"))
    report = tmp_path / "volume_similarity.json"
    volume_similarity(
        "g", str(tmp_path / "samples.parquet"), str(tmp_path / "dataset.parquet"), settings, str(report)
    )
    result = json.loads(report.read_text())
    same, swapped = (v["ms_ssim"] for v in result["per_volume"])
    assert same == pytest.approx(1.0, abs=1e-4) and swapped < 0.95
    assert result["volumes"] == 2 and result["scales"] == [2]
