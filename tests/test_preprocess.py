import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workflow.common.manifest import normalise
from workflow.data.preprocess import (
    fit_geometry,
    preprocess_rows,
    resize_to_square,
    shard_of,
    to_color,
    to_grayscale,
)
from workflow.data.settings import PreprocessSettings


def test_geometry_crop_and_pad():
    assert fit_geometry((200, 100), 64, "crop") == ((128, 64), (-32, 0))
    assert fit_geometry((200, 100), 64, "pad") == ((64, 32), (0, 16))
    assert fit_geometry((64, 64), 64, "crop") == ((64, 64), (0, 0))


def test_pad_keeps_whole_image_with_black_bars():
    image = Image.fromarray(np.full((50, 100), 200, np.uint8))
    out = np.asarray(resize_to_square(image, 32, "pad", Image.Resampling.LANCZOS))
    assert out.shape == (32, 32)
    assert (out[:8] == 0).all() and (out[-8:] == 0).all()
    assert (out[9:23] == 200).all()


def test_crop_keeps_centre():
    array = np.zeros((40, 120), np.uint8)
    array[:, 40:80] = 255
    out = np.asarray(resize_to_square(Image.fromarray(array), 40, "crop", Image.Resampling.NEAREST))
    assert (out == 255).all()


def test_mask_resize_keeps_class_ids():
    rng = np.random.default_rng(0)
    mask = Image.fromarray(rng.integers(0, 4, (37, 53)).astype(np.uint8))
    out = np.asarray(resize_to_square(mask, 16, "pad", Image.Resampling.NEAREST))
    assert set(np.unique(out)) <= {0, 1, 2, 3}


def test_sixteen_bit_images_keep_top_bits():
    array = np.array([[0, 65535], [256, 32768]], dtype=np.uint16)
    out = np.asarray(to_grayscale(Image.fromarray(array)))
    assert out.tolist() == [[0, 255], [1, 128]]


def test_rgb_keeps_colour_and_repeats_gray():
    """preprocess.color: rgb (histology) keeps colour; gray and 16-bit images get three equal channels."""
    colour = Image.fromarray(np.array([[[200, 30, 90]]], dtype=np.uint8))
    assert np.asarray(to_color(colour, "rgb")).tolist() == [[[200, 30, 90]]]
    assert to_color(colour, "grayscale").mode == "L"
    wide = to_color(Image.fromarray(np.array([[65535, 256]], dtype=np.uint16)), "rgb")
    assert wide.mode == "RGB" and np.asarray(wide).tolist() == [[[255] * 3, [1] * 3]]


def test_shards_are_stable_and_patient_grouped():
    ids = pd.Series(["p1", "p2", "p1", "p3", "p4"])
    shards = shard_of(ids, 3)
    assert shards[0] == shards[2]
    assert ((shards >= 0) & (shards < 3)).all()
    assert (shard_of(ids, 3) == shards).all()


def _frame(*rows):
    return normalise(pd.DataFrame(rows), labels=[])


def _row(image_id, path, mask=None):
    row = {"image_id": image_id, "patient_id": "p", "path": str(path)}
    return row | {"mask_path": pd.NA if mask is None else str(mask)}


def test_rows_written_and_bad_rows_rejected_with_reasons(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 30), 90, np.uint8)).save(good)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.ones((20, 30), np.uint8)).save(mask)
    small_mask = tmp_path / "small.png"
    Image.fromarray(np.ones((10, 10), np.uint8)).save(small_mask)
    bad_class = tmp_path / "bad_class.png"
    Image.fromarray(np.full((20, 30), 9, np.uint8)).save(bad_class)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    frame = _frame(
        _row("a/1", good, mask),
        _row("b/1", corrupt),
        _row("c/1", good, small_mask),
        _row("d/1", good, bad_class),
        _row("e/1", tmp_path / "absent.png"),
    )
    settings = PreprocessSettings(resolution=16, fit="crop", shards=1, mask_classes=4)
    kept, rejected = preprocess_rows(frame, settings, tmp_path / "out", source="split.parquet")
    assert kept["image_id"].tolist() == ["a/1"]
    assert Image.open(kept.loc[0, "image"]).size == (16, 16)
    assert np.unique(np.asarray(Image.open(kept.loc[0, "mask"]))).tolist() == [1]
    reasons = dict(zip(rejected["image_id"], rejected["reason"], strict=True))
    assert reasons["b/1"].startswith("unreadable image")
    assert "does not match image size" in reasons["c/1"]
    assert "class ids [9] not in dataset.mask_classes" in reasons["d/1"]
    assert reasons["e/1"].startswith("file not found")
    assert set(rejected["stage"]) == {"preprocess"}


def test_unknown_mask_mode_is_rejected(tmp_path):
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    rgb = tmp_path / "m.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    frame = _frame(_row("a", image, rgb))
    settings = PreprocessSettings(resolution=8, fit="crop", shards=1)
    kept, rejected = preprocess_rows(frame, settings, tmp_path / "o", source="s")
    assert kept.empty
    assert "single-channel" in rejected.loc[0, "reason"]


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_output_is_deterministic(tmp_path, fit):
    rng = np.random.default_rng(1)
    source = tmp_path / "s.png"
    Image.fromarray(rng.integers(0, 255, (33, 47)).astype(np.uint8)).save(source)
    frame = _frame(_row("x", source))
    settings = PreprocessSettings(resolution=24, fit=fit, shards=1)
    for out in ("a", "b"):
        preprocess_rows(frame, settings, tmp_path / out, source="s")
    assert (tmp_path / "a" / "x.png").read_bytes() == (tmp_path / "b" / "x.png").read_bytes()
