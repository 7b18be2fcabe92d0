"""The prompts stage, file to file: embeddings -> morphology clusters -> prompts -> diffusers training folder.

One function per rule of ``rules/prompts.smk``, named after it. Files written (atomically, each with
provenance; the embedding and clustering steps only when ``prompts.strategies`` has ``mep``):

- ``results/prompts/embeddings/{k}.parquet``: ``image_id``, ``embedding`` (CLS token, list of float32)
  and, with ``prompts.mep.outliers.enabled``, MEP's outlier features (:func:`embed_images`);
- ``results/prompts/embeddings.parquet``: the shards merged, sorted by ``image_id``
  (:func:`merge_embeddings`);
- ``results/prompts/clusters.parquet`` (``image_id``, ``cluster``, ``outlier``, ``outlier_rules``),
  ``results/prompts/cluster_report.json`` (k, how it was chosen, images per split, class and finding per
  cluster) and ``results/prompts/montages/cluster_{c:02d}.png``, the 16 training images nearest each
  centroid (:func:`cluster_embeddings`);
- ``results/prompts/{split}.parquet`` and ``results/prompts/prompt_report.json`` (every distinct prompt
  with its id and counts, the balancing design) (:func:`build_prompts`);
- ``results/prompts/variants/{variant}/`` the same for a generator trained on a sub-list of the strategies:
  the same selected images, other captions (:func:`build_prompt_variant`, :mod:`workflow.prompts.variants`);
- ``results/prompts/train_imagefolder/``: the selected training images (hard links, or copies across file
  systems) with ``metadata.jsonl`` rows ``{"file_name", "text", "image_id", "prompt_id", ...,
  "label_<name>"}``, ``file_name`` first and ``text`` second, which is what diffusers'
  ``train_text_to_image.py --train_data_dir`` reads through ``datasets``' imagefolder builder
  (:func:`export_imagefolder`).

Schema of ``results/prompts/{split}.parquet``, one row per image of the split, sorted by ``image_id``:

===========  ========  ======================================================================================
column       dtype     meaning
===========  ========  ======================================================================================
image_id     string    the dataset's image id
split        string    ``train`` / ``val`` / ``test``
image        string    preprocessed PNG (``results/data/images/...``)
prompt       string    conditioning text (:mod:`workflow.prompts`); null for a MEP outlier
prompt_id    Int64     stable id of the prompt: its position among the sorted distinct prompts of all splits
cluster      Int64     k-means morphology cluster (``mep``); NA without ``mep`` and for outliers
class_name   string    class from ``prompts.classes`` (balancing, MEP's ``{label}``); null when unset
outlier      boolean   removed by MEP's outlier rule (``prompts.mep.outliers``)
selected     boolean   in the training set: has a prompt and, on ``train`` with ``prompts.balance``, was drawn
===========  ========  ======================================================================================

torch/transformers and scikit-learn are imported only by the steps that use them, so that the light steps
start in about a second.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError
from workflow.common.files import atomic_output, link_or_copy, read_parquet_meta, write_json, write_parquet
from workflow.common.manifest import label_column
from workflow.common.model_card import weights_label
from workflow.common.provenance import provenance
from workflow.prompts import balancing, strategies
from workflow.prompts.settings import ClusterSettings, EmbedSettings, PromptSettings

PROMPT_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "split": "string",
    "image": "string",
    "prompt": "string",
    "prompt_id": "Int64",
    "cluster": "Int64",
    "class_name": "string",
    "outlier": "boolean",
    "selected": "boolean",
}


def embed_images(
    dataset: str, model: str, settings: EmbedSettings, shard: int, gpus: int, threads: int, embeddings: str
) -> None:
    """Embed shard ``shard`` of ``settings.shards`` (contiguous blocks of the images sorted by id), on a GPU
    when ``gpus`` (the job's ``resources.gpu``) is above 0 and one is visible."""
    from workflow.common.devices import pick_device
    from workflow.prompts import embeddings as vit
    from workflow.prompts import outliers

    if not 0 <= shard < settings.shards:
        raise InputError(f"shard {shard} is outside 0..{settings.shards - 1} (prompts.mep.shards)")
    frame = pd.read_parquet(dataset, columns=["image_id", "image", "path", "slice_index"])
    # a source inside a container (a PCam HDF5 patch, a volume slice) is measured on its preprocessed PNG,
    # which at PCam's native size and colour is the patch itself
    frame["path"] = frame["path"].where(frame["slice_index"].isna(), frame["image"])
    frame = frame.sort_values("image_id", kind="stable").reset_index(drop=True)
    part = frame.iloc[np.array_split(np.arange(len(frame)), settings.shards)[shard]]
    network, processor = vit.load(model)
    device = pick_device(gpus)
    matrix, features = vit.embed(
        network,
        processor,
        part["image"].tolist(),
        device=device,
        batch_size=settings.batch_size,
        threads=threads,
        feature_paths=part["path"].tolist() if settings.outlier_features else None,
    )
    table = pd.DataFrame({"image_id": part["image_id"].to_numpy(), "embedding": list(matrix)})
    if features is not None:
        table[list(outliers.FEATURES)] = features
    meta = provenance(settings, inputs={"dataset": dataset}, weights=weights_label(model)) | {
        "model": model,
        "device": str(device),
        "shard": shard,
        "dimension": int(matrix.shape[1]),
    }
    write_parquet(embeddings, table, meta)


def merge_embeddings(parts: Sequence[str], embeddings: str) -> None:
    """Concatenate the shards, sorted by ``image_id``; all must come from the same weights."""
    metas = [read_parquet_meta(p) for p in parts]
    weights = sorted({m["weights"] for m in metas})
    if len(weights) != 1:
        raise InputError(f"embedding shards {list(parts)} come from different weights {weights}; rerun them")
    table = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    if table["image_id"].duplicated().any():
        raise InputError(f"embedding shards {list(parts)} overlap; rerun them with one prompts.mep.shards")
    inputs = {f"shard{i}": p for i, p in enumerate(parts)}
    meta = provenance({"shards": len(parts)}, inputs=inputs, weights=weights[0]) | {
        "model": metas[0]["model"],
        "rows": len(table),
    }
    write_parquet(embeddings, table, meta)


def _join(left: pd.DataFrame, right: pd.DataFrame, source: str) -> pd.DataFrame:
    """``left`` joined with ``right`` on ``image_id``; both must list the same images."""
    frame = left.merge(right, on="image_id", how="left", validate="one_to_one", indicator=True)
    if (frame["_merge"] != "both").any() or len(frame) != len(right):
        raise InputError(f"{source} does not list the images of the dataset; rerun the prompts stage")
    return frame.drop(columns="_merge")


def cluster_embeddings(
    embeddings: str,
    dataset: str,
    settings: ClusterSettings,
    labels: Sequence[str],
    clusters: str,
    report: str,
    montages: str,
) -> None:
    """MEP-LDM's morphology clusters: outlier rule, k-means on train, nearest centroid elsewhere, montages."""
    from workflow.prompts import clustering, outliers

    info, x = clustering.read_embeddings(embeddings)
    rows = pd.read_parquet(dataset)
    rows["class_name"] = strategies.class_names(rows, settings.classes)
    frame = _join(info[["image_id"]], rows, embeddings)
    rules = settings.outliers
    if rules.enabled:
        if not set(outliers.FEATURES) <= set(info.columns):
            raise InputError(f"{embeddings} has no outlier features; rerun embed_images")
        failed = outliers.flag(info, rules.bounds())
        frame["outlier"] = failed.pop("outlier").to_numpy()
        frame["outlier_rules"] = [", ".join(failed.columns[row]) or None for row in failed.to_numpy()]
    else:
        frame["outlier"], frame["outlier_rules"] = False, None
    keep = ~frame["outlier"].to_numpy()
    train = keep & (frame["split"] == "train").to_numpy()
    model, choice = clustering.fit(x[train], settings)
    assigned = np.full(len(frame), -1)
    assigned[keep] = model.predict(x[keep])
    frame["cluster"] = pd.array(np.where(assigned >= 0, assigned, None), dtype="Int64")
    k = choice["k"]
    summary = clustering.cluster_summary(frame, labels, k)
    with atomic_output(montages) as tmp:
        tmp.mkdir()
        for entry in summary:
            members = np.flatnonzero(train & (assigned == entry["cluster"]))
            centre = model.cluster_centers_[entry["cluster"]]
            closest = members[clustering.nearest(x[members], centre, clustering.MONTAGE_TILES)]
            name = f"cluster_{entry['cluster']:02d}.png"
            clustering.montage(frame["image"].iloc[closest].tolist()).save(tmp / name)
            entry |= {"words": strategies.number_words(entry["cluster"]), "montage": f"{montages}/{name}"}
    weights = read_parquet_meta(embeddings)["weights"]
    inputs = {"embeddings": embeddings, "dataset": dataset}
    meta = provenance(settings, seeds={"kmeans": settings.seed}, inputs=inputs, weights=weights) | {"k": k}
    columns = ["image_id", "split", "cluster", "outlier", "outlier_rules"]
    write_parquet(clusters, frame[columns].astype({"outlier_rules": "string"}), meta)
    removed = frame[frame["outlier"]]
    write_json(
        report,
        {
            "provenance": meta,
            "weights": weights,
            "algorithm": type(model).__name__,
            "k_choice": choice,
            "fitted_on": {"split": "train", "images": int(train.sum())},
            "outliers": {
                "enabled": rules.enabled,
                "removed": {str(s): int(n) for s, n in removed["split"].value_counts().sort_index().items()},
            },
            "clusters": summary,
        },
    )


def _rows_with_clusters(dataset: pd.DataFrame, clusters: str | None) -> pd.DataFrame:
    if clusters is None:
        return dataset.assign(cluster=pd.array([pd.NA] * len(dataset), dtype="Int64"), outlier=False)
    table = pd.read_parquet(clusters, columns=["image_id", "cluster", "outlier"])
    return _join(dataset, table, clusters)


def build_prompts(
    dataset: str,
    clusters: str | None,
    settings: PromptSettings,
    labels: Sequence[str],
    train: str,
    val: str,
    test: str,
    report: str,
) -> None:
    """Write one prompts table per split and the prompt report.

    Args:
        dataset: ``results/data/dataset.parquet``.
        clusters: ``results/prompts/clusters.parquet`` when ``mep`` is a strategy, else None.
        settings: the ``prompts`` section.
        labels: ``dataset.labels``.
        train, val, test: the prompts table of each split.
        report: ``results/prompts/prompt_report.json``.
    """
    if ("mep" in settings.strategies) != (clusters is not None):
        raise InputError("the mep strategy needs --clusters (and other strategies do not use it)")
    rows = pd.read_parquet(dataset).sort_values("image_id", kind="stable").reset_index(drop=True)
    frame = _rows_with_clusters(rows, clusters)
    frame["class_name"] = strategies.class_names(frame, settings.classes)
    frame["prompt"] = strategies.build(frame, labels, settings)
    frame["prompt_id"] = strategies.prompt_ids(frame["prompt"])
    frame["selected"] = frame["prompt"].notna()
    balance, design = settings.balance, None
    if balance.enabled:
        in_train = frame["selected"] & (frame["split"] == "train")
        classes = frame.loc[in_train, "class_name"]
        if settings.classes.column is None:
            classes = classes.fillna("all images")
        subset, design = balancing.balanced_subset(
            classes,
            frame.loc[in_train, "prompt"],
            balance.min_prompts_per_class,
            balance.max_images,
            settings.seed,
        )
        frame.loc[in_train, "selected"] = subset
    table = frame[list(PROMPT_COLUMNS)].astype(PROMPT_COLUMNS)
    inputs = {"dataset": dataset} | ({"clusters": clusters} if clusters else {})
    weights = read_parquet_meta(clusters)["weights"] if clusters else "none"
    seeds = {"balance": settings.seed} if balance.enabled else {}
    meta = provenance(settings, seeds=seeds, inputs=inputs, weights=weights)
    _write_tables(table, meta, {"train": train, "val": val, "test": test}, report, design)


def build_prompt_variant(
    prompts: Sequence[str],
    dataset: str,
    settings: PromptSettings,
    labels: Sequence[str],
    train: str,
    val: str,
    test: str,
    report: str,
) -> None:
    """The selected images of the study's prompts tables re-captioned with ``settings.strategies`` (a
    sub-list of the study's), one table per split and a prompt report (:mod:`workflow.prompts.variants`).

    Args:
        prompts: the study's ``results/prompts/{train,val,test}.parquet``, which decide the selection.
        dataset: ``results/data/dataset.parquet``.
        settings: the ``prompts`` section with the variant's ``strategies``.
    """
    study = pd.concat([pd.read_parquet(path) for path in prompts], ignore_index=True)
    rows = pd.read_parquet(dataset).drop(columns=["split", "image"], errors="ignore")
    frame = study.merge(rows, on="image_id", how="left", validate="one_to_one")
    text = strategies.build(frame, labels, settings)
    frame["prompt"] = text.where(study["prompt"].notna())  # MEP outliers have no caption in any variant
    frame["prompt_id"] = strategies.prompt_ids(frame["prompt"])
    frame["selected"] = study["selected"] & frame["prompt"].notna()
    table = frame[list(PROMPT_COLUMNS)].astype(PROMPT_COLUMNS)
    meta = provenance(
        settings, inputs={"dataset": dataset} | {f"prompts_{i}": p for i, p in enumerate(prompts)}
    )
    _write_tables(table, meta, {"train": train, "val": val, "test": test}, report, None)


def _write_tables(
    table: pd.DataFrame,
    meta: dict[str, Any],
    outputs: dict[str, str],
    report: str,
    design: balancing.Balance | None,
) -> None:
    for split, path in outputs.items():
        write_parquet(path, table[table["split"] == split].reset_index(drop=True), meta)
    write_json(report, {"provenance": meta} | prompt_report(table, design, list(outputs)))


def prompt_report(
    table: pd.DataFrame, design: balancing.Balance | None, splits: Sequence[str]
) -> dict[str, Any]:
    """Counts per split, the balancing design, every distinct prompt with its id (MEP's text_2_promptidx)."""
    per_split = {}
    for split in splits:
        part = table[table["split"] == split]
        per_split[split] = {
            "images": len(part),
            "with_prompt": int(part["prompt"].notna().sum()),
            "selected": int(part["selected"].sum()),
            "distinct_prompts": int(part["prompt"].nunique()),
        }
    counts = table.groupby(["prompt_id", "split"]).size().unstack(fill_value=0)
    chosen = table[table["selected"] & (table["split"] == "train")].groupby("prompt_id").size()
    texts = table.dropna(subset=["prompt"]).drop_duplicates("prompt_id").set_index("prompt_id")["prompt"]
    entries = [
        {
            "prompt_id": int(i),
            "text": str(texts[i]),
            "images": {str(s): int(n) for s, n in counts.loc[i].items()},
            "selected_train": int(chosen.get(i, 0)),
        }
        for i in sorted(texts.index)
    ]
    balanced = None
    if design is not None:
        balanced = dataclasses.asdict(design) | {"images": design.images}
    return {"splits": per_split, "balance": balanced, "prompts": entries}


def _json_value(value: Any) -> Any:
    if strategies.is_missing(value):
        return None
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    return value


def export_imagefolder(prompts: str, dataset: str, labels: Sequence[str], folder: str) -> None:
    """The selected training images as a diffusers/HF image folder with ``metadata.jsonl``.

    Images are named ``000000.png``, ... in ``image_id`` order next to ``metadata.jsonl``; a column that is
    empty for every image (``cluster`` without ``mep``, ``class_name`` without ``prompts.classes``) is left
    out so that every key has one type.
    """
    table = pd.read_parquet(prompts)
    table = table[table["selected"]].reset_index(drop=True)
    label_columns = [label_column(name) for name in labels]
    images = pd.read_parquet(dataset, columns=["image_id", *label_columns])
    rows = table.merge(images, on="image_id", how="left", validate="one_to_one")
    keys = ["image_id", "prompt_id", "cluster", "class_name", *label_columns]
    keys = [k for k in keys if rows[k].notna().any()]
    with atomic_output(folder) as tmp:
        tmp.mkdir()
        lines = []
        for i, row in enumerate(rows.to_dict("records")):
            name = f"{i:06d}{Path(row['image']).suffix}"
            link_or_copy(row["image"], tmp / name)
            record = {"file_name": name, "text": row["prompt"]} | {k: _json_value(row[k]) for k in keys}
            lines.append(json.dumps(record))
        (tmp / "metadata.jsonl").write_text("".join(f"{line}\n" for line in lines))
        meta = provenance({"labels": list(labels)}, inputs={"prompts": prompts, "dataset": dataset})
        write_json(tmp / "synthmed_provenance.json", {"provenance": meta, "images": len(rows)})
