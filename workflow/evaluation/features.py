"""Image sets to feature matrices: one resize policy for real and synthetic images, a content-keyed cache.

**Resize policy** (:class:`ImagePolicy`). Every image, real or synthetic, is decoded with PIL, converted to
8-bit grayscale (``color: grayscale``, PIL ``"L"``; synthetic RGB PNGs included) or kept in colour
(``rgb``), resized to ``size`` x ``size`` with PIL's antialiased bicubic filter when it has another size
(clean-fid's advice: aliased resizing alone moves FID), and replicated to 3 channels: the uint8
``3 x H x W`` tensor every torch-fidelity extractor takes. The extractor then resizes internally (Inception:
299 px; transformers models: their input side), identically for both sets. By default ``size`` is the
smaller of the two sets' native sizes, so images are only ever shrunk: the real images are compared at the
generator's resolution (which it was trained at) rather than synthetic ones blown up.

**Cache.** The features of an image set are stored under ``<cache_dir>/<key>/`` (``features.pt``, and
``entry.json`` listing the images, their hashes, the extractor and the policy). ``key`` hashes the SHA-256
of every image file's bytes (in order), the extractor's identity (name, feature, weights hash, resolution)
and the policy, never a user-chosen name: a changed image, extractor or policy gives a new key, so stale
features are never reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from workflow.common.errors import InputError
from workflow.common.files import atomic_output, write_json
from workflow.common.image_files import ImageFiles
from workflow.common.progress import progress
from workflow.common.provenance import canonical_json, file_hash
from workflow.evaluation.extractors import ExtractorSpec
from workflow.evaluation.settings import EvaluationSettings

log = logging.getLogger(__name__)

FEATURES_FILE = "features.pt"
ENTRY_FILE = "entry.json"


@dataclass(frozen=True)
class ImagePolicy:
    """How an image file becomes the uint8 ``3 x size x size`` tensor extractors take (module docstring)."""

    size: int
    color: str

    def load(self, path: str) -> torch.Tensor:
        """Decode, convert, resize (bicubic, only when needed) and replicate one image."""
        with Image.open(path) as image:
            image = image.convert("L" if self.color == "grayscale" else "RGB")
            if image.size != (self.size, self.size):
                image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
            pixels = np.array(image.convert("RGB"))
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def describe(self) -> dict[str, Any]:
        """The policy in plain words, for the JSON report and the cache key."""
        color = (
            "converted to 8-bit grayscale (PIL 'L') and replicated to 3 channels"
            if self.color == "grayscale"
            else "converted to 8-bit RGB (PIL 'RGB')"
        )
        return asdict(self) | {
            "resize": f"PIL bicubic (antialiased) to {self.size}x{self.size}, only images of another size",
            "conversion": color,
            "tensor": "uint8 3 x H x W, as torch-fidelity extractors take",
        }


def image_side(path: str) -> int:
    """The longer side of an image (read from its header)."""
    with Image.open(path) as image:
        return max(image.size)


def resolve_policy(settings: EvaluationSettings, real: Sequence[str], fake: Sequence[str]) -> ImagePolicy:
    """``evaluation.image_size`` and ``color``; a null size takes the smaller native size of the two sets."""
    size = settings.image_size or min(image_side(real[0]), image_side(fake[0]))
    return ImagePolicy(size=int(size), color=settings.color)


def image_hashes(paths: Sequence[str], source: str) -> list[str]:
    """SHA-256 (16 hex digits) of every image file.

    Raises:
        InputError: naming ``source`` and the row of the first missing image.
    """
    hashes = []
    for row, path in enumerate(paths):
        try:
            hashes.append(file_hash(path))
        except OSError as err:
            raise InputError(f"{source} row {row}: cannot read image '{path}' ({err.strerror})") from None
    return hashes


def cache_key(hashes: Sequence[str], extractor: Mapping[str, Any], policy: ImagePolicy) -> str:
    """Content key of an image set's features: images, extractor identity and resize policy."""
    payload = {"images": list(hashes), "extractor": dict(extractor), "policy": policy.describe()}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


class FeatureCache:
    """Features of image sets under ``root/<key>/``, computed at most once per content key."""

    def __init__(
        self, root: str | Path, spec: ExtractorSpec, policy: ImagePolicy, cuda: bool, batch_size: int
    ):
        self.root = Path(root)
        self.spec = spec
        self.identity = spec.identity()
        self.policy = policy
        self.cuda = cuda
        self.batch_size = batch_size
        self._extractor: Any = None

    def features(self, paths: Sequence[str], source: str) -> tuple[torch.Tensor, str]:
        """The ``N x D`` float32 features of ``paths`` (in order) and their cache key; extracted on a miss.

        Raises:
            InputError: for a missing image, or features that do not vary across images (a degenerate
                extractor, e.g. a default-initialised random Inception, would make every metric 0).
        """
        hashes = image_hashes(paths, source)
        key = cache_key(hashes, self.identity, self.policy)
        entry = self.root / key
        if (entry / ENTRY_FILE).is_file():
            log.info("%s: %d images, cached features %s", source, len(paths), entry)
            return torch.load(entry / FEATURES_FILE, map_location="cpu"), key
        log.info("%s: extracting features of %d images (cache key %s)", source, len(paths), key)
        features = self._extract(paths)
        check_features(features, source)
        with atomic_output(entry / FEATURES_FILE) as tmp:
            torch.save(features, tmp)
        images = [{"path": str(p), "sha256_16": h} for p, h in zip(paths, hashes, strict=True)]
        entry_info = {"extractor": self.identity, "policy": self.policy.describe(), "images": images}
        write_json(entry / ENTRY_FILE, entry_info)
        return features, key

    @torch.no_grad()
    def _extract(self, paths: Sequence[str]) -> torch.Tensor:
        """Run the extractor over ``paths`` in batches; worker processes decode the PNGs (one core is left
        to the main process; torch-fidelity's own loop starts 4 workers whatever the machine)."""
        if self._extractor is None:
            self._extractor = self.spec.create(self.cuda)
        workers = min(4, len(os.sched_getaffinity(0)) - 1)
        loader = DataLoader(
            ImageFiles(paths, self.policy.load),
            batch_size=self.batch_size,
            num_workers=workers,
            pin_memory=self.cuda,
        )
        device = "cuda" if self.cuda else "cpu"
        batches = []
        with progress(total=len(paths), desc="features", unit="img") as bar:
            for batch in loader:
                batches.append(self._extractor(batch.to(device))[0].cpu())
                bar.update(len(batch))
        return torch.cat(batches).float()


def check_features(features: torch.Tensor, source: str) -> None:
    """Refuse features that are (nearly) constant across images."""
    if len(features) > 1 and float(features.std(dim=0).max()) < 1e-6:
        raise InputError(
            f"{source}: the extractor's features do not vary across images (largest std "
            f"{float(features.std(dim=0).max()):.1e}); a randomly initialised network with default init does "
            "this. Use trained weights, or the tiny demo extractor."
        )
