"""Generic switches several commands share (recipe, resume, overwrite, model), worded once.

Settings with a default and a bound are not declared here: they are schema fields (:mod:`hftool.schemas`),
made options by :mod:`hftool.cli.setting_options`.
"""

from __future__ import annotations

import typer

RECIPE_HELP = "Recipe name (see 'hftool recipes ls') or path to a YAML recipe."
RESUME = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint.")
OVERWRITE = typer.Option(False, "--overwrite",
                         help="Replace the files an earlier hftool run wrote in the output folder (others are "
                              "never touched: hftool refuses, naming them).")
OVERWRITE_FILE = typer.Option(False, "--overwrite", help="Replace the output file when it already exists.")
STRICT_RESUME = typer.Option(False, "--strict-resume",
                             help="Refuse to resume when batch size, seed or world size changed, or when the "
                                  "newest checkpoint fails verification (instead of falling back to an older one).")
QA_MODEL = typer.Option(..., "--model", "-m",
                        help="Question-answering model: folder, Hub id, alias or package:<module>.")
