"""Which counterfactuals to make: the edit plan (rule ``plan_edits``), and where the edited sets are.

**Images.** Up to ``editing.max_images`` images of ``editing.split`` (default ``test``) that have a caption,
drawn without replacement with ``editing.seed`` (all of them when null), sorted by image id.

**Edits.** Every image gets every edit of ``editing.edits``: ``remove`` a finding (its label becomes 0),
``add`` a finding (1), or ``set`` a demographic field (``sex``, ``age``, ``race``, ...) or a tabular field
(``tab_<field>``) to a value. With ``No Finding`` among the labels it is kept consistent as in CheXpert: an
added finding clears it, removing the last finding (Support Devices aside) sets it.

**Captions.** The source caption is the one the generator was trained on (its prompt variant's table); the
target caption is the *same prompt strategies* (:func:`workflow.prompts.strategies.build`) applied to the
edited row (same morphology cluster, same everything but the edit), so an edit is always expressible in the
model's own language. ``edit_words`` are the words that differ between the two (for prompt-to-prompt's local
blending and reweighting).

**Refused edits.** An edit that makes no sense is kept in the plan with ``status`` ``skipped`` and the reason,
and never run: adding a finding the image has, removing one it does not have (0 or unknown), setting a field
to the value it has, and an edit the captions cannot express (the strategies do not mention the field: the
target caption equals the source caption). Given the editing model's tokenizer, also an edit the text encoder
cannot see: captions equal once truncated to its ``model_max_length`` tokens, or a changed word that neither
truncated caption contains as the tokenizer splits it (past the limit, or unknown), which prompt-to-prompt
could not place. A finding or field the dataset does not have is a config error.

**Ground truth.** With ``editing.ground_truth`` (the demo phantoms' ``counterfactuals.csv``: the same patient
and acquisition noise rendered with one finding switched), an edit that switches the same finding the same way
gets the true counterfactual's path in ``true_counterfactual`` (and the phantom's original render in
``true_source``), measured against in :mod:`workflow.editing.soundness`. Paths are matched resolved (absolute,
symbolic links followed) on both sides, so a relative dataset path and the csv's own root meet.

**Seeds, batches, shards.** Each planned edit's seed is derived from (``editing.seed``, image id, edit); edits
to run are batched by ``batch_size`` in plan order and whole batches are dealt to ``shards`` jobs in
contiguous runs (as the diffusion stage's sampling plan). A method call gets every edit's own seed
(:mod:`workflow.editing.methods`: ``sdedit`` and LEDITS++ draw each image's noise from its edit's seed), so an
edit's pixels depend neither on its batch nor on the number of shards, and any shard re-run gives the same
pixels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow.common import manifest
from workflow.common.errors import InputError
from workflow.common.seeding import derive_seed, text_key
from workflow.diffusion.generators import Generator, generators
from workflow.editing.captions import word_changes
from workflow.editing.methods import METHODS
from workflow.editing.settings import Edit, PlanSettings
from workflow.prompts import strategies
from workflow.prompts.settings import PromptSettings

COUNTERFACTUALS = "results/counterfactuals"
NO_FINDING, DEVICES = "No Finding", "Support Devices"
EDITED, SKIPPED = "edited", "skipped"
GROUND_TRUTH_COLUMNS = ("Path", "Source Path", "Finding", "Value")


def counterfactuals_dir(method: str) -> str:
    """Where method ``method``'s counterfactual set is (``manifest.parquet``, ``soundness.json``, images)."""
    return f"{COUNTERFACTUALS}/{method}"


def counterfactual_manifest(method: str) -> str:
    """The manifest of method ``method``'s counterfactual images."""
    return f"{counterfactuals_dir(method)}/manifest.parquet"


def inversions_dir() -> str:
    """The inversion cache every method's ``edit_images`` jobs share (``editing.cache_inversions``)."""
    return f"{COUNTERFACTUALS}/inversions"


def plan_file() -> str:
    """The edit plan, shared by every method."""
    return f"{COUNTERFACTUALS}/plan.parquet"


def editing_methods(config: Mapping[str, Any]) -> list[str]:
    """The study's editing methods (validated ``config``), none when ``editing.enabled`` is false.

    Raises:
        InputError: for a method the schema knows but :data:`workflow.editing.methods.METHODS` does not
            register (yet), or for colour images (``preprocess.color: rgb``: the edits are measured and
            written in grayscale, PRISM's chest X-rays), before any job runs.
    """
    editing = config["editing"]
    if not editing["enabled"]:
        return []
    if config["preprocess"]["color"] == "rgb":
        raise InputError(
            "editing.enabled: counterfactual editing measures and writes grayscale images (chest X-rays); "
            "preprocess.color is rgb, whose colour the edits would drop; set editing.enabled false or "
            "preprocess.color grayscale"
        )
    missing = [m for m in editing["methods"] if m not in METHODS]
    if missing:
        raise InputError(f"editing.methods: {missing} are not available; available: {sorted(METHODS)}")
    return list(editing["methods"])


