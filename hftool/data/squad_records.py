"""SQuAD v1.1 records: reading and checking question/context/answer records from files or the Hub.

Sources: the Hub dataset (``rajpurkar/squad``, the Hub's ``squad``), the official nested JSON
(``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``) or flat records, one JSON object per line
(JSONL) or a JSON list, with ``id``, ``question``, ``context`` and ``answers`` (``{"text": [...],
"answer_start": [...]}`` as on the Hub, or a list of ``{"text", "answer_start"}`` as in the official file).
Every error names the file, the record and the field. Cutting the records into windows is
:mod:`hftool.data.squad`, which re-exports these names.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from hftool.data.files import read_input_bytes
from hftool.errors import HftoolError

REQUIRED_FIELDS = ("id", "question", "context", "answers")


def warn_on_stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class QAExample:
    """One question about one context, with its gold answers (empty when only predicting)."""

    id: str
    question: str
    context: str
    answer_texts: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    title: str = ""

    def reference(self) -> dict:
        """The gold answers in the format of the ``squad`` metric."""
        return {"id": self.id, "answers": {"text": list(self.answer_texts),
                                           "answer_start": list(self.answer_starts)}}


# ---- reading and checking records -------------------------------------------------------------------------

def _field(record: dict, name: str, where: str, kind: type | tuple[type, ...]):
    if not isinstance(record, dict):
        raise HftoolError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if name not in record:
        raise HftoolError(f"{where}: missing field '{name}'")
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise HftoolError(f"{where}: field '{name}' must be {expected}, got {type(value).__name__}")
    return value


def _answers(value, where: str) -> list[tuple[str, int]]:
    """(text, answer_start) pairs from either answer layout."""
    if isinstance(value, dict):
        texts = _field(value, "text", f"{where}.answers", list)
        starts = _field(value, "answer_start", f"{where}.answers", list)
        if len(texts) != len(starts):
            raise HftoolError(f"{where}: answers has {len(texts)} texts but {len(starts)} answer_start "
                              "values")
        pairs = list(zip(texts, starts, strict=True))
    elif isinstance(value, list):
        pairs = [(_field(a, "text", f"{where}.answers[{i}]", str),
                  _field(a, "answer_start", f"{where}.answers[{i}]", int)) for i, a in enumerate(value)]
    else:
        raise HftoolError(f"{where}: field 'answers' must be a list of {{text, answer_start}} or "
                          f"{{\"text\": [...], \"answer_start\": [...]}}, got {type(value).__name__}")
    for i, (text, start) in enumerate(pairs):
        if not isinstance(text, str) or not text:
            raise HftoolError(f"{where}: answers[{i}] text must be a non-empty string")
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise HftoolError(f"{where}: answers[{i}] answer_start must be an integer >= 0, got {start!r}")
    return pairs


def parse_record(record, where: str, context: str | None = None, need_answers: bool = True,
                 title: str = "") -> QAExample:
    """Check one record and turn it into a :class:`QAExample`; errors name ``where`` and the field."""
    if not isinstance(record, dict):
        raise HftoolError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "id" in record and isinstance(record["id"], str | int) and not isinstance(record["id"], bool):
        where = f"{where} (id '{record['id']}')"
    qid = _field(record, "id", where, (str, int))
    question = _field(record, "question", where, str)
    if context is None:
        context = _field(record, "context", where, str)
    if not question.strip():
        raise HftoolError(f"{where}: field 'question' is empty")
    if not context.strip():
        raise HftoolError(f"{where}: field 'context' is empty")
    pairs = []
    if need_answers or "answers" in record:
        pairs = _answers(_field(record, "answers", where, (list, dict)), where)
    if need_answers and not pairs:
        raise HftoolError(f"{where}: field 'answers' is empty; SQuAD v1.1 questions have at least one answer "
                          "(unanswerable SQuAD v2 questions are not supported)")
    if isinstance(record.get("title"), str):
        title = record["title"]
    return QAExample(id=str(qid), question=question, context=context,
                     answer_texts=tuple(t for t, _ in pairs), answer_starts=tuple(s for _, s in pairs),
                     title=title)


def _read_json_text(path: Path, flag: str) -> str:
    try:
        raw = read_input_bytes(path, f"{flag} {path}")
    except FileNotFoundError:
        raise HftoolError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise HftoolError(f"{flag} {path}: is a folder, not a SQuAD JSON/JSONL file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HftoolError(f"{flag} {path}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
                          ) from None
    if not text.strip():
        raise HftoolError(f"{flag} {path}: the file is empty")
    return text


def _load_json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HftoolError(f"{where}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg})") from None


def _jsonl_records(path: Path, text: str, need_answers: bool) -> Iterable[QAExample]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            where = f"{path}:{number}"
            yield parse_record(_load_json(line, where), where, need_answers=need_answers)


def _is_jsonl(text: str) -> bool:
    """A file whose first non-blank line is a whole JSON object (and whose text is not one document)."""
    first = next(line for line in text.splitlines() if line.strip())
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _file_records(path: Path, text: str, need_answers: bool) -> Iterable[QAExample]:
    """Records of a nested official file, a JSON list, or JSONL, checked one by one."""
    if path.suffix.lower() == ".jsonl":
        yield from _jsonl_records(path, text, need_answers)
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if _is_jsonl(text):
            yield from _jsonl_records(path, text, need_answers)
            return
        raise HftoolError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg})") from None
    if isinstance(document, list):
        for i, record in enumerate(document):
            yield parse_record(record, f"{path}: record {i}", need_answers=need_answers)
        return
    if isinstance(document, dict) and "data" in document:
        articles = _field(document, "data", str(path), list)
        for a, article in enumerate(articles):
            paragraphs = _field(article, "paragraphs", f"{path}: data[{a}]", list)
            title = article.get("title") if isinstance(article.get("title"), str) else ""
            for p, paragraph in enumerate(paragraphs):
                where = f"{path}: data[{a}].paragraphs[{p}]"
                context = _field(paragraph, "context", where, str)
                for q, qa in enumerate(_field(paragraph, "qas", where, list)):
                    yield parse_record(qa, f"{where}.qas[{q}]", context=context, need_answers=need_answers,
                                       title=title)
        return
    if isinstance(document, dict) and set(REQUIRED_FIELDS) <= set(document):
        yield parse_record(document, f"{path}: record 0", need_answers=need_answers)
        return
    raise HftoolError(f"{path}: not SQuAD data: expected the official layout {{\"data\": [...]}}, a JSON "
                      "list of records, or one record per line (.jsonl)")


def read_squad_file(path: str | Path, flag: str = "--file", strict: bool = False, need_answers: bool = True,
                    warn: Callable[[str], None] = warn_on_stderr) -> list[QAExample]:
    """Every question of a SQuAD file, checked: see :func:`check_examples` for the answer offsets."""
    path = Path(path).expanduser()
    text = _read_json_text(path, flag)
    examples = list(_file_records(path, text, need_answers))
    return check_examples(examples, str(path), strict, need_answers, warn)


def read_questions_file(path: str | Path, flag: str = "--file") -> list[QAExample]:
    """Questions to answer (no gold answers needed): JSONL of {question, context}, ``id`` optional (the
    line number), or any SQuAD file."""
    path = Path(path).expanduser()
    text = _read_json_text(path, flag)
    if path.suffix.lower() != ".jsonl" and _is_squad_layout(text):
        examples = list(_file_records(path, text, need_answers=False))
        return check_examples(examples, str(path), strict=False, need_answers=False, warn=warn_on_stderr)
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            where = f"{path}:{number}"
            record = _load_json(line, where)
            if isinstance(record, dict):
                record = {"id": str(number), **record}
            examples.append(parse_record(record, where, need_answers=False))
    return check_examples(examples, str(path), strict=False, need_answers=False, warn=warn_on_stderr)


def _is_squad_layout(text: str) -> bool:
    """The official ``{"data": [...]}`` layout or a JSON list of records (rather than JSON lines)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(document, list) or (isinstance(document, dict) and "data" in document)


