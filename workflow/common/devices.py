"""Where a job computes: CUDA when the job was given GPUs and one is visible, else the CPU.

Every GPU rule declares ``resources: gpu=N``; on CPU-only machines (the demo, the tests) the same code runs on
the CPU.
"""

from __future__ import annotations

import torch


def pick_device(gpus: int = 1) -> torch.device:
    """CUDA (the first visible GPU) when ``gpus > 0`` and one is visible, else the CPU."""
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def use_tf32(enabled: bool) -> None:
    """TensorFloat-32 for float32 matmuls and convolutions on CUDA (Ampere and newer; ignored elsewhere and
    on the CPU): a 10-bit mantissa in the multiplications, float32 accumulation, several times the fp32
    throughput. ``False`` keeps full IEEE float32."""
    precision = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
