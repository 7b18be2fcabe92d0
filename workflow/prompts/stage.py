"""The prompts stage, file to file: embeddings -> morphology clusters -> prompts -> diffusers training folder.

Each function here is what one Snakemake rule of ``rules/prompts.smk`` does. Files written (atomically,
each with provenance; the embedding and clustering steps only when ``prompts.strategies`` has ``mep``):

- ``results/models/tiny_vit/``: a randomly initialised tiny ViT for the demo (:func:`build_tiny_model`);
- ``results/prompts/embeddings/{k}.parquet``: ``image_id``, ``embedding`` (CLS token, list of float32)
  and, with ``prompts.mep.outliers.enabled``, MEP's outlier features (:func:`embed_shard`);
- ``results/prompts/embeddings.parquet``: the shards merged, sorted by ``image_id``
  (:func:`merge_embeddings`);
- ``results/prompts/clusters.parquet`` (``image_id``, ``cluster``, ``outlier``, ``outlier_rules``),
  ``results/prompts/cluster_report.json`` (k, how it was chosen, images per split, class and finding per
  cluster) and ``results/prompts/montages/cluster_{c:02d}.png``, the 16 training images nearest each
  centroid (:func:`cluster`);
- ``results/prompts/{split}.parquet`` and ``results/prompts/prompt_report.json`` (every distinct prompt
  with its id and counts, the balancing design) (:func:`build_prompts`);
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

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError
from workflow.common.manifest import label_column
from workflow.common.provenance import provenance, read_parquet_meta, write_json, write_parquet
from workflow.prompts import balancing
from workflow.prompts import strategies as prompts

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


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` in one rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def build_tiny_model(out_dir: str, seed: int) -> None:
    """Write the randomly initialised tiny ViT of the demo (``prompts.mep.model: tiny``)."""
    from workflow.prompts import embeddings

    with atomic_directory(out_dir) as tmp:
        meta = provenance({"seed": seed}, seeds={"init": seed}, weights=embeddings.TINY_WEIGHTS)
        embeddings.build_tiny_vit(tmp, seed, meta)


def embed_shard(
    dataset_in: str, model: str, settings: Mapping[str, Any], shard: int, threads: int, shard_out: str
) -> None:
    """Embed shard ``shard`` of ``settings["shards"]`` (contiguous blocks of the images sorted by id)."""
    from workflow.common.devices import pick_device
    from workflow.prompts import embeddings, outliers

    if not 0 <= shard < settings["shards"]:
        raise InputError(f"shard {shard} is outside 0..{settings['shards'] - 1} (prompts.mep.shards)")
    frame = pd.read_parquet(dataset_in, columns=["image_id", "image", "path"])
    frame = frame.sort_values("image_id", kind="stable").reset_index(drop=True)
    part = frame.iloc[np.array_split(np.arange(len(frame)), settings["shards"])[shard]]
    network, processor = embeddings.load(model)
    matrix, features = embeddings.embed(
        network,
        processor,
        part["image"].tolist(),
        batch_size=settings["batch_size"],
        threads=threads,
        feature_paths=part["path"].tolist() if settings["outlier_features"] else None,
    )
    table = pd.DataFrame({"image_id": part["image_id"].to_numpy(), "embedding": list(matrix)})
    if features is not None:
        table[list(outliers.FEATURES)] = features
    meta = provenance(settings, inputs={"dataset": dataset_in}, weights=embeddings.weights_label(model)) | {
        "model": model,
        "device": str(pick_device()),
        "shard": shard,
        "dimension": int(matrix.shape[1]),
    }
    write_parquet(shard_out, table, meta)


def merge_embeddings(parts: Sequence[str], merged_out: str) -> None:
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
    write_parquet(merged_out, table, meta)


def _join(left: pd.DataFrame, right: pd.DataFrame, source: str) -> pd.DataFrame:
    """``left`` joined with ``right`` on ``image_id``; both must list the same images."""
    frame = left.merge(right, on="image_id", how="left", validate="one_to_one", indicator=True)
    if (frame["_merge"] != "both").any() or len(frame) != len(right):
        raise InputError(f"{source} does not list the images of the dataset; rerun the prompts stage")
    return frame.drop(columns="_merge")


def cluster(
    embeddings_in: str,
    dataset_in: str,
    settings: Mapping[str, Any],
    labels: Sequence[str],
    clusters_out: str,
    report_out: str,
    montage_dir: str,
) -> None:
    """MEP-LDM's morphology clusters: outlier rule, k-means on train, nearest centroid elsewhere, montages.

    ``settings`` is ``prompts.mep`` plus ``seed`` and ``classes`` (``prompts.seed``, ``prompts.classes``).
    """
    from workflow.prompts import clustering, outliers

    info, x = clustering.read_embeddings(embeddings_in)
    dataset = pd.read_parquet(dataset_in)
    dataset["class_name"] = prompts.class_names(dataset, settings["classes"])
    frame = _join(info[["image_id"]], dataset, embeddings_in)
    rules = settings["outliers"]
    if rules["enabled"]:
        if not set(outliers.FEATURES) <= set(info.columns):
            raise InputError(f"{embeddings_in} has no outlier features; rerun embed_images")
        failed = outliers.flag(info, rules)
        frame["outlier"] = failed.pop("outlier").to_numpy()
        frame["outlier_rules"] = [", ".join(failed.columns[row]) or None for row in failed.to_numpy()]
    else:
        frame["outlier"], frame["outlier_rules"] = False, None
    keep = ~frame["outlier"].to_numpy()
    train = keep & (frame["split"] == "train").to_numpy()
    seed = settings["seed"]
    model, choice = clustering.fit(x[train], settings, seed)
    assigned = np.full(len(frame), -1)
    assigned[keep] = model.predict(x[keep])
    frame["cluster"] = pd.array(np.where(assigned >= 0, assigned, None), dtype="Int64")
    k = choice["k"]
    summary = clustering.cluster_summary(frame, labels, k)
    with atomic_directory(montage_dir) as tmp:
        for entry in summary:
            members = np.flatnonzero(train & (assigned == entry["cluster"]))
            centre = model.cluster_centers_[entry["cluster"]]
            closest = members[clustering.nearest(x[members], centre, clustering.MONTAGE_TILES)]
            name = f"cluster_{entry['cluster']:02d}.png"
            clustering.montage(frame["image"].iloc[closest].tolist()).save(tmp / name)
            entry |= {"words": prompts.number_words(entry["cluster"]), "montage": f"{montage_dir}/{name}"}
    weights = read_parquet_meta(embeddings_in)["weights"]
    inputs = {"embeddings": embeddings_in, "dataset": dataset_in}
    meta = provenance(settings, seeds={"kmeans": seed}, inputs=inputs, weights=weights) | {"k": k}
    columns = ["image_id", "split", "cluster", "outlier", "outlier_rules"]
    write_parquet(clusters_out, frame[columns].astype({"outlier_rules": "string"}), meta)
    removed = frame[frame["outlier"]]
    write_json(
        report_out,
        {
            "provenance": meta,
            "weights": weights,
            "algorithm": type(model).__name__,
            "k_choice": choice,
            "fitted_on": {"split": "train", "images": int(train.sum())},
            "outliers": {
                "enabled": rules["enabled"],
                "removed": {str(s): int(n) for s, n in removed["split"].value_counts().sort_index().items()},
            },
            "clusters": summary,
        },
    )


def _rows_with_clusters(dataset: pd.DataFrame, clusters_in: str | None) -> pd.DataFrame:
    if clusters_in is None:
        return dataset.assign(cluster=pd.array([pd.NA] * len(dataset), dtype="Int64"), outlier=False)
    clusters = pd.read_parquet(clusters_in, columns=["image_id", "cluster", "outlier"])
    return _join(dataset, clusters, clusters_in)


def build_prompts(
    dataset_in: str,
    clusters_in: str | None,
    settings: Mapping[str, Any],
    labels: Sequence[str],
    outputs: Mapping[str, str],
    report_out: str,
) -> None:
    """Write one prompts table per split (``outputs``: split -> path) and the prompt report.

    Args:
        dataset_in: ``results/data/dataset.parquet``.
        clusters_in: ``results/prompts/clusters.parquet`` when ``mep`` is a strategy, else None.
        settings: the ``prompts`` section.
        labels: ``dataset.labels``.
        outputs: ``{"train": path, "val": path, "test": path}``.
        report_out: ``results/prompts/prompt_report.json``.
    """
    if ("mep" in settings["strategies"]) != (clusters_in is not None):
        raise InputError("the mep strategy needs --clusters (and other strategies do not use it)")
    dataset = pd.read_parquet(dataset_in).sort_values("image_id", kind="stable").reset_index(drop=True)
    frame = _rows_with_clusters(dataset, clusters_in)
    frame["class_name"] = prompts.class_names(frame, settings["classes"])
    frame["prompt"] = prompts.build(frame, labels, settings)
    frame["prompt_id"] = prompts.prompt_ids(frame["prompt"])
    frame["selected"] = frame["prompt"].notna()
    balance, design = settings["balance"], None
    if balance["enabled"]:
        train = frame["selected"] & (frame["split"] == "train")
        classes = frame.loc[train, "class_name"]
        if settings["classes"]["column"] is None:
            classes = classes.fillna("all images")
        subset, design = balancing.balanced_subset(
            classes,
            frame.loc[train, "prompt"],
            balance["min_prompts_per_class"],
            balance["max_images"],
            settings["seed"],
        )
        frame.loc[train, "selected"] = subset
    table = frame[list(PROMPT_COLUMNS)].astype(PROMPT_COLUMNS)
    inputs = {"dataset": dataset_in} | ({"clusters": clusters_in} if clusters_in else {})
    weights = read_parquet_meta(clusters_in)["weights"] if clusters_in else "none"
    seeds = {"balance": settings["seed"]} if balance["enabled"] else {}
    meta = provenance(settings, seeds=seeds, inputs=inputs, weights=weights)
    for split, path in outputs.items():
        write_parquet(path, table[table["split"] == split].reset_index(drop=True), meta)
    write_json(report_out, {"provenance": meta} | prompt_report(table, design, list(outputs)))


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


def _link_or_copy(source: str, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _json_value(value: Any) -> Any:
    if prompts.is_missing(value):
        return None
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    return value


def export_imagefolder(prompts_in: str, dataset_in: str, labels: Sequence[str], out_dir: str) -> None:
    """The selected training images as a diffusers/HF image folder with ``metadata.jsonl``.

    Images are named ``000000.png``, ... in ``image_id`` order next to ``metadata.jsonl``; a column that is
    empty for every image (``cluster`` without ``mep``, ``class_name`` without ``prompts.classes``) is left
    out so that every key has one type.
    """
    table = pd.read_parquet(prompts_in)
    table = table[table["selected"]].reset_index(drop=True)
    label_columns = [label_column(name) for name in labels]
    dataset = pd.read_parquet(dataset_in, columns=["image_id", *label_columns])
    rows = table.merge(dataset, on="image_id", how="left", validate="one_to_one")
    keys = ["image_id", "prompt_id", "cluster", "class_name", *label_columns]
    keys = [k for k in keys if rows[k].notna().any()]
    with atomic_directory(out_dir) as tmp:
        lines = []
        for i, row in enumerate(rows.to_dict("records")):
            name = f"{i:06d}{Path(row['image']).suffix}"
            _link_or_copy(row["image"], tmp / name)
            record = {"file_name": name, "text": row["prompt"]} | {k: _json_value(row[k]) for k in keys}
            lines.append(json.dumps(record))
        (tmp / "metadata.jsonl").write_text("".join(f"{line}\n" for line in lines))
        meta = provenance({"labels": list(labels)}, inputs={"prompts": prompts_in, "dataset": dataset_in})
        write_json(tmp / "synthmed_provenance.json", {"provenance": meta, "images": len(rows)})
