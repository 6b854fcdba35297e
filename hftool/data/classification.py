"""Sequence-classification data: CSV / TSV / JSONL files with a text column, an optional second text column
(sentence pairs, as MNLI or QQP) and a label column, or a Hub dataset and config (``glue``/``sst2``).

Labels are kept as strings (names or integers as written); :func:`label_list` fixes their order, which
becomes the model's ``id2label``. Every problem names the file and line.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hftool.data.files import read_input_text
from hftool.data.splits import SplitsConfig, load_hub_split
from hftool.errors import HftoolError

MIN_MAX_LENGTH = 2  # a special token and one of the text's

# What a message tells the user to change for each column: the recipe key (finetune), or the flag a command
# without a recipe took it from (evaluate, classify).
RECIPE_COLUMNS = {"text_column": "data.text_column", "text_pair_column": "data.text_pair_column",
                  "label_column": "data.label_column"}
FLAG_COLUMNS = {"text_column": "--text-column", "text_pair_column": "--text-pair-column",
                "label_column": "--label-column"}


def change(setting: str) -> str:
    """How a message asks for another value: ``pass --flag`` or ``set data.key``."""
    return f"pass {setting}" if setting.startswith("-") else f"set {setting}"


@dataclass(frozen=True)
class TextExample:
    """One text (or text pair) and its label as written; ``where`` is ``file:line`` for messages."""

    text: str
    label: str | None
    where: str
    text_pair: str | None = None


@dataclass
class ClassifyDataConfig(SplitsConfig):
    """Where the examples come from (.csv, .tsv or .jsonl files, or a Hub dataset) and which columns hold them
    (the ``data:`` section of a recipe)."""

    text_column: str = "sentence"
    text_pair_column: str | None = None  # e.g. sentence2 / hypothesis for pair tasks
    label_column: str = "label"
    label_names: list[str] | None = None  # names for integer labels 0..n-1 (e.g. [negative, positive])
    pad_to_max_length: bool = False  # run_glue's default pads every batch to max_length; hftool pads to the batch
    matthews: bool = False  # also report Matthews correlation (CoLA's metric)

    def validate(self) -> None:
        if self.max_length < MIN_MAX_LENGTH:
            raise HftoolError(f"data.max_length={self.max_length} must be at least {MIN_MAX_LENGTH}")
        super().validate()


def warn_main(message: str) -> None:
    """Data warnings from the main process only (every process reads the data)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def _rows(path: Path, flag: str):
    """``(line number, record dict, header)`` for a CSV, TSV or JSONL file."""
    if not path.exists() or path.is_dir():
        raise HftoolError(f"{flag} {path}: no such file")
    suffix = path.suffix.lower()
    text = read_input_text(path, f"{flag} {path}")
    if suffix in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise HftoolError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise HftoolError(f"{path}:{number}: expected a JSON object per line")
            yield number, record, None
        return
    if suffix not in (".tsv", ".csv", ".txt"):
        raise HftoolError(f"{flag} {path}: unknown format '{suffix}'; use .csv, .tsv or .jsonl")
    delimiter = "," if suffix == ".csv" else "\t"
    # GLUE's TSV files hold unbalanced quotes inside sentences: read tab-separated files without quoting.
    quoting = csv.QUOTE_MINIMAL if suffix == ".csv" else csv.QUOTE_NONE
    reader = csv.reader(text.splitlines(), delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if header is None:
        return
    for number, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise HftoolError(f"{path}:{number}: {len(row)} fields, the header has {len(header)} "
                              f"({', '.join(header)})")
        yield number, dict(zip(header, row, strict=True)), header


def _field(record: dict, column: str, where: str, columns: Sequence[str], setting: str) -> str:
    if column not in record:
        raise HftoolError(f"{where}: no column '{column}' (columns: {', '.join(columns)}); {change(setting)}")
    value = record[column]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise HftoolError(f"{where}: column '{column}' is {type(value).__name__}, expected text")
    return str(value)


def read_classification_file(path: str | Path, flag: str, data: ClassifyDataConfig, need_labels: bool = True,
                             warn: Callable[[str], None] = warn_main,
                             settings: Mapping[str, str] = RECIPE_COLUMNS) -> list[TextExample]:
    """Examples of a CSV/TSV/JSONL file; an empty text is skipped with a count, a missing column or an
    empty file is an error naming the file (and line) and the setting to change (``settings``: column field
    -> recipe key or flag)."""
    path = Path(path).expanduser()
    examples: list[TextExample] = []
    empty = 0
    for number, record, header in _rows(path, flag):
        where = f"{path}:{number}"
        columns = header or list(record)
        text = _field(record, data.text_column, where, columns, settings["text_column"])
        pair = (_field(record, data.text_pair_column, where, columns, settings["text_pair_column"])
                if data.text_pair_column else None)
        label = (_field(record, data.label_column, where, columns, settings["label_column"]).strip()
                 if need_labels or data.label_column in record else None)
        if not text.strip() or (pair is not None and not pair.strip()):
            empty += 1
            continue
        if need_labels and not label:
            raise HftoolError(f"{where}: empty label in column '{data.label_column}'")
        examples.append(TextExample(text, label, where, pair))
    if empty:
        warn(f"{path}: skipped {empty} record(s) with an empty text")
    if not examples:
        raise HftoolError(f"{flag} {path}: no examples found (empty file?)")
    return examples


def read_hub_classification(data: ClassifyDataConfig, split: str) -> tuple[list[TextExample], list[str] | None]:
    """A Hub split (labels as written, integers for a ``ClassLabel``) and the ``ClassLabel``'s names."""
    dataset = load_hub_split(data, split)
    shown = data.hub_name(split)
    feature = dataset.features.get(data.label_column)
    names = list(feature.names) if hasattr(feature, "names") else None
    examples = []
    for i, row in enumerate(dataset):
        where = f"{shown} row {i}"
        text = _field(row, data.text_column, where, list(row), "data.text_column")
        pair = _field(row, data.text_pair_column, where, list(row), "data.text_pair_column") \
            if data.text_pair_column else None
        label = _field(row, data.label_column, where, list(row), "data.label_column")
        if label == "-1":  # GLUE's unlabelled test rows
            continue
        examples.append(TextExample(text, label, where, pair))
    if not examples:
        raise HftoolError(f"data.hub_dataset={shown}: no labelled examples")
    return examples, names


def label_list(examples: Sequence[TextExample], names: list[str] | None = None) -> list[str]:
    """The label set in a fixed order: integers numerically, names alphabetically, or ``names`` as given."""
    found = {e.label for e in examples}
    if names:
        return list(names)
    if all(label.lstrip("-").isdigit() for label in found):
        return sorted(found, key=int)
    return sorted(found)


def apply_label_names(examples: list[TextExample], names: list[str] | None, source: str) -> list[TextExample]:
    """Integer labels ``0..n-1`` renamed to ``data.label_names``; a label written as one of those names is
    kept (README allows names or integers)."""
    if not names:
        return examples
    renamed = []
    for e in examples:
        if e.label.isdigit() and int(e.label) < len(names):
            renamed.append(TextExample(e.text, names[int(e.label)], e.where, e.text_pair))
        elif e.label in names:
            renamed.append(e)
        else:
            raise HftoolError(f"{e.where}: label '{e.label}' is neither one of data.label_names "
                              f"({', '.join(names)}) nor an index into them, in {source}")
    return renamed


def label_ids(examples: Sequence[TextExample], label2id: dict[str, int], source: str,
              integer_labels: bool = False, label_names_setting: str | None = "data.label_names") -> list[int]:
    """Each example's label id; a label outside the model's label set names the line (and, where the command
    has one, the setting that renames labels). ``integer_labels`` (a model trained with ``data.label_names``)
    also takes the integers ``0..n-1`` the data was written with."""
    ids = []
    for e in examples:
        if integer_labels and e.label not in label2id and e.label.isdigit() and int(e.label) < len(label2id):
            ids.append(int(e.label))
            continue
        if e.label not in label2id:
            known = ", ".join(label2id)
            rename = f" or {change(label_names_setting)}" if label_names_setting else ""
            raise HftoolError(f"{e.where}: label '{e.label}' is not one the model was trained on ({known}); "
                              f"fix {source}{rename}")
        ids.append(label2id[e.label])
    return ids


def read_input_texts(path: str | Path, flag: str, text_column: str = "text") -> list[str]:
    """Texts to label: a ``.txt`` file (one text per non-empty line) or a CSV / TSV / JSONL file's
    ``text_column``."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".txt" and path.exists() and not path.is_dir():
        texts = [line for line in read_input_text(path, f"{flag} {path}").splitlines() if line.strip()]
        if not texts:
            raise HftoolError(f"{flag} {path}: no texts found (empty file?)")
        return texts
    data = ClassifyDataConfig(text_column=text_column)
    return [e.text for e in read_classification_file(path, flag, data, need_labels=False, settings=FLAG_COLUMNS)]
