"""Progress of long jobs (latent caching, fine-tuning, sampling, classifier training, feature extraction) in
their logs, readable in a Slurm log file.

On a terminal a tqdm bar redrawn at most once a second. Anywhere else (a rule's log file, Slurm's output
file) tqdm's own line, with count, rate and ETA, written as one plain line every ``interval`` seconds, and
once at the end: no carriage returns, so ``tail -f`` and ``less`` show a readable history.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from typing import TextIO, TypeVar

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
"""Seconds between two progress lines in a log file."""

T = TypeVar("T")


class LineWriter(io.TextIOBase):
    """A stream that writes each of tqdm's refreshes as one whole line (carriage returns dropped)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    interval: float = LOG_INTERVAL_S,
    stream: TextIO | None = None,
    disable: bool = False,
) -> tqdm:
    """A tqdm progress bar over ``iterable`` (or updated by hand up to ``total``) on ``stream`` (stderr):
    a bar on a terminal, one line every ``interval`` seconds otherwise (module docstring). ``disable`` for
    the processes of a data-parallel run other than the main one."""
    stream = stream or sys.stderr
    terminal = stream.isatty()
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        file=stream if terminal else LineWriter(stream),
        mininterval=1.0 if terminal else interval,
        miniters=1,
        smoothing=0.1,
        dynamic_ncols=terminal,
        ascii=not terminal,
        disable=disable,
    )
