"""Long training jobs that the batch system ends early: save a checkpoint on SIGTERM, stop, resume next time.

Slurm ends a job at its time limit (state TIMEOUT) and on ``scancel`` the same way: SIGTERM to every
process of the job, then SIGKILL ``KillWait`` seconds later (slurm.conf; 30 s by default). A
training loop runs inside :func:`stop_on_signal`; the signal only sets a flag, the loop finishes the step
it is in, saves a checkpoint (:mod:`workflow.common.checkpoints`) and calls :meth:`StopRequest.stop`,
which ends the process with status 128 + the signal's number (143 for SIGTERM, as a shell reports a
process killed by it). Snakemake sees the job fail, submits it again (``retries``), and the next attempt
resumes from that checkpoint.

Snakemake deletes a job's log before each attempt, so :func:`attempt_log` keeps the log records of every
attempt in the checkpoint folder and writes those of the earlier attempts at the top of the current log.

The rules of the training jobs start with ``trap '' TERM``: the shell and ``accelerate launch`` between
Snakemake and the training process then ignore SIGTERM (Python keeps an inherited "ignore") and wait for it
instead of dying at once; the training process installs its own handler here.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM,)
"""What Slurm sends before it kills a job (time limit, ``scancel``; earlier with ``--signal=TERM@<s>``)."""

ATTEMPT_LOG = "attempts.log"


class Stopped(SystemExit):
    """Training stopped on a signal after saving a checkpoint; exits with 128 + the signal's number."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(128 + signum)
        self.signum, self.step = signum, step


@dataclass
class StopRequest:
    """Whether a stop signal arrived (true once one did), and which."""

    signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def signal(self) -> signal.Signals:
        """The signal received (SIGTERM on a process stopping because another process of the job got one)."""
        return signal.Signals(self.signum or signal.SIGTERM)

    def record(self, step: int) -> dict[str, object]:
        """What a checkpoint keeps of this stop: the step, the signal and the Slurm job that received it."""
        return {"step": step, "signal": self.signal.name, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}

    def stop(self, step: int, checkpoint: Path | None) -> NoReturn:
        """End the process, ``checkpoint`` of ``step`` saved (``None`` where another process saves)."""
        if checkpoint is not None:
            log.warning(
                "%s received: stopped after step %d and saved %s; the next attempt resumes from it",
                self.signal.name,
                step,
                checkpoint,
            )
        raise Stopped(self.signal, step)


@contextmanager
def stop_on_signal(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Within the block, ``signals`` set the yielded :class:`StopRequest` instead of ending the process; the
    previous handlers come back after it. Only the main thread may use it (Python's signal rule)."""
    request = StopRequest()

    def handler(signum: int, frame: object) -> None:
        request.signum = signum

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield request
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextmanager
def attempt_log(folder: str | Path) -> Iterator[None]:
    """Keep this attempt's log records in ``folder/attempts.log`` (appended), after writing those of the
    earlier attempts to stderr, so that the log of the attempt that finishes holds every attempt's. The file
    is removed when the block ends without an exception (its records are in that log now)."""
    path = Path(folder) / ATTEMPT_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        sys.stderr.write(
            f"--- earlier attempts of this job (from {path}) ---\n{path.read_text()}--- now ---\n"
        )
        sys.stderr.flush()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
    path.unlink()
