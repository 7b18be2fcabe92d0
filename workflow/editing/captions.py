"""How two captions differ in words: the edit words of the plan (:mod:`workflow.editing.edits`), the CLIP
filter's added and removed words and LEDITS++'s edit concepts (:mod:`workflow.editing.ledits`)."""

from __future__ import annotations

import re


def word_changes(source: str, target: str) -> tuple[list[str], list[str]]:
    """The words ``target`` adds (not in ``source``) and those it removes (in ``source``, not in ``target``),
    compared without case, in order, once each, spelled as their caption writes them: prompt-to-prompt finds
    them among the caption's tokens, and a case-sensitive tokenizer (the tiny SD's) knows ``Cardiomegaly``
    apart from ``cardiomegaly``."""

    def split(text: str) -> list[str]:
        return re.findall(r"[\w'-]+", text)

    old, new = split(source), split(target)
    old_keys, new_keys = {w.lower() for w in old}, {w.lower() for w in new}
    added = [w for w in new if w.lower() not in old_keys]
    removed = [w for w in old if w.lower() not in new_keys]
    return list(dict.fromkeys(added)), list(dict.fromkeys(removed))
