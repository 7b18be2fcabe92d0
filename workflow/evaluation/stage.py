"""The evaluation stage, file to file: image quality of every generator's synthetic set.

One function per rule of ``rules/evaluation.smk``, named after it:

- :func:`image_metrics` (one job per generator): ``results/evaluation/<generator>/image_metrics.json``
  (provenance, extractor and its weights, resize policy, counts, seed, overall and per-group FID, KID and
  precision/recall, warnings, feature-cache keys: :mod:`workflow.evaluation.fidelity`), for
  ``evaluation.extractor`` at the top level and for every extractor (``evaluation.also`` too) under
  ``feature_spaces``, and ``per_group.csv`` (one row per extractor and group, an ``extractor`` column, the
  first row the overall one of ``evaluation.extractor``);
- :func:`conditional_fidelity` (one job per generator, when the study trains a classifier on real images):
  ``results/evaluation/<generator>/conditional_fidelity.json`` (:mod:`workflow.evaluation.conditional`);
- :func:`train_segmenter` (with a mask-guided or mask-text generator): ``results/evaluation/segmenter/model/``
  and ``train_report.json`` (its Dice on the real test split), and :func:`mask_faithfulness` (one job per
  mask-guided or mask-text generator): ``results/evaluation/<generator>/mask_faithfulness.json``
  (:mod:`workflow.evaluation.segmentation`);
- :func:`counterfactual_soundness` (one job per editing method): ``results/counterfactuals/<method>/
  soundness.json`` (:mod:`workflow.editing.soundness`; the real-data classifier judges the edits);
- :func:`collect_image_metrics`: ``results/fid.json``, one section per generator and ``overall``, the overall
  metrics per generator and extractor (and each generator's conditional fidelity and mask faithfulness), and
  ``results/fid_per_class.csv``, every generator's rows with a ``generator`` column.
  ``snakemake results/fid.json`` builds exactly what these need.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workflow.common.files import read_parquet_meta, write_csv, write_json
from workflow.common.manifest import label_column
from workflow.common.model_card import read_card
from workflow.common.provenance import provenance
from workflow.evaluation.settings import (
    ConditionalSettings,
    EvaluationSettings,
    MaskFaithfulnessSettings,
    VolumeSimilaritySettings,
)

if TYPE_CHECKING:
    from workflow.diffusion.mask_guided import Pairs
    from workflow.evaluation.features import ImagePolicy

log = logging.getLogger(__name__)
COMPARABILITY = (
    "FID, KID and precision/recall depend on the feature space: compare values only within one extractor "
    "(kind and weights). The top-level extractor and metrics are those of evaluation.extractor "
    "({extractor}); feature_spaces has every extractor's."
)
NO_CONDITIONAL = (
    "not computed: it needs the classifier trained on real images (real in classifier.regimes) and "
    "evaluation.conditional_fidelity.enabled"
)


def image_metrics(
    dataset: str,
    samples: str,
    prompts: str,
    settings: EvaluationSettings,
    extractors: Mapping[str, str],
    gpus: int,
    report: str,
    table: str,
) -> None:
    """A generator's synthetic set against the reference split, overall and per group, in every feature
    space (``evaluation.extractor``, then ``evaluation.also``).

    The top level of ``report`` is as with one extractor (that of ``evaluation.extractor``);
    ``feature_spaces`` holds every extractor's section (its extractor, metrics, groups, warnings and cache
    keys). ``table`` has one row per feature space and group, with an ``extractor`` column, those of
    ``evaluation.extractor`` first.

    Args:
        dataset: ``results/data/dataset.parquet``.
        samples: the generator's manifest, ``results/samples/<generator>/manifest.parquet``.
        prompts: the prompts table of the reference split (prompt ids of the real images).
        extractors: extractor kind -> its local folder or weights file, for those the workflow tracks
            (:func:`workflow.evaluation.settings.extractor_inputs`).
        gpus: GPUs of the job (``resources.gpu``); 0 computes the features on the CPU.

    Raises:
        InputError: for an empty reference split or synthetic set, a missing image, or ``evaluation.also``
            repeating ``evaluation.extractor``.
    """
    from workflow.common.devices import pick_device
    from workflow.evaluation import fidelity
    from workflow.evaluation.features import resolve_policy

    split = settings.reference_split
    kinds = settings.feature_spaces()
    real, fake = fidelity.read_sets(dataset, samples, prompts, split)
    policy = resolve_policy(settings, real["image"].tolist(), fake["image"].tolist())
    cuda = pick_device(gpus).type == "cuda"
    sources = {"fake": samples, "real": f"{dataset} split {split}"}
    spaces, frames, seeds = {}, [], {"kid": settings.seed}
    for kind in kinds:
        local = extractors.get(kind)
        space, frame, seed = _feature_space(kind, local, settings, real, fake, policy, sources, cuda)
        spaces[kind] = space
        frames.append(frame)
        if seed is not None:
            seeds["tiny_extractor" if kind == kinds[0] else f"tiny_extractor:{kind}"] = seed
    primary = spaces[kinds[0]]
    weights = primary["extractor"]["weights"]
    if len(kinds) > 1:
        weights = "; ".join(f"{kind}: {space['extractor']['weights']}" for kind, space in spaces.items())
    inputs = {"dataset": dataset, "samples": samples, "prompts": prompts}
    slicewise = {"volumes": fidelity.has_volumes(real), "definition": fidelity.SLICEWISE}
    write_json(
        report,
        {
            "provenance": provenance(settings, seeds=seeds, inputs=inputs, weights=weights),
            "extractor": primary["extractor"],
            "resize_policy": policy.describe(),
            "seed": settings.seed,
            "reference": {"split": split, "images": len(real), "volumes": fidelity.volume_count(real)},
            "synthetic": {
                "images": len(fake),
                "prompts": fake["prompt_id"].nunique(),
                "volumes": fidelity.volume_count(fake),
            },
            "metrics": primary["metrics"],
            "slicewise": slicewise | {"bins": settings.slice_bins},
            **{f"per_{group}": primary[f"per_{group}"] for group in fidelity.GROUP_KINDS},
            "warnings": primary["warnings"],
            "feature_cache": primary["feature_cache"],
            "feature_spaces": spaces,
            "comparability": COMPARABILITY.format(extractor=kinds[0]),
        },
    )
    frame = pd.concat(frames, ignore_index=True)
    frame["kid_subset_size"] = frame["kid_subset_size"].astype("Int64")
    frame["warnings"] = frame["warnings"].map("; ".join)
    write_csv(table, frame)


def _feature_space(
    kind: str,
    local: str | None,
    settings: EvaluationSettings,
    real: pd.DataFrame,
    fake: pd.DataFrame,
    policy: ImagePolicy,
    sources: Mapping[str, str],
    cuda: bool,
) -> tuple[dict[str, Any], pd.DataFrame, int | None]:
    """One extractor's results: its ``feature_spaces`` section, its table rows (overall first) and the seed
    of its random weights (tiny stand-ins; else None)."""
    import torch_fidelity

    from workflow.evaluation import extractors, fidelity
    from workflow.evaluation.features import FeatureCache

    spec = extractors.resolve(settings, kind, local)
    cache = FeatureCache(settings.cache_dir, spec, policy, cuda, settings.batch_size)
    fake_features, fake_key = cache.features(fake["image"].tolist(), sources["fake"])
    real_features, real_key = cache.features(real["image"].tolist(), sources["real"])
    overall = fidelity.compare(fake_features, real_features, settings)
    rows = [
        fidelity.evaluate_group(group, fake_features, real_features, settings)
        for group in fidelity.groups(fake, real, settings.slice_bins)
    ]
    weights = spec.weights()
    warnings = list(overall["warnings"])
    if "random-init" in weights:
        warnings.append(f"{weights}: the numbers check the plumbing and do not measure image quality")
    for warning in warnings:
        log.warning("%s: %s", kind, warning)
    computed = sum(row["reason"] is None for row in rows)
    log.info("%s: overall FID %s; %d of %d groups computed", kind, overall["fid"], computed, len(rows))
    groups = {
        f"per_{group}": {r["name"]: fidelity.clean(r) for r in rows if r["group"] == group}
        for group in fidelity.GROUP_KINDS
    }
    section = {
        "extractor": cache.identity
        | {"weights": weights, "feature_dim": int(real_features.shape[1])}
        | {"device": "cuda" if cuda else "cpu", "torch_fidelity": torch_fidelity.__version__},
        "metrics": fidelity.clean(overall),
        **groups,
        "warnings": warnings,
        "feature_cache": {"dir": settings.cache_dir, "synthetic": fake_key, "real": real_key},
    }
    frame = pd.DataFrame([{"group": "overall", "name": "all", "prompt": None} | overall, *rows])
    frame.insert(0, "extractor", kind)
    return section, frame, read_card(spec.location).get("seed")


def conditional_fidelity(
    samples: str,
    model: str,
    real_metrics: str,
    settings: ConditionalSettings,
    report: str,
    gpus: int,
    threads: int,
) -> None:
    """The real-data classifier ``model`` (its test metrics ``real_metrics``) on a generator's ``samples``,
    against the labels their prompts asked for (:func:`workflow.evaluation.conditional.score`); on a GPU when
    ``gpus`` (the job's ``resources.gpu``) is above 0 and one is visible."""
    import torch

    from workflow.classifier import networks
    from workflow.common.devices import pick_device
    from workflow.evaluation import conditional

    torch.set_num_threads(threads)
    network, spec, trained = networks.load(model)
    where = pick_device(gpus)
    result = conditional.score(
        pd.read_parquet(samples), network.to(where), spec, json.loads(Path(real_metrics).read_text()),
        settings, where,
    )  # fmt: skip
    meta = provenance(
        settings,
        seeds={"bootstrap": settings.seed},
        inputs={"samples": samples, "model": model, "real_metrics": real_metrics},
        weights=networks.trained_weights(trained, model),
    )
    write_json(report, {"provenance": meta, "classifier": model} | result)


def counterfactual_soundness(
    counterfactuals: str,
    plan: str,
    model: str | None,
    real_metrics: str | None,
    settings: ConditionalSettings,
    report: str,
    gpus: int,
    threads: int,
) -> None:
    """Soundness of one counterfactual set (:mod:`workflow.editing.soundness`): the per-edit measures of the
    editing stage summarised per edit type and overall, with the effectiveness of every finding edit as the
    real-data classifier ``model`` sees it (its probability before the edit, on the edit's ``reference``:
    the method's reconstruction, or the source through the VAE, so that the round trip is not counted as the
    edit; and on the edited image; its validation thresholds from ``real_metrics``), and the edits the plan
    refused. Without a real-data classifier (``real`` not in ``classifier.regimes``) effectiveness is left
    out and the report says so; with ``editing.ground_truth`` set but matching no edit, the notes say that;
    ``lpips`` is the editing stage's LPIPS (net, weights file), and without weights the notes say why its
    measures are null. The classifier runs on a GPU when ``gpus`` (the job's ``resources.gpu``) is above 0
    and one is visible.
    """
    from workflow.editing import edits, soundness

    rows = pd.read_parquet(counterfactuals)
    probabilities, thresholds, weights, inputs = (
        None,
        {},
        "none",
        {"counterfactuals": counterfactuals, "plan": plan},
    )
    if model is not None and real_metrics is not None and len(rows):
        import torch

        from workflow.classifier import networks, training
        from workflow.common.devices import pick_device

        torch.set_num_threads(threads)
        network, spec, trained = networks.load(model)
        where = pick_device(gpus)
        network = network.to(where)
        columns = {}
        for side, column in (("source", "reference"), ("edited", "image")):
            frame = rows[["image_id", column]].rename(columns={column: "image"})
            frame[[label_column(name) for name in spec.labels]] = np.nan
            predicted = training.predict(network, frame, spec, settings.batch_size, where)
            columns |= {f"{side}_{name}": predicted[name].to_numpy() for name in spec.labels}
        probabilities = pd.DataFrame(columns, index=rows.index)
        metrics = json.loads(Path(real_metrics).read_text())["labels"]
        thresholds = {
            name: metrics[name]["threshold"]["value"]
            for name in spec.labels
            if (metrics.get(name) or {}).get("threshold") and metrics[name]["threshold"]["value"] is not None
        }
        weights = networks.trained_weights(trained, model)
        inputs |= {"model": model, "real_metrics": real_metrics}
    summary = soundness.summarise(rows, probabilities, thresholds, soundness.MEASURES)
    planned = pd.read_parquet(plan, columns=["edit_id", "edit", "status", "reason", "split"])
    skipped = planned[planned["status"] == edits.SKIPPED].drop(columns=["status", "split"])
    generated = read_parquet_meta(counterfactuals).get("weights", "unknown")
    meta = provenance(settings, inputs=inputs, weights=f"editor: {generated}; classifier: {weights}")
    notes = (
        []
        if probabilities is not None
        else ["no classifier trained on real images: effectiveness not measured"]
    )
    lpips = read_parquet_meta(counterfactuals).get("lpips")
    if lpips and lpips["reason"]:
        notes.append(lpips["reason"])
    source_splits = sorted(planned["split"].dropna().unique())
    if source_splits not in ([], ["test"]):
        notes.append(
            f"the edited images are from split {', '.join(source_splits)} (editing.split), not test: the "
            "generator trained on train images and the judging classifier on train (its thresholds on val), "
            "so effectiveness and reconstruction there are in-sample"
        )
    truth = read_parquet_meta(plan).get("ground_truth")
    if truth and not truth["matched"]:
        notes.append(
            f"editing.ground_truth ({truth['file']}) matches none of the planned edits: no error against "
            "the true counterfactual (its Source Path must be the edited images' dataset paths)"
        )
    write_json(
        report,
        {
            "provenance": meta,
            "method": rows["method"].iloc[0] if len(rows) else None,
            "weights": {"editor": generated, "classifier": weights},
            "classifier": model,
            "edited": len(rows),
            "source_split": source_splits,
            "ground_truth_edits": int(rows["true_counterfactual"].notna().sum()) if len(rows) else 0,
            "skipped": skipped.to_dict("records"),
            "notes": notes,
            "lpips": lpips,
        }
        | summary,
    )


def segmenter_pairs(dataset: str, split: str, settings: MaskFaithfulnessSettings) -> Pairs | None:
    """The images and masks of ``split`` in the preprocessed ``dataset`` at the segmenter's size (None when
    the split has no masks)."""
    from workflow.diffusion.mask_guided import read_pairs

    rows = pd.read_parquet(dataset)
    rows = rows[(rows["split"] == split) & rows["mask"].notna()]
    if rows.empty:
        return None
    return read_pairs(
        rows["image"].tolist(), rows["mask"].tolist(), len(settings.mask_classes), settings.resolution
    )


def train_segmenter(
    dataset: str, settings: MaskFaithfulnessSettings, gpus: int, model: str, report: str, checkpoints: str
) -> None:
    """Train the mask-faithfulness segmenter on the training split's images and masks, resuming from the
    newest checkpoint in ``checkpoints`` (:func:`workflow.evaluation.segmentation.train`; a SIGTERM saves one
    and stops), and measure it on the real test split: its Dice per class there is the ceiling of a
    generator's (``report``).

    Raises:
        InputError: when the training split has no masks.
    """
    from workflow.common.devices import pick_device
    from workflow.common.errors import InputError
    from workflow.common.files import atomic_output
    from workflow.common.interruption import attempt_log, stop_on_signal
    from workflow.common.model_card import write_card
    from workflow.common.provenance import config_hash
    from workflow.evaluation import segmentation

    with attempt_log(checkpoints):
        pairs = segmenter_pairs(dataset, "train", settings)
        if pairs is None:
            raise InputError(
                f"{dataset}: the train split has no images with masks; evaluation.mask_faithfulness needs "
                "the dataset's segmentation masks (manifest column mask_path)"
            )
        meta = provenance(settings, seeds={"train": settings.seed}, inputs={"dataset": dataset})
        fingerprint = config_hash({"config": meta["config_hash"], "inputs": meta["inputs"]})
        with stop_on_signal() as stop:
            network, losses = segmentation.train(
                pairs, settings, fingerprint, checkpoints, pick_device(gpus), stop
            )
        weights = (
            f"MONAI UNet segmenter trained from random init on {len(pairs.images)} real training images and "
            f"masks ({settings.steps} steps at {settings.resolution} px)"
        )
        with atomic_output(model) as tmp:
            tmp.mkdir()
            segmentation.save_model(network, tmp)
            write_card(tmp, {"weights": weights, "provenance": meta})
        test = segmenter_pairs(dataset, "test", settings)
        real_test = (
            None
            if test is None
            else segmentation.dice_per_class(
                segmentation.segment(network, test.batch(slice(None))[0], settings.batch_size),
                test.masks.long(),
                settings.mask_classes,
            )
        )
        write_json(
            report,
            {
                "images": len(pairs.images),
                "steps": settings.steps,
                "loss_first_10": float(np.mean(losses[:10])),
                "loss_last_10": float(np.mean(losses[-10:])),
                "real_test": real_test,
                "provenance": meta | {"weights": weights},
            },
        )


def mask_faithfulness(
    generator: str,
    samples: str,
    model: str,
    segmenter_report: str,
    settings: MaskFaithfulnessSettings,
    gpus: int,
    report: str,
) -> None:
    """The segmenter ``model`` on a mask-guided or mask-text generator's ``samples``: Dice per class against
    the mask that conditioned each image, that is its ``mask_path`` less the classes its conditioning dropped
    (``dropped_classes``: sampling ablation, edited masks), beside the segmenter's own Dice on the real test
    split (:mod:`workflow.evaluation.segmentation`)."""
    import torch

    from workflow.common.devices import pick_device
    from workflow.common.model_card import read_card
    from workflow.diffusion.mask_guided import ablate
    from workflow.evaluation import segmentation

    rows = pd.read_parquet(samples)
    classes = settings.mask_classes
    network = segmentation.load_model(model, settings, pick_device(gpus))
    pairs = segmentation.read_generated(rows["image"], rows["mask_path"], len(classes), settings.resolution)
    dropped_names = (
        rows["dropped_classes"].fillna("") if "dropped_classes" in rows else pd.Series("", rows.index)
    )
    dropped = torch.tensor([[c in names.split(";") for c in classes] for names in dropped_names])
    images, masks = pairs.batch(slice(None))
    result = segmentation.dice_per_class(
        segmentation.segment(network, images, settings.batch_size), ablate(masks, dropped), classes
    )
    meta = provenance(
        settings,
        inputs={"samples": samples, "segmenter_report": segmenter_report},  # the model: its card's weights
        weights=read_card(model)["weights"],
    )
    real_test = json.loads(Path(segmenter_report).read_text())["real_test"]
    write_json(
        report,
        {"generator": generator, "images": len(rows), "segmenter": model, "provenance": meta}
        | result
        | {"real_test": real_test},
    )


def volume_similarity(
    generator: str, samples: str, dataset: str, settings: VolumeSimilaritySettings, report: str
) -> None:
    """MS-SSIM (:func:`workflow.evaluation.structural.volume_ms_ssim`, Wang et al. 2003 eq. 7) of every volume
    a 3D mask-text generator made (its samples' ``path``) with the real volume whose label volume conditioned
    it (the ``path`` of its slices' ``source_image_id`` in ``dataset``), both in 8 bits through the real
    volume's intensity window (data range 255) on the grid it was generated on (read with
    ``dataset.volumes.reader``, :func:`workflow.diffusion.mask_text.read_volume_pair`): DGM-VLC's 3D
    structural measure.

    Raises:
        InputError: naming the samples when they hold no volumes (a 2D generator).
    """
    from workflow.common.errors import InputError
    from workflow.data.slicing import load_volume, windowed
    from workflow.diffusion.mask_text import read_volume_pair
    from workflow.evaluation.structural import volume_ms_ssim

    rows = pd.read_parquet(samples).drop_duplicates("path")
    if not rows["path"].str.endswith((".nii", ".nii.gz")).all():
        raise InputError(
            f"{samples}: the samples are not volumes; volume_similarity is for mask-text generators with "
            "diffusion.mask_text.train.spatial_dims 3"
        )
    real = pd.read_parquet(dataset).set_index("image_id")
    volumes = []
    for row in rows.itertuples():
        source = real.loc[row.source_image_id]
        generated = load_volume(row.path)[0]
        low, high = source["window_low"], source["window_high"]
        volume = read_volume_pair(
            source["path"],
            source["mask_path"],
            len(settings.mask_classes),
            (low, high),
            generated.shape,
            settings.volume_reader,
        )[0]
        found = volume_ms_ssim(
            windowed(generated, low, high),
            volume[0].numpy(),
            data_range=255.0,
            kernel_size=settings.kernel_size,
            kernel_sigma=settings.kernel_sigma,
        )
        volumes.append(
            {"volume": row.path, "real_volume": source["path"], "ms_ssim": found.mean, "scales": found.scales}
        )
    values = [v["ms_ssim"] for v in volumes]
    write_json(
        report,
        {
            "generator": generator,
            "volumes": len(volumes),
            "ms_ssim_mean": float(np.mean(values)),
            "ms_ssim_std": float(np.std(values)),
            "scales": sorted({v["scales"] for v in volumes}),
            "data_range": 255.0,
            "per_volume": volumes,
            "provenance": provenance(settings, inputs={"samples": samples, "dataset": dataset}),
        },
    )


def collect_image_metrics(
    generators: Sequence[str],
    reports: Sequence[str],
    tables: Sequence[str],
    fid: str,
    fid_table: str,
    conditional: Sequence[str] | None = None,
    faithfulness: Sequence[str] | None = None,
    volumes: Sequence[str] | None = None,
) -> None:
    """Every generator's image quality in one JSON (a section each) and one CSV (a ``generator`` column);
    ``conditional``: every generator's conditional fidelity, in generator order (none when the study trains
    no classifier on real images); ``faithfulness``: the mask faithfulness of the mask-guided and mask-text
    generators (:func:`mask_faithfulness`) and ``volumes`` the volume similarity of the 3D ones
    (:func:`volume_similarity`), each in its generator's section."""
    pairs = list(zip(generators, reports, tables, strict=True))
    sections = {name: json.loads(Path(path).read_text()) for name, path, _ in pairs}
    inputs = {f"report[{name}]": report for name, report, _ in pairs}
    inputs |= {f"table[{name}]": table for name, _, table in pairs}
    overall = {
        name: {kind: space["metrics"] for kind, space in section["feature_spaces"].items()}
        for name, section in sections.items()
    }
    summary: dict[str, Any] | str = NO_CONDITIONAL
    if conditional:
        inputs |= {f"conditional[{n}]": path for n, path in zip(generators, conditional, strict=True)}
        summary = {}
        for name, path in zip(generators, conditional, strict=True):
            result = json.loads(Path(path).read_text())
            sections[name]["conditional_fidelity"] = result
            summary[name] = {
                "macro_auroc": result["macro"]["auroc"],
                "macro_auroc_detected": result["macro_detected"]["auroc"],
                "auroc": {f: row["auroc"] for f, row in result["labels"].items()},
                "real_test_auroc": {f: row["real_test_auroc"] for f, row in result["labels"].items()},
            }
    for key, paths in (("mask_faithfulness", faithfulness), ("volume_similarity", volumes)):
        for path in paths or []:
            result = json.loads(Path(path).read_text())
            sections[result["generator"]][key] = result
            inputs[f"{key}[{result['generator']}]"] = path
    write_json(
        fid,
        {
            "provenance": provenance({"generators": list(generators)}, inputs=inputs),
            "overall": overall,
            "conditional_fidelity": summary,
            "comparability": "values are comparable only within one extractor (feature space)",
            "generators": sections,
        },
    )
    frames = [pd.read_csv(path).assign(generator=name) for name, _, path in pairs]
    merged = pd.concat(frames, ignore_index=True)
    write_csv(fid_table, merged[["generator", *(c for c in merged.columns if c != "generator")]])