def editing_generator(config: Mapping[str, Any]) -> Generator:
    """The generator whose fine-tuned model edits: ``editing.generator``, default the study's first."""
    study = {name: g for name, g in generators(config).items() if g.kind == "sd"}
    if not study:
        raise InputError("editing: the study has no Stable Diffusion generator to edit with (kind: sd)")
    name = config["editing"]["generator"] or next(iter(study))
    if name not in study:
        raise InputError(
            f"editing.generator = '{name}' is not a Stable Diffusion generator of the study: {list(study)}"
        )
    return study[name]


def select_images(rows: pd.DataFrame, settings: PlanSettings) -> pd.DataFrame:
    """The images to edit: captioned rows of ``settings.split``, at most ``max_images``, drawn with
    ``seed``."""
    chosen = rows[(rows["split"] == settings.split) & rows["prompt"].notna()].sort_values("image_id")
    if chosen.empty:
        raise InputError(f"editing.split = '{settings.split}' has no captioned images to edit")
    if settings.max_images is not None and len(chosen) > settings.max_images:
        rng = np.random.default_rng(derive_seed(settings.seed, text_key("editing images")))
        chosen = chosen.iloc[np.sort(rng.choice(len(chosen), settings.max_images, replace=False))]
    return chosen.reset_index(drop=True)


def field_column(field: str, columns: Sequence[str]) -> str:
    """The dataset column a ``set`` edit changes: demographic field ``field`` or tabular ``tab_<field>``."""
    tabular = [c for c in columns if c.startswith(manifest.TABULAR_PREFIX)]
    if field in strategies.DEMOGRAPHIC_FIELDS and field in columns:
        return field
    if manifest.tabular_column(field) in tabular:
        return manifest.tabular_column(field)
    raise InputError(
        f"editing.edits: field '{field}' is neither a demographic field "
        f"{list(strategies.DEMOGRAPHIC_FIELDS)} "
        f"nor a tabular field of the dataset {sorted(c[4:] for c in tabular)}"
    )


def _same(a: Any, b: Any) -> bool:
    if strategies.is_missing(a) or strategies.is_missing(b):
        return strategies.is_missing(a) and strategies.is_missing(b)
    return strategies.format_value(a).lower() == strategies.format_value(b).lower()


def apply_edit(
    row: Mapping[str, Any], edit: Edit, labels: Sequence[str]
) -> tuple[dict[str, Any], str | None]:
    """The edited row and, when the edit makes no sense for this row, the reason (module docstring)."""
    edited = dict(row)
    if edit.kind == "set":
        column = field_column(edit.field, list(row))
        if _same(row[column], edit.value):
            return edited, f"{edit.field} is already {edit.value}"
        edited[column] = edit.value
        return edited, None
    if edit.finding not in labels:
        raise InputError(f"editing.edits: finding '{edit.finding}' is not in dataset.labels {list(labels)}")
    column = manifest.label_column(edit.finding)
    has = row[column] == 1.0
    if edit.kind == "add" and has:
        return edited, f"the image already has {edit.finding}"
    if edit.kind == "remove" and not has:
        known = "does not have" if row[column] == 0.0 else "has no known label for"
        return edited, f"the image {known} {edit.finding}"
    edited[column] = 1.0 if edit.kind == "add" else 0.0
    if NO_FINDING in labels and edit.finding != NO_FINDING:
        others = [
            n for n in labels if n not in (NO_FINDING, DEVICES) and edited[manifest.label_column(n)] == 1
        ]
        edited[manifest.label_column(NO_FINDING)] = 0.0 if others else 1.0
    return edited, None


def changed_words(source: str, target: str) -> list[str]:
    """The added, then the removed words of :func:`word_changes`, once each."""
    added, removed = word_changes(source, target)
    return list(dict.fromkeys(added + removed))


def edit_id(image_id: str, edit: Edit) -> str:
    """A planned edit's id, safe as a file name: the image id and the edit, non-word characters as ``_``."""
    return re.sub(r"[^\w.=-]+", "_", f"{image_id}/{edit.name}")


def unseen_edit(tokenizer: Any, source: str, target: str, words: Sequence[str]) -> str | None:
    """Why the text encoder cannot see the edit ``source`` -> ``target`` (module docstring), or None.

    Args:
        tokenizer: the editing model's tokenizer (``model_max_length`` tokens reach the text encoder).
        words: the edit words (:func:`changed_words`).
    """
    from workflow.editing.p2p import token_ids, word_positions

    limit = tokenizer.model_max_length
    source_ids, target_ids = token_ids(tokenizer, [source, target])
    if bool((source_ids == target_ids).all()):
        return f"the captions differ only past the tokenizer's {limit} tokens"
    lost = [
        w
        for w in words
        if not word_positions(tokenizer, source_ids, w) and not word_positions(tokenizer, target_ids, w)
    ]
    if lost:
        return (
            f"edit words {lost} are in neither caption's first {limit} tokens as the tokenizer splits them "
            "(truncated or unknown)"
        )
    return None


