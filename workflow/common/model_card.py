"""The model card synthmed writes next to every model it builds or trains, and the one reader of it.

A model folder (a diffusers pipeline, a transformers model, a trained generator) holds ``synthmed_model.json``
saying what it is and, always, which weights it holds in plain words (``weights``), e.g. ``random-init tiny SD
(demo; random weights, not a trained model)`` or ``fine-tuned (full) from pretrained runwayml/...``. Every
output made with a model copies that phrase into its provenance (:func:`weights_label`), so random or demo
weights are never mistaken for pretrained ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workflow.common.files import write_json

CARD = "synthmed_model.json"


def write_card(folder: str | os.PathLike[str], card: Mapping[str, Any]) -> None:
    """Write the card of the model in ``folder``; ``card`` must say which ``weights`` it holds."""
    if "weights" not in card:
        raise ValueError("a model card must name the model's weights")
    write_json(Path(folder) / CARD, dict(card))


def read_card(location: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The card of the model at ``location``; ``{}`` for a hub id or a folder synthmed did not write."""
    if location is None:
        return {}
    card = Path(location) / CARD
    return json.loads(card.read_text()) if card.is_file() else {}


def weights_label(location: str) -> str:
    """Plain words for provenance: the card's ``weights``, else where pretrained weights come from."""
    card = read_card(location)
    if "weights" in card:
        return str(card["weights"])
    if Path(location).is_dir():
        return f"pretrained weights from local folder {location}"
    return f"pretrained weights from the Hugging Face hub: {location}"
