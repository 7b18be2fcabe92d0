"""Seeds derived from a global seed and a key, so any piece of work can be redone alone.

A training micro-step, or one synthetic image, gets its own seed from ``(global seed, *key)`` through
``numpy.random.SeedSequence`` (a hash with good mixing, stable across numpy versions and platforms). Work
seeded this way needs no saved random state: re-running micro-step ``m`` or image ``(prompt, index)`` alone
draws exactly the numbers an uninterrupted run drew.
"""

from __future__ import annotations

import hashlib

import numpy as np


def text_key(text: str) -> int:
    """A stable 64-bit integer for a string key (e.g. a prompt id), independent of ``PYTHONHASHSEED``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def derive_seed(seed: int, *key: int) -> int:
    """The 63-bit seed of item ``key`` under global seed ``seed`` (``SeedSequence([seed, *key])``)."""
    state = np.random.SeedSequence([seed, *key]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
