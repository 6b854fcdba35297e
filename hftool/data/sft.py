"""Instruction / chat data for ``finetune sft``: every source becomes a list of :class:`Conversation`.

JSONL files hold one record per line in any of three layouts, recognised per record:

- ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` (OpenAI chat format);
- ``{"instruction": ..., "input": ... (optional), "output": ...}`` (Alpaca), a user turn (the instruction, then the
  input after a blank line) and the output as the assistant's answer;
- ``{"prompt": ..., "completion": ...}``, a user turn and the assistant's answer; or, as TRL writes conversational
  prompt-completion data, both lists of messages (the prompt's turns, then the completion's).

A record may add ``"references": [...]``, answers that generated replies are scored against (exact match / F1).
The real data sets hftool's tests use become chats at run time (nothing generated is stored): SQuAD v1.1 JSON as
context + question -> answer (every gold answer a reference), GLUE-style SST-2 TSV as review -> sentiment, CoNLL
text as sentence -> its entities. Every problem is one line naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hftool.data.files import read_input_text
from hftool.errors import HftoolError

ROLES = ("system", "user", "assistant")
SENTIMENTS = {"0": "negative", "1": "positive"}
NO_ENTITIES = "none"
SQUAD_INSTRUCTION = "Answer the question with a short span copied from the context."
SST2_INSTRUCTION = "Is the sentiment of this movie review positive or negative?"
CONLL_INSTRUCTION = "List the named entities in this sentence as 'entity (type)', separated by '; '."


@dataclass(frozen=True)
class Conversation:
    """Chat messages ending with the assistant's answer; ``where`` (file:line) names it in messages."""

    messages: tuple[dict, ...]
    where: str
    references: tuple[str, ...] = ()


def read_conversations(path: str | Path, flag: str, data_format: str = "auto") -> list[Conversation]:
    """The conversations of one file in ``data_format`` (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.exists() or path.is_dir():
        raise HftoolError(f"{flag} {path}: no such file")
    readers = {"auto": _read_jsonl, "squad": _read_squad, "sst2": _read_sst2, "conll": _read_conll}
    conversations = readers[data_format](path, flag)
    if not conversations:
        raise HftoolError(f"{flag} {path}: no conversations found (empty file?)")
    return conversations


def _read_jsonl(path: Path, flag: str) -> list[Conversation]:
    conversations = []
    for number, line in enumerate(read_input_text(path, f"{flag} {path}").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise HftoolError(f"{where}: not valid JSON ({exc.msg}); expected one record per line") from None
        conversations.append(parse_record(record, where))
    return conversations


def _text(record: dict, name: str, where: str, required: bool = True) -> str:
    value = record.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        kind = "missing" if value is None else f"{type(value).__name__}, not text"
        raise HftoolError(f"{where}: field '{name}' is {kind}")
    if required and not value.strip():
        raise HftoolError(f"{where}: field '{name}' is empty")
    return value


def parse_record(record, where: str) -> Conversation:
    """One JSONL record in any of the three layouts, checked."""
    if not isinstance(record, dict):
        raise HftoolError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
    if "messages" in record:
        messages = tuple(_message(m, f"{where}: messages[{i}]") for i, m in enumerate(_list(record, "messages", where)))
        if not any(m["role"] == "assistant" for m in messages):
            raise HftoolError(f"{where}: no 'assistant' message; there is nothing to learn from")
    elif "instruction" in record:
        user = _text(record, "instruction", where)
        extra = _text(record, "input", where, required=False)
        messages = ({"role": "user", "content": f"{user}\n\n{extra}" if extra.strip() else user},
                    {"role": "assistant", "content": _text(record, "output", where)})
    elif "prompt" in record and isinstance(record["prompt"], list):
        messages = tuple(_message(m, f"{where}: {name}[{i}]") for name in ("prompt", "completion")
                         for i, m in enumerate(_list(record, name, where)))
        if messages[-1]["role"] != "assistant":
            raise HftoolError(f"{where}: the completion must end with an 'assistant' message")
    elif "prompt" in record:
        messages = ({"role": "user", "content": _text(record, "prompt", where)},
                    {"role": "assistant", "content": _text(record, "completion", where)})
    else:
        raise HftoolError(f"{where}: unknown record layout (keys: {', '.join(map(str, record)) or 'none'}); "
                          "expected 'messages', 'instruction'/'output' or 'prompt'/'completion'")
    references = record.get("references", [])
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise HftoolError(f"{where}: field 'references' must be a list of texts")
    return Conversation(messages, where, tuple(references))


def _list(record: dict, name: str, where: str) -> list:
    messages = record.get(name)
    if not isinstance(messages, list) or not messages:
        raise HftoolError(f"{where}: field '{name}' must be a non-empty list of {{role, content}} objects")
    return messages


def _message(message, where: str) -> dict:
    if not isinstance(message, dict):
        raise HftoolError(f"{where}: expected a {{role, content}} object, got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise HftoolError(f"{where}: role {role!r} is not one of: {', '.join(ROLES)}")
    return {"role": role, "content": _text(message, "content", where, required=role == "assistant")}


# ---- the real data sets as chats ----------------------------------------------------------------------------

def _read_squad(path: Path, flag: str) -> list[Conversation]:
    from hftool.data.squad_records import read_squad_file

    return [Conversation(({"role": "system", "content": SQUAD_INSTRUCTION},
                          {"role": "user", "content": f"Context: {q.context}\n\nQuestion: {q.question}"},
                          {"role": "assistant", "content": q.answer_texts[0]}),
                         f"{path}: question {q.id}", q.answer_texts)
            for q in read_squad_file(path, flag)]


def _read_sst2(path: Path, flag: str) -> list[Conversation]:
    from hftool.data.classification import ClassifyDataConfig, read_classification_file

    conversations = []
    for example in read_classification_file(path, flag, ClassifyDataConfig()):
        sentiment = SENTIMENTS.get(example.label, example.label)
        conversations.append(Conversation(({"role": "system", "content": SST2_INSTRUCTION},
                                           {"role": "user", "content": example.text.strip()},
                                           {"role": "assistant", "content": sentiment}),
                                          example.where, (sentiment,)))
    return conversations


def _read_conll(path: Path, flag: str) -> list[Conversation]:
    from hftool.data.conll import read_conll_file

    conversations = []
    for sentence in read_conll_file(path, flag):
        answer = "; ".join(f"{' '.join(words)} ({kind})" for words, kind in entity_spans(sentence.tokens,
                                                                                          sentence.tags))
        conversations.append(Conversation(({"role": "system", "content": CONLL_INSTRUCTION},
                                           {"role": "user", "content": " ".join(sentence.tokens)},
                                           {"role": "assistant", "content": answer or NO_ENTITIES}),
                                          sentence.where, (answer or NO_ENTITIES,)))
    return conversations


def entity_spans(tokens: list[str], tags: list[str]) -> list[tuple[list[str], str]]:
    """(words, type) of each entity of a sentence in IOB2 (the CoNLL reader has checked and converted the tags)."""
    spans: list[tuple[list[str], str]] = []
    inside = False
    for token, tag in zip(tokens, tags, strict=True):
        if tag.startswith("I-") and inside:
            spans[-1][0].append(token)
        elif tag.startswith(("B-", "I-")):
            spans.append(([token], tag[2:]))
        inside = tag != "O"
    return spans
