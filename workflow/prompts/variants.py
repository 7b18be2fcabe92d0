"""Prompt variants: the captions of one study's images under a sub-list of ``prompts.strategies``.

A study compares generators trained on different captions of the *same* images (MEP-LDM's arm: the
class-conditional prompt "Histology image of cancer tissue" against the morphology-enriched "Histology image
of cancer tissue, morphology type five", Osorio et al. 2024, section 2.3). The tables of all strategies,
``results/prompts/{split}.parquet``, decide which images are selected (outliers, balancing); a variant keeps
exactly that selection and re-captions it with its strategies, so the arms differ in their text only.

A variant is named by its strategies in the study's order, joined by ``+`` (``labels``, ``labels+mep``); the
variant of every strategy is the main tables themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

PROMPTS = "results/prompts"
SPLITS = ("train", "val", "test")


def variant_name(strategies: Sequence[str]) -> str:
    """The variant's name: its strategies joined by ``+``."""
    return "+".join(strategies)


def prompts_table(variant: str, study_strategies: Sequence[str], split: str) -> str:
    """The prompts table of ``split`` under ``variant`` (the main table for the variant of every strategy)."""
    if variant == variant_name(study_strategies):
        return f"{PROMPTS}/{split}.parquet"
    return f"{PROMPTS}/variants/{variant}/{split}.parquet"


def variant_strategies(variant: str) -> list[str]:
    """The strategies of ``variant`` (inverse of :func:`variant_name`)."""
    return variant.split("+")