def read_hub_split(name: str, config: str | None, split: str, strict: bool = False,
                   warn: Callable[[str], None] = warn_on_stderr) -> list[QAExample]:
    """A split of a SQuAD-style Hub dataset, checked like a file."""
    from datasets import load_dataset

    from hftool.hub import datasets_offline_unless_reachable, hub_reachable, offline_mode

    shown = name + (f" ({config})" if config else "") + f" [{split}]"
    try:
        with datasets_offline_unless_reachable():
            dataset = load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types for unreachable or malformed datasets
        if offline_mode() or not hub_reachable():
            raise HftoolError(f"data.hub_dataset={shown}: not cached and the Hub cannot be reached; pass "
                              "local SQuAD files with --train-file/--validation-file instead") from None
        raise HftoolError(f"data.hub_dataset={shown}: {str(exc).splitlines()[0][:200]}") from None
    examples = [parse_record(row, f"{shown} row {i}") for i, row in enumerate(dataset)]
    return check_examples(examples, shown, strict, True, warn)


def check_examples(examples: list[QAExample], source: str, strict: bool, need_answers: bool,
                   warn: Callable[[str], None]) -> list[QAExample]:
    """Refuse empty sources and duplicate ids; drop answers whose text is not at ``answer_start``.

    A misaligned answer would train the model on the wrong span. They are counted and skipped with one
    warning (a question left with no answer is dropped), or refused with ``strict``.
    """
    if not examples:
        raise HftoolError(f"{source}: no questions found")
    seen: dict[str, int] = {}
    for i, example in enumerate(examples):
        if example.id in seen:
            raise HftoolError(f"{source}: duplicate id '{example.id}' (questions {seen[example.id]} and "
                              f"{i}); ids must be unique")
        seen[example.id] = i
    misaligned: list[str] = []
    kept: list[QAExample] = []
    dropped_questions = 0
    for example in examples:
        answers = list(zip(example.answer_texts, example.answer_starts, strict=True))
        good = [(t, s) for t, s in answers if example.context[s:s + len(t)] == t]
        if len(good) < len(answers):
            misaligned += [f"id '{example.id}': {t!r} at {s}, but the context has "
                           f"{example.context[s:s + len(t)]!r}" for t, s in answers if (t, s) not in good]
            if need_answers and not good:
                dropped_questions += 1
                continue
            example = replace(example, answer_texts=tuple(t for t, _ in good),
                              answer_starts=tuple(s for _, s in good))
        kept.append(example)
    if misaligned:
        what = (f"{source}: {len(misaligned)} answer(s) do not match "
                f"context[answer_start:answer_start+len(text)] (first: {misaligned[0]})")
        if strict:
            raise HftoolError(f"{what}; fix the offsets, or drop --strict to skip them")
        dropped = f" and {dropped_questions} question(s) left without an answer" if dropped_questions else ""
        warn(f"warning: {what}; skipped them{dropped} (--strict refuses them)")
    if not kept:
        raise HftoolError(f"{source}: no question has a usable answer")
    return kept
