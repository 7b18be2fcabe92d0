"""Prompt- and class-balanced training subset, after MEP-LDM's ``balancing`` step, for any number of classes.

MEP-LDM (Osorio et al., Diagnostics 2024; ``prompt_building/pipeline.py``) keeps the same number of images
for every prompt and for both of its two classes: it tries total sizes N = 50,000, 55,000, ... and, for
each class, the largest number n of its most frequent prompts whose n-th prompt still has more than
(N / 2) / n images; the largest N that works in both classes wins, and exactly that many images are drawn
from each of the top-n prompts of each class (seeded). Its grid starts at 50,000 (so smaller datasets
fail, seeds_spec 2.8) and it reads only label names [0] and [1].

Generalised here to C >= 1 classes and any size: for every n (prompts per class, at least
``min_prompts_per_class``), the images per prompt m is the n-th largest prompt count of the class with the
smallest one (optionally capped so that C * n * m <= ``max_images``); the (n, m) with the most images
C * n * m wins, ties going to more prompts. That is MEP's optimum without its 5,000-image grid. Within a
class, prompts are ranked by count, then by text, so the result depends only on the data and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from workflow.common.errors import InputError


@dataclass(frozen=True)
class Balance:
    """The chosen design: ``classes`` x ``prompts_per_class`` prompts with ``images_per_prompt`` each."""

    classes: tuple[str, ...]
    prompts_per_class: int
    images_per_prompt: int

    @property
    def images(self) -> int:
        return len(self.classes) * self.prompts_per_class * self.images_per_prompt


def ranked_prompts(classes: pd.Series, prompts: pd.Series) -> dict[str, pd.Series]:
    """Per class (sorted), its prompts' image counts, most frequent first (ties by prompt text)."""
    table = pd.DataFrame({"class": classes.to_numpy(), "prompt": prompts.to_numpy()})
    counts = table.groupby(["class", "prompt"]).size().rename("n").reset_index()
    ranked = {}
    for name, part in counts.groupby("class", sort=True):
        part = part.sort_values(["n", "prompt"], ascending=[False, True])
        ranked[str(name)] = pd.Series(part["n"].to_numpy(), index=part["prompt"].to_numpy())
    return ranked


def choose(ranked: dict[str, pd.Series], min_prompts: int, max_images: int | None) -> Balance:
    """The (prompts per class, images per prompt) design with the most images; see the module docstring."""
    fewest = min(len(counts) for counts in ranked.values())
    if fewest < min_prompts:
        poorest = min(ranked, key=lambda name: len(ranked[name]))
        raise InputError(
            f"prompts.balance.min_prompts_per_class = {min_prompts}, but class '{poorest}' has only {fewest} "
            "distinct prompt(s) among the training images; lower it or set prompts.balance.enabled: false"
        )
    best: Balance | None = None
    for n in range(min_prompts, fewest + 1):
        m = min(int(counts.iloc[n - 1]) for counts in ranked.values())
        if max_images is not None:
            m = min(m, max_images // (len(ranked) * n))
        candidate = Balance(tuple(ranked), n, m)
        if m >= 1 and (best is None or candidate.images >= best.images):
            best = candidate
    if best is None:
        raise InputError(
            f"prompts.balance.max_images = {max_images} is too small for {len(ranked)} class(es) x "
            f"{min_prompts} prompt(s) (prompts.balance.min_prompts_per_class)"
        )
    return best


def balanced_subset(
    classes: pd.Series, prompts: pd.Series, min_prompts: int, max_images: int | None, seed: int
) -> tuple[pd.Series, Balance]:
    """Select a subset with equal images per prompt and per class.

    Args:
        classes: class name per image (``prompts.classes``); every image needs one.
        prompts: prompt text per image, same index.
        min_prompts: ``prompts.balance.min_prompts_per_class`` (MEP-LDM: more than 10).
        max_images: ``prompts.balance.max_images`` or None for no cap.
        seed: ``prompts.seed``.

    Returns:
        A boolean Series (True = selected) aligned with ``prompts`` and the chosen design.

    Raises:
        InputError: an image has no class or no prompt, or no design meets the minimum.
    """
    if classes.isna().any():
        raise InputError(
            f"balancing needs a class for every training image, but {int(classes.isna().sum())} of "
            f"{len(classes)} have none in prompts.classes.column; choose a column with a value for every "
            "image, or set prompts.classes.column: null to balance prompts only"
        )
    if prompts.isna().any():
        raise InputError("balancing needs a prompt for every image it is given")
    ranked = ranked_prompts(classes, prompts)
    design = choose(ranked, min_prompts, max_images)
    rng = np.random.default_rng(seed)
    selected = pd.Series(False, index=prompts.index)
    for name in design.classes:
        for prompt in ranked[name].index[: design.prompts_per_class]:
            members = np.sort(prompts.index[(classes == name).to_numpy() & (prompts == prompt).to_numpy()])
            selected[rng.choice(members, size=design.images_per_prompt, replace=False)] = True
    return selected, design
