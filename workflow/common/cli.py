"""The one shape of every script in ``scripts/``: a subcommand per rule, calling the stage function so named.

``scripts/<stage>.py`` lists its rules as :class:`Command` s and calls :func:`main` with the stage module
(``workflow.<stage>.stage``). The subcommand is the rule's name, each ``--option`` is a keyword argument of
the function of the same name (dashes become underscores), and ``--settings`` arrives as the stage's typed
settings object. So ``python -m scripts.prompts cluster_embeddings --embeddings E ...`` runs
``workflow.prompts.stage.cluster_embeddings(embeddings="E", ...)``, and nothing else happens in a script.

The stage module is imported only after the arguments are parsed, and only for the command that runs:
stages import torch lazily, so light steps start in about a second.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workflow.common.errors import InputError


@dataclass(frozen=True)
class Arg:
    """One argument of a command.

    Attributes:
        name: ``--option`` (a keyword argument) or a bare name (positional, one or more values: a list).
        convert: applied to the text (``int``, ``float``, ``json.loads``, a settings class's ``from_json``).
        help: what it is.
        optional: may be left out (the function then gets None).
        many: an option taking one or more values (a list), as positionals always do.
    """

    name: str
    convert: Callable[[str], Any] = str
    help: str = ""
    optional: bool = False
    many: bool = False


GPUS = Arg("--gpus", int, "GPUs of the job (its resources.gpu; 0: the CPU)")
"""The GPU count of a GPU rule's job, which every GPU rule passes to its function."""


@dataclass(frozen=True)
class Command:
    """A rule's subcommand: its name (= the rule's and the stage function's) and arguments."""

    rule: str
    help: str
    args: tuple[Arg, ...] = field(default_factory=tuple)


def command(rule: str, help: str, *args: Arg | str) -> Command:
    """A :class:`Command`; a plain string is a required text option (``"--out"``)."""
    return Command(rule, help, tuple(a if isinstance(a, Arg) else Arg(a) for a in args))


def parser_for(description: str, commands: Sequence[Command]) -> argparse.ArgumentParser:
    """The argument parser of a script: one subparser per command; values stay text until :func:`main`."""
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="rule", required=True)
    for cmd in commands:
        p = sub.add_parser(cmd.rule, help=cmd.help)
        for arg in cmd.args:
            if arg.name.startswith("--"):
                nargs = "+" if arg.many else None
                p.add_argument(arg.name, required=not arg.optional, nargs=nargs, help=arg.help)
            else:
                p.add_argument(arg.name, nargs="+", help=arg.help)
    return parser


def main(stage: str, description: str, commands: Sequence[Command], argv: list[str] | None = None) -> None:
    """Parse ``argv`` and run ``<stage>.<rule>(**arguments)`` under :func:`run`."""
    args = parser_for(description, commands).parse_args(argv)
    cmd = next(c for c in commands if c.rule == args.rule)

    def step() -> object:
        kwargs = {}
        for arg in cmd.args:
            name = arg.name.lstrip("-").replace("-", "_")
            text = getattr(args, name)
            kwargs[name] = None if text is None else _converted(arg, text)
        return getattr(importlib.import_module(stage), cmd.rule)(**kwargs)

    run(step)


def _converted(arg: Arg, text: str | list[str]) -> Any:
    if isinstance(text, list):
        return [arg.convert(t) for t in text]
    return arg.convert(text)


def run(step: Callable[[], object]) -> None:
    """Run one workflow step; bad input ends the process with the message alone, not a traceback.

    An :class:`~workflow.common.errors.InputError` already says which file, row or config key is wrong and
    what to do, so it is printed as ``error: ...`` on stderr (which Snakemake keeps in the rule's log) and the
    process exits with status 2. Any other exception is a bug and keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        step()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