def plan(
    rows: pd.DataFrame,
    labels: Sequence[str],
    prompt_settings: PromptSettings,
    settings: PlanSettings,
    truth: pd.DataFrame | None = None,
    tokenizer: Any = None,
) -> pd.DataFrame:
    """One row per (image, edit): source and target captions and labels, ``status`` and ``reason``, seed,
    batch and shard, and the true counterfactual where ``truth`` has it (module docstring).

    Args:
        rows: the generator's prompts table of every split joined with the dataset rows (``prompt``,
            ``cluster``, ``class_name``, labels, demographics, ``path``).
        truth: :func:`ground_truth` or None.
        tokenizer: the editing model's tokenizer, to refuse edits its text encoder cannot see; None: no
            such check.
    """
    if not settings.edits:
        raise InputError("editing.edits is empty: list the edits to make (remove, add or set)")
    images = select_images(rows, settings)
    items = []
    for row in images.to_dict("records"):
        for edit in settings.edits:
            edited, reason = apply_edit(row, edit, labels)
            items.append((row, edited, edit, reason))
    targets = strategies.build(pd.DataFrame([e for _, e, _, _ in items]), labels, prompt_settings)
    label_columns = [manifest.label_column(n) for n in labels]
    records = []
    for (row, edited, edit, reason), target in zip(items, targets, strict=True):
        words = changed_words(row["prompt"], target)
        if reason is None and target == row["prompt"]:
            reason = f"the captions ({'+'.join(prompt_settings.strategies)}) do not express '{edit.name}'"
        if reason is None and tokenizer is not None:
            reason = unseen_edit(tokenizer, row["prompt"], target, words)
        record = {k: row[k] for k in ("image_id", "patient_id", "split", "image", "path")}
        record["mask"] = row.get("mask")  # the preprocessed segmentation mask, when the dataset has one
        record |= {
            "edit_id": edit_id(row["image_id"], edit),
            "edit": edit.name,
            "edit_kind": edit.kind,
            "edit_target": edit.finding if edit.kind != "set" else edit.field,
            "source_prompt": row["prompt"],
            "target_prompt": target,
            "edit_words": words,
            "status": SKIPPED if reason else EDITED,
            "reason": reason,
            "seed": derive_seed(settings.seed, text_key(row["image_id"]), text_key(edit.name)),
        }
        record |= {f"source_{c}": row[c] for c in label_columns}
        record |= {c: edited[c] for c in label_columns}
        record |= {c: edited.get(c) for c in strategies.DEMOGRAPHIC_FIELDS if c in edited}
        records.append(record)
    table = pd.DataFrame.from_records(records)
    table = _with_truth(table, truth)
    return assign_batches(table, settings)


def assign_batches(table: pd.DataFrame, settings: PlanSettings) -> pd.DataFrame:
    """``batch`` and ``shard`` of the edits to run (-1 for skipped ones), contiguous runs of whole batches."""
    run = (table["status"] == EDITED).to_numpy()
    batch = np.full(len(table), -1)
    batch[run] = np.arange(run.sum()) // settings.batch_size
    n_batches = int(batch.max()) + 1 if run.any() else 0
    shard = np.where(run, (batch * settings.shards) // max(n_batches, 1), -1)
    return table.assign(batch=batch, shard=shard)


def ground_truth(path: str) -> pd.DataFrame:
    """The phantom generator's ``counterfactuals.csv`` with absolute-free paths resolved against its dataset
    root's parent (where ``Path`` and ``Source Path`` are relative to): ``source``, ``finding``, ``value``,
    ``counterfactual``."""
    table = pd.read_csv(path, dtype=str)
    missing = [c for c in GROUND_TRUTH_COLUMNS if c not in table]
    if missing:
        raise InputError(
            f"{path} (editing.ground_truth): columns {missing} are missing; expected {GROUND_TRUTH_COLUMNS}"
        )
    root = Path(path).parent.parent
    return pd.DataFrame(
        {
            "source": [_resolved(root / p) for p in table["Source Path"]],
            "finding": table["Finding"],
            "value": table["Value"].astype(float),
            "counterfactual": [_resolved(root / p) for p in table["Path"]],
        }
    )


def _resolved(path: str | Path) -> str:
    return str(Path(path).resolve())


def _with_truth(table: pd.DataFrame, truth: pd.DataFrame | None) -> pd.DataFrame:
    table["true_counterfactual"] = pd.Series(None, index=table.index, dtype="string")
    table["true_source"] = pd.Series(None, index=table.index, dtype="string")
    if truth is None:
        return table
    known = {
        (_resolved(s), f, v): c
        for s, f, v, c in truth[["source", "finding", "value", "counterfactual"]].itertuples(index=False)
    }
    for i, row in table.iterrows():
        if row["edit_kind"] == "set" or row["status"] != EDITED:
            continue
        value = 1.0 if row["edit_kind"] == "add" else 0.0
        found = known.get((_resolved(row["path"]), row["edit_target"], value))
        if found is not None:
            table.loc[i, ["true_counterfactual", "true_source"]] = [found, _resolved(row["path"])]
    return table
