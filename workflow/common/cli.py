"""Shared behaviour of the command-line entry points in ``scripts/``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from workflow.common.errors import InputError


def run(step: Callable[[], object]) -> None:
    """Run one workflow step; bad input ends the process with the message alone, not a traceback.

    An :class:`~workflow.errors.InputError` already says which file, row or config key is wrong and what
    to do, so it is printed as ``error: ...`` on stderr (which Snakemake keeps in the rule's log) and the
    process exits with status 2. Any other exception is a bug and keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        step()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
