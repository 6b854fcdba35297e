"""Options several commands share, defined once so their flags, help and defaults read the same everywhere."""

from __future__ import annotations

import typer

from hftool.data.squad_windows import DOC_STRIDE, MAX_ANSWER_LENGTH, MAX_LENGTH

RECIPE_HELP = "Recipe name (see 'hftool recipes ls') or path to a YAML recipe."
RESUME = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint.")
OVERWRITE = typer.Option(False, "--overwrite",
                         help="Replace the files an earlier hftool run wrote in the output folder (others are "
                              "never touched: hftool refuses, naming them).")
OVERWRITE_FILE = typer.Option(False, "--overwrite", help="Replace the output file when it already exists.")
STRICT_RESUME = typer.Option(False, "--strict-resume",
                             help="Refuse to resume when batch size, seed or world size changed, or when the "
                                  "newest checkpoint fails verification (instead of falling back to an older one).")
NUM_PROCESSES = typer.Option(1, "--num-processes", "-n",
                             help="Data-parallel processes: one per GPU, or on the CPU over gloo.")

# Extractive question answering (answer, evaluate squad): the window defaults are the recipes' (squad_windows).
QA_MODEL = typer.Option(..., "--model", "-m",
                        help="Question-answering model: folder, Hub id, alias or package:<module>.")
QA_MAX_LENGTH = typer.Option(MAX_LENGTH, "--max-length", help="Tokens per window (question + context).")
QA_DOC_STRIDE = typer.Option(DOC_STRIDE, "--doc-stride", help="Context tokens shared by consecutive windows.")
QA_MAX_ANSWER_LENGTH = typer.Option(MAX_ANSWER_LENGTH, "--max-answer-length", help="Longest answer, in tokens.")
