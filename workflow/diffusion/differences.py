"""DGM-VLC's voxel difference maps (Xing, Ning, Nan, Yang, arXiv 2410.13823), the paper's way of showing what
a clinical field (age, smoking) does to a mask- and text-conditioned generator (kind ``mask-text``,
:mod:`workflow.diffusion.mask_text`; rule ``difference_maps``).

For each source (a real mask of a split) and each change of one clinical field
(``diffusion.mask_text.differences.changes``, :func:`field_changes`), the same mask, seed and noise are
generated under two tabular captions that differ in that field only (:func:`changed_captions`), and the
signed voxel difference ``after - before`` (:func:`difference_map`; of volumes in their units,
:func:`workflow.diffusion.mask_text.in_units`) is written as NIfTI with the source volume's affine and as a
PNG montage of slices (:func:`save_difference`), with per-class statistics (:func:`difference_statistics`)
in ``results/differences/<generator>/summary.csv`` (:func:`difference_maps`, the rule's function).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError
from workflow.common.files import atomic_output, write_csv, write_json, write_nifti
from workflow.common.manifest import tabular_column
from workflow.common.provenance import provenance
from workflow.diffusion.pixel_stage import captioned_masks, captioned_volumes, checked_card, read_volumes
from workflow.diffusion.settings import ChangeSettings, MaskTextDifferenceSettings, MaskTextSampleSettings
from workflow.prompts.settings import TabularSettings
from workflow.prompts.strategies import clean_value, format_value, is_missing, tabular_captions

if TYPE_CHECKING:
    import torch


def changed_captions(row: pd.DataFrame, field: str, value: Any, settings: TabularSettings) -> tuple[str, str]:
    """The tabular captions (DGM-VLC's prompts, :func:`tabular_captions`) of one dataset row as it is and with
    clinical ``field`` set to ``value`` (e.g. age + 10, smoking yes instead of no)."""
    column = tabular_column(field) if tabular_column(field) in row else field
    both = pd.concat([row, row.assign(**{column: [value]})], ignore_index=True)
    before, after = tabular_captions(both, settings)
    return before, after


def change_column(rows: pd.DataFrame, change: ChangeSettings, number: int, tabular: TabularSettings) -> str:
    """The dataset column of change ``number`` of ``diffusion.mask_text.differences.changes``: ``tab_<field>``
    or a manifest field (``age``, ``sex``).

    Raises:
        InputError: naming the change's key when the dataset has no such field, the captions do not describe
            it (``prompts.tabular.fields``), or ``add`` is given for a field with non-numeric values.
    """
    key = f"{MaskTextDifferenceSettings.KEY}.changes[{number}]"
    column = tabular_column(change.field) if tabular_column(change.field) in rows else change.field
    if column not in rows:
        present = sorted(c.removeprefix("tab_") for c in rows.columns if c.startswith("tab_"))
        raise InputError(
            f"{key}.field: the dataset has no field '{change.field}' (no column "
            f"'{tabular_column(change.field)}' and no manifest field of that name); change one of its "
            f"tabular fields {present} or age, sex"
        )
    if change.field not in {f.field for f in tabular.fields}:
        raise InputError(
            f"{key}.field: '{change.field}' is not one of prompts.tabular.fields, so no caption mentions it; "
            "add it there or change a field the captions describe"
        )
    values = rows[column].dropna()
    if change.add is not None and pd.to_numeric(values, errors="coerce").isna().any():
        raise InputError(
            f"{key}.add: field '{change.field}' is not numeric (values such as "
            f"{values.astype(str).unique()[:3].tolist()}); set it with {{field, value}} instead"
        )
    return column


def field_changes(
    rows: pd.DataFrame, changes: Sequence[ChangeSettings], tabular: TabularSettings
) -> pd.DataFrame:
    """One row per row of ``rows`` (the dataset rows of the sources) and change, source by source: ``source``
    (the row's position), ``change`` (the change's), ``field``, ``before_value`` and ``after_value`` (as
    text, empty when missing; ``add`` on a missing number leaves it missing), the two tabular captions
    (:func:`changed_captions`) and ``unchanged``, why the captions are equal (the field is missing for this
    source and left out of both, or the caption already says so), or empty.

    Raises:
        InputError: naming the change's key when its field cannot be changed (:func:`change_column`).
    """
    columns = [change_column(rows, change, n, tabular) for n, change in enumerate(changes)]
    fields = {f.field: f for f in tabular.fields}
    out = []
    for source in range(len(rows)):
        row = rows.iloc[[source]].reset_index(drop=True)
        for number, (change, column) in enumerate(zip(changes, columns, strict=True)):
            value = row.at[0, column]
            if change.add is None:
                after = change.value
            else:
                after = pd.NA if is_missing(value) else float(pd.to_numeric(value)) + change.add
            before_caption, after_caption = changed_captions(row, change.field, after, tabular)
            reason = ""
            if before_caption == after_caption:
                missing = clean_value(value, fields[change.field]) is None
                reason = (
                    "missing for this source: in neither caption"
                    if missing
                    else "the caption says so already"
                )
            out.append(
                {
                    "source": source,
                    "change": number,
                    "field": change.field,
                    "before_value": "" if is_missing(value) else format_value(value),
                    "after_value": "" if is_missing(after) else format_value(after),
                    "before_caption": before_caption,
                    "after_caption": after_caption,
                    "unchanged": reason,
                }
            )
    return pd.DataFrame(out)


def difference_map(
    model: torch.nn.Module,
    mask: torch.Tensor,
    before: torch.Tensor,
    afters: torch.Tensor,
    null: torch.Tensor,
    seed: int,
    settings: MaskTextSampleSettings,
    architecture: dict[str, Any],
    window: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """The signed differences ``after - before`` (n x ``mask``'s shape, float32) between the image generated
    from ``mask`` with each caption embedding of ``afters`` (n x tokens x features) and the one with
    ``before``, from the same seed and noise, in the units of ``window``
    (:func:`workflow.diffusion.mask_text.in_units`: a volume's intensity window; the default, the images'
    [-1, 1]). ``before``'s image is generated once and every other alone, and an embedding equal to
    ``before`` is not generated again, so equal captions give exactly
    zero (DGM-VLC's difference maps for a changed clinical field)."""
    import torch

    from workflow.diffusion.mask_text import generate, in_units

    def image(context: torch.Tensor) -> np.ndarray:
        generated = generate(model, mask[None], context[None], null, [seed], settings, architecture)
        return in_units(generated[0, 0], window)

    first = image(before)
    return np.stack([np.zeros_like(first) if torch.equal(a, before) else image(a) - first for a in afters])


def difference_statistics(
    difference: np.ndarray, mask: np.ndarray, classes: Sequence[str]
) -> dict[str, float]:
    """Mean and max |difference|, mean signed difference and, per mask class of ``classes`` (``mask``: the
    class ids, ``difference``'s shape), the mean |difference| over its voxels (NaN when the mask lacks it)."""
    size = np.abs(difference)
    out = {
        "mean_abs": float(size.mean()),
        "mean_signed": float(difference.mean()),
        "max_abs": float(size.max()),
    }
    for number, name in enumerate(classes):
        inside = mask == number
        out[f"mean_abs_{name}"] = float(size[inside].mean()) if inside.any() else float("nan")
    return out


def save_difference(
    difference: np.ndarray, affine: np.ndarray, nifti: str, montage: str, slices: int = 8
) -> None:
    """``difference`` (X x Y x Z, or X x Y) as a float32 NIfTI with the source volume's ``affine`` (gzipped
    when ``nifti`` ends in ``.gz``), and a PNG montage of up to ``slices`` evenly spaced axial slices in a
    diverging colour map centred on zero."""
    from matplotlib.figure import Figure

    from workflow.common.figures import save_figure

    volume = np.asarray(difference, dtype=np.float32)
    write_nifti(nifti, volume, np.asarray(affine, dtype=float))
    stack = volume[..., None] if volume.ndim == 2 else volume
    chosen = np.unique(np.linspace(0, stack.shape[-1] - 1, min(slices, stack.shape[-1])).round().astype(int))
    limit = float(np.abs(volume).max()) or 1.0
    figure = Figure(figsize=(2.2 * len(chosen) + 1, 2.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(chosen)))
    for ax, index in zip(axes, chosen, strict=True):
        shown = ax.imshow(stack[..., index].T, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
        ax.set(title=f"slice {index}", xticks=[], yticks=[])
    figure.colorbar(shown, ax=list(axes), label="after - before")
    save_figure(figure, montage)


def difference_maps(
    dataset: str,
    prompts: str,
    model: str,
    settings: MaskTextDifferenceSettings,
    gpus: int,
    maps: str,
) -> None:
    """DGM-VLC's voxel difference maps (:func:`difference_map`) into the folder ``maps``: for each of the
    first ``settings.sources`` captioned volumes (a 3D model,
    :func:`workflow.diffusion.pixel_stage.captioned_volumes`) or images (2D,
    :func:`workflow.diffusion.pixel_stage.captioned_masks`) of ``settings.split`` and each change of one
    clinical field (:func:`field_changes`), the image generated from its mask with the changed tabular caption
    minus the one with its own, from the source's sampling seed (that of
    :func:`workflow.diffusion.pixel_stage.sample_mask_text`). Per source and change
    ``<source>_<change>_<field>.nii.gz`` (3D: in the volume's units through its window, as
    :func:`workflow.diffusion.mask_text.save_volume` writes volumes, with the affine of the grid generated on;
    2D: the images' [-1, 1] difference, identity affine) and ``.png`` (a montage); ``summary.csv``, one row
    per source and change: the captions and values, why a caption stayed unchanged (its map is zero), mean
    and max |difference|, mean signed difference and mean |difference| per mask class of the source's mask
    (empty for a class it lacks); ``provenance.json``."""
    import re

    import torch

    from workflow.common.devices import pick_device
    from workflow.diffusion import mask_guided, mask_text

    sample = settings.sample
    card = checked_card(model, sample.mask_classes)
    architecture = card["architecture"]
    volumes = architecture["spatial_dims"] == 3
    rows = (captioned_volumes if volumes else captioned_masks)(dataset, prompts, settings.split)
    rows = rows.head(settings.sources).reset_index(drop=True)
    changes = field_changes(rows, settings.changes, settings.tabular)
    device = pick_device(gpus)
    network = mask_guided.load_model(model, architecture, device)
    captions = list(dict.fromkeys(["", *changes["before_caption"], *changes["after_caption"]]))
    texts = mask_text.encode_captions(
        captions, architecture["text_encoder"], architecture["text_seed"], architecture["max_tokens"], device
    )
    embedding = dict(zip(captions, texts, strict=True))
    seeds = [mask_guided.image_seed(sample.seed, str(i)) for i in rows["image_id"]]
    statistics = []
    with atomic_output(maps) as tmp:
        Path(tmp).mkdir(parents=True)
        for source, own in changes.groupby("source", sort=True):
            mask, affine, window = source_mask(rows.iloc[[source]], architecture, sample.volume_reader)
            differences = difference_map(
                network,
                mask,
                embedding[own["before_caption"].iloc[0]],
                torch.stack([embedding[c] for c in own["after_caption"]]),
                embedding[""],
                seeds[source],
                sample,
                architecture,
                window,
            )
            for change, difference in zip(own.itertuples(), differences, strict=True):
                name = f"{source:04d}_{change.change:02d}_" + re.sub(r"[^\w-]+", "_", change.field)
                path = Path(tmp) / name
                save_difference(difference, affine, f"{path}.nii.gz", f"{path}.png")
                statistics.append(
                    {"map": f"{name}.nii.gz", "montage": f"{name}.png"}
                    | difference_statistics(difference, mask.numpy(), sample.mask_classes)
                )
        ids = rows["volume_id"] if volumes else rows["image_id"]
        summary = changes.assign(seed=[seeds[s] for s in changes["source"]])
        summary.insert(1, "source_id", ids[changes["source"]].to_numpy())
        write_csv(Path(tmp) / "summary.csv", pd.concat([summary, pd.DataFrame(statistics)], axis=1))
        meta = provenance(
            settings,
            seeds={"sample": sample.seed} | {f"source {i}": seed for i, seed in zip(ids, seeds, strict=True)},
            inputs={"dataset": dataset, "prompts": prompts},
            weights=card["weights"],
        )
        write_json(Path(tmp) / "provenance.json", meta)


def source_mask(
    row: pd.DataFrame, architecture: dict[str, Any], reader: str
) -> tuple[torch.Tensor, Any, tuple[float, float]]:
    """The mask a source (one row of :func:`workflow.diffusion.pixel_stage.captioned_volumes` or
    :func:`workflow.diffusion.pixel_stage.captioned_masks`) is generated from, read as the model of
    ``architecture`` was trained (class ids, int64; a label volume with ``reader``,
    ``dataset.volumes.reader``), the affine of its grid (3D: the volume's, or its resampled grid's; 2D:
    identity) and the window of its units (3D: the volume's intensity window; 2D: the images' [-1, 1])."""
    from workflow.diffusion import mask_guided

    if architecture["spatial_dims"] == 3:
        pairs, affines = read_volumes(row, architecture["classes"], architecture["volume_shape"], reader)
        window = (float(row["window_low"].iloc[0]), float(row["window_high"].iloc[0]))
    else:
        pairs = mask_guided.read_pairs(
            row["image"].tolist(), row["mask"].tolist(), architecture["classes"], architecture["resolution"]
        )
        affines, window = [np.eye(4)], (-1.0, 1.0)
    _, masks = pairs.batch(slice(None))
    return masks[0], affines[0], window
