"""Preprocessing: every image (or volume slice) to one PNG at the configured resolution, in 8-bit grayscale
or, with ``preprocess.color: rgb``, in colour (histology).

This is the one place where source images are read: image files with PIL, volume slices through
:mod:`workflow.data.slicing`, and images inside an HDF5 stack (PCam: the manifest's ``path`` is the ``.h5``
file, ``slice_index`` the position in its dataset ``x``; :mod:`workflow.data.adapters.pcam`) with h5py, one
image at a time. Every later stage reads the PNGs written here.

Geometry is aspect-preserving: ``crop`` scales the short side to the resolution and centre-crops,
``pad`` scales the long side to the resolution and pads with black. Images are resampled with Lanczos
(antialiased), masks with nearest neighbour through the same geometry so they stay aligned and keep their
class ids. The work is split into shards by patient (a stable CRC32 of the patient id), so N cluster jobs
share it and a volume's slices are read by one job only.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from workflow.common.manifest import empty_rejected, rejected
from workflow.data import slicing
from workflow.data.settings import PreprocessSettings

if TYPE_CHECKING:
    import h5py

Fit = Literal["crop", "pad"]
Color = Literal["grayscale", "rgb"]
HDF5_SUFFIXES = (".h5", ".hdf5")
HDF5_IMAGES = "x"
"""An HDF5 stack of images: a ``.h5``/``.hdf5`` file whose dataset ``x`` is N x H x W (x 3) uint8 (PCam's)."""
_WIDE = ("I;16", "I;16B", "I;16L", "I")


def shard_of(patient_ids: pd.Series, shards: int) -> np.ndarray:
    """Shard index per row: CRC32 of the patient id modulo ``shards`` (stable across runs and machines)."""
    return np.array([zlib.crc32(str(p).encode()) % shards for p in patient_ids], dtype=np.int64)


def fit_geometry(size: tuple[int, int], resolution: int, fit: Fit) -> tuple[tuple[int, int], tuple[int, int]]:
    """Scaled size ``(w, h)`` and the offset ``(x, y)`` of the scaled image in the square output.

    For ``crop`` the offset is negative (the part cut off on the left/top); for ``pad`` it is positive.
    """
    width, height = size
    scale = resolution / (min(width, height) if fit == "crop" else max(width, height))
    scaled = (max(1, round(width * scale)), max(1, round(height * scale)))
    offset = ((resolution - scaled[0]) // 2, (resolution - scaled[1]) // 2)
    return scaled, offset


def resize_to_square(
    image: Image.Image, resolution: int, fit: Fit, resample: Image.Resampling
) -> Image.Image:
    """Aspect-preserving resize of a single-channel image onto a ``resolution`` square."""
    scaled, (x, y) = fit_geometry(image.size, resolution, fit)
    canvas = Image.new(image.mode, (resolution, resolution), 0)
    canvas.paste(image.resize(scaled, resample), (x, y))
    return canvas


def to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit grayscale: 16-bit images keep their top 8 bits, colour images use ITU-R 601 luma."""
    if image.mode in _WIDE:
        array = np.asarray(image, dtype=np.uint32)
        return Image.fromarray((array >> 8 if array.max() > 255 else array).astype(np.uint8))
    return image.convert("L")


def to_color(image: Image.Image, color: Color) -> Image.Image:
    """The image as ``preprocess.color`` asks: 8-bit grayscale (:func:`to_grayscale`), or RGB with the colour
    kept (grayscale and 16-bit images, after :func:`to_grayscale`, repeated on three channels)."""
    if color == "grayscale" or image.mode in _WIDE:
        image = to_grayscale(image)
    return image if color == "grayscale" else image.convert("RGB")


def is_hdf5(path: str) -> bool:
    """True if ``path`` names an HDF5 stack of images (by its suffix, any case)."""
    return str(path).lower().endswith(HDF5_SUFFIXES)


class _Reader:
    """Reads manifest rows as images in ``preprocess.color``; a context manager (closes HDF5 files).

    Keeps the two most recent volumes (an image volume and its label volume) so that each is loaded once
    per shard: a volume's slices are consecutive rows and all of a patient's rows are in one shard. HDF5
    stacks stay open and are read one image at a time (PCam's train file holds 7 GB of patches).
    """

    def __init__(self, volume_reader: str, color: Color = "grayscale") -> None:
        self._volume_reader = volume_reader
        self._color = color
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._stacks: dict[str, h5py.File] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for handle in self._stacks.values():
            handle.close()
        self._stacks.clear()

    def _stacked(self, path: str, index: int) -> Image.Image:
        """Image ``index`` of the HDF5 stack at ``path``."""
        import h5py

        if path not in self._stacks:
            self._stacks[path] = h5py.File(path, "r")
        stack = self._stacks[path].get(HDF5_IMAGES)
        if not isinstance(stack, h5py.Dataset):
            raise ValueError(f"{path} has no dataset '{HDF5_IMAGES}' of images")
        if not 0 <= index < stack.shape[0]:
            raise ValueError(f"image {index} is outside the {stack.shape[0]} images of {path}")
        return Image.fromarray(np.asarray(stack[index], dtype=np.uint8))

    def _volume(self, path: str) -> np.ndarray:
        if path not in self._cache:
            self._cache[path] = slicing.load_volume(path, self._volume_reader)[0]
            if len(self._cache) > 2:
                self._cache.popitem(last=False)
        return self._cache[path]

    def image(self, row: pd.Series) -> Image.Image:
        if pd.isna(row["slice_index"]):
            with Image.open(row["path"]) as source:
                return to_color(source, self._color)
        if is_hdf5(row["path"]):
            return to_color(self._stacked(str(row["path"]), int(row["slice_index"])), self._color)
        array = slicing.render_slice(
            self._volume(row["path"]),
            int(row["slice_index"]),
            int(row["slice_axis"]),
            float(row["window_low"]),
            float(row["window_high"]),
        )
        return to_color(Image.fromarray(array), self._color)

    def mask(self, row: pd.Series) -> Image.Image:
        if pd.isna(row["slice_index"]):
            with Image.open(row["mask_path"]) as source:
                if source.mode not in ("L", "P", "I", "I;16", "1"):
                    raise ValueError(f"mask mode {source.mode} is not a single-channel integer image")
                array = np.asarray(source)
        else:
            array = slicing.mask_slice(
                self._volume(row["mask_path"]), int(row["slice_index"]), int(row["slice_axis"])
            )
        if array.max(initial=0) > 255 or array.min(initial=0) < 0:
            raise ValueError("mask values outside 0..255")
        return Image.fromarray(array.astype(np.uint8))


def _output_path(out_dir: Path, image_id: str, suffix: str) -> Path:
    return out_dir / f"{image_id}{suffix}.png"


def preprocess_rows(
    frame: pd.DataFrame, settings: PreprocessSettings, out_dir: str | Path, source: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write each row's image (and mask) as a PNG under ``out_dir``; return ``(processed, rejected)``.

    ``processed`` is ``frame`` restricted to the rows that worked, with two added columns: ``image`` and
    ``mask`` (paths of the written PNGs; ``mask`` is missing where the row has no mask). Unreadable
    images, masks whose size differs from the image's and masks with class ids outside
    ``0 .. settings.mask_classes - 1`` are rejected with the reason; ``source`` names the input table in the
    rejection list.
    """
    out = Path(out_dir)
    images: list[str | None] = []
    masks: list[str | None] = []
    failures: list[tuple[int, str, str]] = []
    allowed = set(range(settings.mask_classes))
    with _Reader(settings.volume_reader, settings.color) as reader:
        for pos, (_, row) in enumerate(frame.iterrows()):
            try:
                image_path, mask_path = _process_one(row, reader, settings, out, allowed)
            except (OSError, UnidentifiedImageError, ValueError) as err:
                failures.append((pos, str(row["image_id"]), _reason(err)))
                images.append(None)
                masks.append(None)
                continue
            images.append(image_path)
            masks.append(mask_path)
    processed = frame.assign(image=images, mask=masks)
    processed["image"] = processed["image"].astype("string")
    processed["mask"] = processed["mask"].astype("string")
    bad = [pos for pos, _, _ in failures]
    kept = processed.drop(index=processed.index[bad]).reset_index(drop=True)
    if not failures:
        return kept, empty_rejected()
    return kept, rejected(
        "preprocess",
        source,
        [None] * len(failures),
        [image_id for _, image_id, _ in failures],
        [reason for _, _, reason in failures],
    )


def _reason(err: Exception) -> str:
    if isinstance(err, FileNotFoundError):
        return f"file not found: {err.filename}"
    if isinstance(err, UnidentifiedImageError | OSError):
        return f"unreadable image: {err}"
    return str(err)


def _process_one(
    row: pd.Series, reader: _Reader, settings: PreprocessSettings, out: Path, allowed: set[int]
) -> tuple[str, str | None]:
    image = reader.image(row)
    mask_out = None
    if not pd.isna(row["mask_path"]):
        mask = reader.mask(row)
        if mask.size != image.size:
            raise ValueError(f"mask size {mask.size} does not match image size {image.size} (width, height)")
        found = set(np.unique(np.asarray(mask)).tolist())
        if allowed and not found <= allowed:
            raise ValueError(
                f"mask has class ids {sorted(found - allowed)} not in dataset.mask_classes {sorted(allowed)}"
            )
        mask_out = _output_path(out, str(row["image_id"]), "_mask")
        mask_out.parent.mkdir(parents=True, exist_ok=True)
        resize_to_square(mask, settings.resolution, settings.fit, Image.Resampling.NEAREST).save(mask_out)
    image_out = _output_path(out, str(row["image_id"]), "")
    image_out.parent.mkdir(parents=True, exist_ok=True)
    resize_to_square(image, settings.resolution, settings.fit, Image.Resampling.LANCZOS).save(image_out)
    return str(image_out), None if mask_out is None else str(mask_out)
