"""The editing stage, file to file: edit plan -> sharded edits by each method -> the method's counterfactual
set.

One function per rule of ``rules/editing.smk``, named after it. Files written (atomically, with provenance):

- ``results/counterfactuals/plan.parquet``: every (image, edit) with its captions, labels, status and reason,
  seed, batch and shard (:func:`plan_edits`, :mod:`workflow.editing.edits`);
- ``results/counterfactuals/<method>/shards/<k>.parquet`` and ``images/shard<k>/<edit_id>/``: per edit
  ``edited.png``, the image it is measured against (``reference``: ``reconstruction.png``, the null edit,
  for methods that invert; ``round_trip.png``, the source through the VAE, for the others),
  ``difference.png`` (``edited - reference``, signed, colour-mapped), ``difference.npy`` (the raw float map),
  ``cross_fade.gif`` (reference to edit and back) and, with ``editing.reversibility``, ``undone.png`` (the
  edit undone) (:func:`edit_images`, :func:`measure_edit`);
- with ``editing.cache_inversions``, ``results/counterfactuals/inversions/``: every image's DDIM trajectory
  and null-text embeddings, keyed by what they depend on, shared by the methods and reused by reruns and by
  the undo (:class:`workflow.editing.inversion.InversionCache`; written by ``edit_images`` jobs, a cache
  and no rule's output, so no job deletes it before running);
- with ``editing.clip.model``, per edit the CLIP filter's scores, ``clip_passed`` and ``clip_failed`` (the
  failed criteria; a rejected edit stays in the set) (:func:`clip_scores`);
- ``results/counterfactuals/<method>/manifest.parquet``: the edited images in the manifest schema, the
  labels being the *target* labels (``source_label_<name>`` the source's), ``image`` (the edited PNG),
  ``split`` (``train``: training data only), the source's ``source_image_id``, ``source_split``,
  ``source_path`` and ``source_image``, the plan's columns (``edit_id``, ``edit``, ``edit_kind``,
  ``edit_target``, ``source_prompt``, ``target_prompt``, ``edit_words``, ``seed``, ``true_counterfactual``),
  ``method``, the files ``reference``, ``difference``, ``difference_map`` (and ``reconstruction``) and the
  per-edit measures of :mod:`workflow.editing.soundness`; ``examples.png``, one original / edited /
  difference row per edit type, and ``cross_fades.html``, their cross-fade GIFs (:func:`collect_edits`).

The set's soundness (``soundness.json``) needs the classifier trained on real images and is written by the
evaluation stage (:func:`workflow.evaluation.stage.counterfactual_soundness`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workflow.common import manifest
from workflow.common.files import atomic_output, read_parquet_meta, write_parquet
from workflow.common.model_card import read_card
from workflow.common.provenance import provenance
from workflow.editing import edits
from workflow.editing.settings import EditSettings, PlanSettings
from workflow.prompts.settings import PromptSettings

if TYPE_CHECKING:
    import torch

    from workflow.editing.clip_filter import Clip
    from workflow.editing.methods import EditOutput
    from workflow.editing.perceptual import Lpips

log = logging.getLogger(__name__)


def plan_edits(
    dataset: str,
    prompts: str,
    model: str,
    ground_truth: str | None,
    settings: PlanSettings,
    prompt_settings: PromptSettings,
    labels: Sequence[str],
    plan: str,
) -> None:
    """Plan every (image, edit) of the editing stage (:func:`workflow.editing.edits.plan`).

    Args:
        prompts: the editing generator's prompts table of ``editing.split``.
        model: the editing generator's fine-tuned model folder (its tokenizer refuses edits the text encoder
            cannot see).
        ground_truth: the phantoms' ``counterfactuals.csv`` (``editing.ground_truth``), or None; the plan's
            metadata says how many edits it matched (``ground_truth.matched``), and the log warns at none.
    """
    from workflow.diffusion.saving import load_tokenizer

    table = pd.read_parquet(prompts)
    rows = pd.read_parquet(dataset).drop(columns=["split", "image"], errors="ignore")
    frame = table.merge(rows, on="image_id", how="left", validate="one_to_one")
    truth = edits.ground_truth(ground_truth) if ground_truth else None
    items = edits.plan(frame, labels, prompt_settings, settings, truth, load_tokenizer(model))
    inputs = {"dataset": dataset, "prompts": prompts} | (
        {"ground_truth": ground_truth} if ground_truth else {}
    )
    meta = provenance(
        {"plan": settings.to_dict(), "prompts": prompt_settings.to_dict(), "labels": list(labels)},
        seeds={"editing": settings.seed},
        inputs=inputs,
    )
    counts = items["status"].value_counts().to_dict()
    meta |= {"edits": {str(k): int(v) for k, v in counts.items()}}
    if ground_truth:
        matched = int(items["true_counterfactual"].notna().sum())
        meta["ground_truth"] = {"file": ground_truth, "matched": matched}
        if not matched:
            log.warning("editing.ground_truth %s matches none of the planned edits", ground_truth)
    write_parquet(plan, items, meta)


def _load_gray(path: str, resolution: int) -> np.ndarray:
    """An image file as the float ``(H, W)`` grayscale in [0, 1] the edits are measured in."""
    from workflow.diffusion.latent_cache import load_image
    from workflow.editing.difference import grayscale

    return grayscale(load_image(path, resolution).numpy())


def reference_images(pipe: Any, sources: torch.Tensor, output: EditOutput) -> torch.Tensor:
    """What each edit is measured against, ``(B, 3, H, W)`` in [-1, 1]: the method's reconstruction (the
    null edit through the same inversion), else the sources (already resized to the editing resolution)
    through the pipeline's VAE, encoded and decoded as the method's own input was; so the difference map and
    the effectiveness show the edit alone, not the VAE, resizing or inversion round trip."""
    from workflow.editing.inversion import decode_latents, encode_images

    if output.reconstruction is not None:
        return output.reconstruction
    return decode_latents(pipe, encode_images(pipe, sources))


def _save_gray(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    from workflow.common.figures import save_png

    save_png(Image.fromarray((image * 255).round().astype(np.uint8), mode="L"), path)


def measure_edit(
    folder: Path,
    row: Mapping[str, Any],
    source: np.ndarray,
    reference: np.ndarray,
    reconstructed: bool,
    edited: np.ndarray,
    settings: EditSettings,
    mask_classes: Sequence[str],
    undone: np.ndarray | None = None,
    lpips: Lpips | None = None,
) -> dict[str, Any]:
    """Write one edit's files into ``folder`` and return its record: ``edited.png``; the reference
    (:func:`reference_images`) as ``reconstruction.png`` when ``reconstructed``, else ``round_trip.png``;
    the signed difference ``edited - reference`` (``difference.png``, ``difference.npy``) and its region
    statistics (minimality); ``cross_fade.gif`` from the reference to the edit; composition (the
    reconstruction against the ``source``) and the error against the true counterfactual
    (:func:`workflow.editing.soundness.image_measures`); with ``undone`` (the edit undone), ``undone.png``
    and its error against the source (:func:`workflow.editing.soundness.reversibility`); with ``lpips``
    (:mod:`workflow.editing.perceptual`), the LPIPS of the reconstruction and of the undone image against the
    source (None when its weights are unavailable). Images ``(3, H, W)`` float in [-1, 1].
    """
    from PIL import Image

    from workflow.common.figures import save_png
    from workflow.editing import difference, soundness

    folder.mkdir(parents=True, exist_ok=True)
    diff = difference.difference(reference, edited)
    gray, before = difference.grayscale(edited), difference.grayscale(reference)
    reference_path = folder / ("reconstruction.png" if reconstructed else "round_trip.png")
    _save_gray(gray, folder / "edited.png")
    _save_gray(before, reference_path)
    save_png(Image.fromarray(difference.colour_map(diff)), folder / "difference.png")
    difference.cross_fade(before, gray, str(folder / "cross_fade.gif"))
    with atomic_output(folder / "difference.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, diff)
    record = {
        "edit_id": row["edit_id"],
        "image": str(folder / "edited.png"),
        "reference": str(reference_path),
        "difference": str(folder / "difference.png"),
        "difference_map": str(folder / "difference.npy"),
        "cross_fade": str(folder / "cross_fade.gif"),
    }
    if reconstructed:
        record["reconstruction"] = str(reference_path)
    truth = None
    if not pd.isna(row["true_counterfactual"]):
        truth = (
            _load_gray(row["true_source"], settings.resolution),
            _load_gray(row["true_counterfactual"], settings.resolution),
        )
    mask = None
    if not pd.isna(row["mask"]):
        with Image.open(row["mask"]) as found:
            mask = np.asarray(found.resize(diff.shape[::-1], Image.Resampling.NEAREST))
    stats = difference.region_statistics(diff, settings.region_percentile, mask, mask_classes)
    per_class = stats.pop("mask_mean_abs_change", None)
    original = difference.grayscale(source)
    record |= stats | soundness.image_measures(original, before if reconstructed else None, truth, gray)
    if lpips is not None and reconstructed:
        record["reconstruction_lpips"] = lpips.distance(original, before)
    record["mask_mean_abs_change"] = json.dumps(per_class) if per_class is not None else None
    if undone is not None:
        back = difference.grayscale(undone)
        _save_gray(back, folder / "undone.png")
        record["undone"] = str(folder / "undone.png")
        record |= soundness.reversibility(original, back)
        if lpips is not None:
            record["reversibility_lpips"] = lpips.distance(original, back)
    return record


def clip_scores(
    clip: Clip,
    batch: pd.DataFrame,
    reference: np.ndarray,
    edited: np.ndarray,
    settings: EditSettings,
) -> list[dict[str, Any]]:
    """Per edit of ``batch`` (plan rows), the CLIP filter's scores, ``clip_passed`` and ``clip_failed``
    (:mod:`workflow.editing.clip_filter`), from the references and edits ``(B, 3, H, W)`` in [-1, 1]; the
    pre-filter protects the findings positive in the target labels, the edited one and No Finding (which
    follows the others) aside."""
    from workflow.editing import clip_filter
    from workflow.editing.difference import grayscale

    labels = manifest.label_names(batch)
    kept = [
        [
            n
            for n in labels
            if row[manifest.label_column(n)] == 1 and n not in (row["edit_target"], edits.NO_FINDING)
        ]
        for row in batch.to_dict("records")
    ]
    changes = [
        edits.word_changes(s, t) for s, t in zip(batch["source_prompt"], batch["target_prompt"], strict=True)
    ]
    scores = clip_filter.scores(
        clip,
        [grayscale(r) for r in reference],
        [grayscale(e) for e in edited],
        batch["source_prompt"].tolist(),
        batch["target_prompt"].tolist(),
        changes,
        kept,
    )
    out = []
    for score in scores:
        failed = clip_filter.failed_criteria(score, settings.clip)
        out.append(score | {"clip_passed": not failed, "clip_failed": ",".join(failed)})
    return out


def edit_images(
    plan: str,
    model: str,
    method: str,
    settings: EditSettings,
    mask_classes: Sequence[str],
    shard: int,
    gpus: int,
    images: str,
    table: str,
    clip_model: str | None = None,
    inversions: str | None = None,
) -> None:
    """Run ``method`` on the edits of one shard of the plan with the fine-tuned ``model`` (weights in
    ``editing.dtype``, TF32 per ``editing.tf32``, progress in the log); write each edit's images and
    difference map, and the shard's table with its per-edit measures (:func:`measure_edit`). With
    ``editing.reversibility`` each edit is undone by the same method with the captions swapped and the same
    seeds. With ``clip_model`` each edit is scored and filtered by CLIP (:func:`clip_scores`).

    Args:
        mask_classes: ``dataset.mask_classes`` (names of the mask ids, for the per-class change).
        gpus: GPUs of the job (``resources.gpu``); 0 edits on the CPU.
        clip_model: the CLIP of ``editing.clip.model`` (the tiny stand-in's folder for ``tiny``), or None.
        inversions: the inversion cache's folder (``editing.cache_inversions``;
            :class:`workflow.editing.inversion.InversionCache`), shared by every method and shard, or None.
    """
    import torch

    from workflow.common.devices import pick_device, use_tf32
    from workflow.common.progress import progress
    from workflow.diffusion import saving
    from workflow.diffusion.latent_cache import load_image
    from workflow.diffusion.sampling import weights_dtype
    from workflow.editing import clip_filter, perceptual
    from workflow.editing.inversion import InversionCache, fingerprint
    from workflow.editing.methods import METHODS

    items = pd.read_parquet(plan)
    mine = items[items["shard"] == shard].reset_index(drop=True)
    Path(images).mkdir(parents=True, exist_ok=True)  # a shard may have no edits to run
    device = pick_device(gpus)
    use_tf32(settings.tf32)
    pipe = saving.load_trained(model, weights_dtype(settings.dtype, device, "editing.dtype")).to(device)
    pipe.set_progress_bar_config(disable=True)
    method_settings = settings.method_settings(method)
    clip = clip_filter.load(clip_model, device) if clip_model else None
    cache = InversionCache(Path(inversions), fingerprint(pipe)) if inversions else None
    lpips = perceptual.load(settings.lpips, device)
    records = []
    with progress(total=len(mine), desc=f"edit_images {method} shard {shard}", unit="edit") as bar:
        for _, batch in mine.groupby("batch", sort=True):
            sources = torch.stack([load_image(p, settings.resolution) for p in batch["image"]])
            captions = batch["source_prompt"].tolist(), batch["target_prompt"].tolist()
            words = [list(words) for words in batch["edit_words"]]
            seeds = [int(seed) for seed in batch["seed"]]
            run = METHODS[method]
            output = run(pipe, sources.to(pipe.device), *captions, words, method_settings, seeds, cache=cache)
            undone = None
            if settings.reversibility:
                back = run(pipe, output.edited, *captions[::-1], words, method_settings, seeds, cache=cache)
                undone = back.edited.detach().float().cpu().numpy()
            edited = output.edited.detach().float().cpu().numpy()
            reference = reference_images(pipe, sources, output).detach().float().cpu().numpy()
            measured = []
            for k, row in enumerate(batch.to_dict("records")):
                measured.append(
                    measure_edit(
                        Path(images) / row["edit_id"],
                        row,
                        sources[k].numpy(),
                        reference[k],
                        output.reconstruction is not None,
                        edited[k],
                        settings,
                        mask_classes,
                        None if undone is None else undone[k],
                        lpips,
                    )
                )
            if clip is not None:
                scored = clip_scores(clip, batch, reference, edited, settings)
                measured = [m | c for m, c in zip(measured, scored, strict=True)]
            records += measured
            bar.update(len(batch))
    done = mine.rename(columns={"image": "source_image"}).merge(
        pd.DataFrame(records, columns=None if records else ["edit_id"]), on="edit_id", how="left"
    )
    done = done.assign(method=method)
    weights = read_card(model).get("weights", model)
    if clip is not None:
        weights = f"{weights}; CLIP filter: {clip.weights}"
    meta = provenance(
        settings.to_dict() | {"method": method},
        inputs={"plan": plan},
        weights=weights,
    )
    write_parquet(table, done, meta | {"shard": shard, "method": method, "lpips": lpips.info()})


def cross_fade_page(frame: pd.DataFrame, method: str, page: str) -> None:
    """An HTML page with the cross-fade GIF (reference to edit and back) of the first edit of each edit type
    of ``frame`` (the method's manifest rows), embedded as data URIs so the Snakemake report, which shows
    PNG but not GIF results inline, plays them; written atomically."""
    import base64
    import html

    from workflow.common.files import write_text

    body = []
    for name, rows in frame.groupby("edit", sort=True):
        row = rows.iloc[0]
        data = base64.b64encode(Path(row["cross_fade"]).read_bytes()).decode("ascii")
        caption = f"{row['source_image_id']}: {row['source_prompt']} -> {row['target_prompt']}"
        body.append(
            f"<figure><img src='data:image/gif;base64,{data}' width='256' style='image-rendering:pixelated'>"
            f"<figcaption><b>{html.escape(str(name))}</b><br>{html.escape(caption)}</figcaption></figure>"
        )
    title = f"Cross-fades by {method}"
    write_text(
        page,
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f"<body><h2>{html.escape(title)}</h2>{''.join(body) or '<p>no edits were run</p>'}</body></html>\n",
    )


def collect_edits(
    parts: Sequence[str], method: str, plan: str, counterfactuals: str, examples: str, cross_fades: str
) -> None:
    """Merge the shard tables into the method's counterfactual manifest, draw one original / edited /
    difference row per edit type (the first edit of each) and write their cross-fades
    (:func:`cross_fade_page`)."""
    from workflow.common.figures import image_grid

    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    frame = frame.sort_values("edit_id", kind="stable").reset_index(drop=True)
    renamed = {"image_id": "source_image_id", "split": "source_split", "path": "source_path"}
    frame = frame.rename(columns=renamed)
    frame["image_id"] = f"counterfactual/{method}/" + frame["edit_id"]
    frame["path"] = frame["image"]
    frame["split"] = "train"
    labels = manifest.label_names(frame)
    extra = [c for c in frame if c not in manifest.CORE_COLUMNS and not c.startswith(manifest.LABEL_PREFIX)]
    result = pd.concat([manifest.normalise(frame, labels), frame[extra]], axis=1)
    result = result.loc[:, ~result.columns.duplicated()]
    manifest.validate(result, counterfactuals)
    skipped = pd.read_parquet(plan, columns=["edit_id", "edit", "status", "reason"])
    skipped = skipped[skipped["status"] == edits.SKIPPED]
    meta = read_parquet_meta(parts[0]) if parts else {}
    info = provenance(
        {"method": method, "shards": len(parts)},
        inputs={"plan": plan} | {f"shard{i}": p for i, p in enumerate(parts)},
        weights=meta.get("weights", "unknown"),
    )
    write_parquet(
        counterfactuals,
        result,
        info
        | {"method": method, "edited": len(result), "skipped": skipped.to_dict("records")}
        | ({"lpips": meta["lpips"]} if "lpips" in meta else {}),
    )
    cells: list[tuple[np.ndarray, str] | None] = []
    for name, rows in result.groupby("edit", sort=True):
        row = rows.iloc[0]
        cells += [
            (_rgb(row["source_image"]), f"original\n{row['source_image_id']}"),
            (_rgb(row["image"]), f"{method}: {name}"),
            (_rgb(row["difference"]), "difference (red brighter)"),
        ]
    image_grid(cells, examples, f"Counterfactuals by {method}", columns=3, empty="no edits were run")
    cross_fade_page(result, method, cross_fades)


def _rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
