"""Small SQuAD data for the tests: hand-written records, and real questions cut to their answer sentence."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hftool.data.squad import QAExample

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

SUPER_BOWL = ("Super Bowl 50 was an American football game to determine the champion of the National "
              "Football League (NFL) for the 2015 season. The American Football Conference (AFC) champion"
              " Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers"
              " 24\u201310 to earn their third Super Bowl title. The game was played on February 7, 2016, at "
              "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California.")
CHOPIN = ("Fr\xe9d\xe9ric Fran\xe7ois Chopin was a Polish composer and virtuoso pianist of the Romantic era "
          "who wrote primarily for the solo piano. He was born in \u017belazowa Wola and grew up in "
          "Warsaw. His teacher at the Warsaw Conservatory was J\xf3zef Elsner")
NORMANS = ("The Normans were the people who in the 10th and 11th centuries gave their name to "
           "Normandy, a region in France. They were descended from Norse raiders and pirates from "
           "Denmark, Iceland and Norway who, under their leader Rollo, agreed to swear fealty to King "
           "Charles III of West Francia. Through generations of assimilation and mixing with the "
           "native Frankish and Roman-Gaulish populations, their descendants would gradually merge "
           "with the Carolingian-based cultures of West Francia. The distinct cultural and ethnic "
           "identity of the Normans emerged initially in the first half of the 10th century, and it "
           "continued to evolve over the succeeding centuries. Their most famous leader was William "
           "the Conqueror, who became King of England in 1066.")

# (id, context, question, answer); answer_start is where the answer first occurs in the context.
QUESTIONS = [
    ("sb-first", SUPER_BOWL, "What game determined the NFL champion?", "Super Bowl 50"),
    ("sb-winner", SUPER_BOWL, "Which team won Super Bowl 50?", "Denver Broncos"),
    ("sb-score", SUPER_BOWL, "What was the final score?", "24\u201310"),
    ("sb-place", SUPER_BOWL, "Where was the game played?", "Santa Clara, California"),
    ("ch-name", CHOPIN, "Who was the composer?", "Fr\u00e9d\u00e9ric Fran\u00e7ois Chopin"),
    ("ch-born", CHOPIN, "Where was Chopin born?", "\u017belazowa Wola"),
    ("ch-last", CHOPIN, "Who taught Chopin at the conservatory?", "J\u00f3zef Elsner"),  # ends the context
    ("no-region", NORMANS, "Which region is named after the Normans?", "Normandy"),
    ("no-leader", NORMANS, "Who led the Norse raiders?", "Rollo"),
    ("no-king", NORMANS, "Which king did they swear fealty to?", "King Charles III of West Francia"),
    ("no-culture", NORMANS, "What culture did they merge with?", "Carolingian-based cultures"),
    ("no-year", NORMANS, "When did William become King of England?", "1066"),
]


def hand_examples() -> list[QAExample]:
    return [QAExample(id=qid, question=question, context=context, answer_texts=(answer,),
                      answer_starts=(context.index(answer),)) for qid, context, question, answer in QUESTIONS]


def official_layout(examples: list[QAExample]) -> dict:
    """The nested SQuAD v1.1 layout: one article, one paragraph per distinct context."""
    paragraphs: dict[str, list] = {}
    for e in examples:
        paragraphs.setdefault(e.context, []).append({
            "id": e.id, "question": e.question,
            "answers": [{"text": t, "answer_start": s}
                        for t, s in zip(e.answer_texts, e.answer_starts, strict=True)]})
    return {"version": "1.1", "data": [{"title": "fixtures", "paragraphs": [
        {"context": context, "qas": qas} for context, qas in paragraphs.items()]}]}


def write_official(path: Path, examples: list[QAExample]) -> Path:
    path.write_text(json.dumps(official_layout(examples)), encoding="utf-8")
    return path


def write_jsonl(path: Path, examples: list[QAExample]) -> Path:
    lines = [json.dumps({"id": e.id, "title": e.title, "question": e.question, "context": e.context,
                         "answers": {"text": list(e.answer_texts), "answer_start": list(e.answer_starts)}})
             for e in examples]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def answer_sentences(examples: list[QAExample], count: int) -> list[QAExample]:
    """Real questions with their context cut to the sentence holding the first answer (gold answers outside
    it are dropped): short windows, so a real model learns something in a few dozen CPU steps. Questions
    whose first answer crosses a sentence end are left out."""
    cut = []
    for e in examples:
        start, text = e.answer_starts[0], e.answer_texts[0]
        bounds = [0] + [m.end() for m in SENTENCE_END.finditer(e.context)] + [len(e.context)]
        first = max(i for i in range(len(bounds) - 1) if bounds[i] <= start)
        begin, end = bounds[first], bounds[first + 1]
        sentence = e.context[begin:end].rstrip()
        inside = [(t, s - begin) for t, s in zip(e.answer_texts, e.answer_starts, strict=True)
                  if begin <= s and s + len(t) <= begin + len(sentence)]
        if start + len(text) > begin + len(sentence):
            continue
        cut.append(QAExample(id=e.id, question=e.question, context=sentence, title=e.title,
                             answer_texts=tuple(t for t, _ in inside),
                             answer_starts=tuple(s for _, s in inside)))
        if len(cut) == count:
            break
    return cut
