"""Options several commands share, defined once so their flags, help and defaults read the same everywhere.

Every whole-number option is made by :func:`bounded_int`: its bound is declared once, where the option is, as
the same :class:`~hftool.schemas.generate.Bound` the typed settings use; ``--help`` shows it (``[x>=1]``)
and parsing holds the value to it with hftool's one-line error, before the command runs.
"""

from __future__ import annotations

from typing import Any

import typer

from hftool.data.squad_windows import DOC_STRIDE, MAX_ANSWER_LENGTH, MAX_LENGTH, MIN_MAX_LENGTH
from hftool.errors import HftoolError
from hftool.schemas.generate import Bound


class BoundedInt:
    """Typer's parser for one whole-number flag: the typed text as an int held to ``bound``, or an
    ``HftoolError`` (``--batch-size=0 must be at least 1``) instead of click's usage box."""

    __name__ = "integer"  # what Typer calls the type

    def __init__(self, flag: str, bound: Bound):
        self.flag = flag
        self.bound = bound

    def __call__(self, value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise HftoolError(f"{self.flag}={value} is not a whole number") from None
        if not self.bound.holds(number):
            raise HftoolError(f"{self.flag}={number} {self.bound.why}")
        return number


def bounded_int(default: Any, *flags: str, low: int, high: int | None = None, why: str | None = None,
                **options: Any) -> Any:
    """A Typer option for a whole number from ``low`` (to ``high``); ``why`` replaces the generated wording."""
    if why is None:
        why = f"must be at least {low}" if high is None else f"must be from {low} to {high}"
    parser = BoundedInt(flags[0], Bound(why, low=low, high=high))
    return typer.Option(default, *flags, min=low, max=high, parser=parser, **options)


RECIPE_HELP = "Recipe name (see 'hftool recipes ls') or path to a YAML recipe."
RESUME = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint.")
OVERWRITE = typer.Option(False, "--overwrite",
                         help="Replace the files an earlier hftool run wrote in the output folder (others are "
                              "never touched: hftool refuses, naming them).")
OVERWRITE_FILE = typer.Option(False, "--overwrite", help="Replace the output file when it already exists.")
STRICT_RESUME = typer.Option(False, "--strict-resume",
                             help="Refuse to resume when batch size, seed or world size changed, or when the "
                                  "newest checkpoint fails verification (instead of falling back to an older one).")
NUM_PROCESSES = bounded_int(1, "--num-processes", "-n", low=1,
                            help="Data-parallel processes: one per GPU, or on the CPU over gloo.")
MAX_EXAMPLES_HELP = "Score the first N only."


# Extractive question answering (answer, evaluate squad): the window defaults are the recipes' (squad_windows).
QA_MODEL = typer.Option(..., "--model", "-m",
                        help="Question-answering model: folder, Hub id, alias or package:<module>.")
QA_MAX_LENGTH = bounded_int(MAX_LENGTH, "--max-length", low=MIN_MAX_LENGTH,
                            help="Tokens per window (question + context).")
QA_DOC_STRIDE = bounded_int(DOC_STRIDE, "--doc-stride", low=0, help="Context tokens shared by consecutive windows.")
QA_MAX_ANSWER_LENGTH = bounded_int(MAX_ANSWER_LENGTH, "--max-answer-length", low=1, help="Longest answer, in tokens.")
