"""Token-classification data: CoNLL files (one ``token ... tag`` line per token, blank lines between
sentences, ``-DOCSTART-`` lines ignored), JSONL with ``tokens`` and ``tags`` lists, or a Hub dataset
(``conll2003``). Tags must be IOB: IOB2 as is; IOB1 (entities that may start with ``I-``) is converted
with ``data.tag_scheme=iob1`` and a source that reads as IOB1 is refused otherwise, naming the line, so no
entity is silently lost (see :class:`SchemeCheck`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hftool.data.classification import warn_main
from hftool.data.files import read_input_text
from hftool.data.splits import SplitsConfig, load_hub_split
from hftool.errors import HftoolError
from hftool.metrics.entities import is_iob_tag

MIN_MAX_LENGTH = 4  # special tokens and a word's first sub-token


@dataclass(frozen=True)
class TaggedSentence:
    """Words, their tags (None when predicting) and ``where`` (``file:line`` of the first word)."""

    tokens: list[str]
    tags: list[str] | None
    where: str


@dataclass
class NerDataConfig(SplitsConfig):
    """Where the sentences come from (CoNLL text with ``token ... tag`` lines, .jsonl with tokens + tags, or a
    Hub dataset) and how words become model inputs (the ``data:`` section)."""

    tokens_column: str = "tokens"  # JSONL / Hub
    tags_column: str = "tags"  # JSONL; Hub datasets use ner_tags (integers with names)
    tag_scheme: str = "iob2"  # iob2, or iob1 to convert IOB1 input to IOB2
    label_all_tokens: bool = False  # run_ner's option: every sub-token of a word carries a label

    def validate(self) -> None:
        if self.tag_scheme not in ("iob2", "iob1"):
            raise HftoolError(f"data.tag_scheme={self.tag_scheme} must be iob2 or iob1")
        if self.max_length < MIN_MAX_LENGTH:
            raise HftoolError(f"data.max_length={self.max_length} must be at least {MIN_MAX_LENGTH}")
        super().validate()


class SchemeCheck:
    """Checks tags as they are read: a non-IOB tag is refused; with ``iob1`` an entity starting with ``I-``
    becomes ``B-``; with ``iob2`` such stray ``I-`` tags (real IOB2 data such as CoNLL-2003 holds a few hundred
    annotation slips) are kept and counted, and a source where they outnumber ``B-`` starts is refused as IOB1.

    Keeping strays as written matches the metric: seqeval's strict IOB2 mode (and :mod:`hftool.metrics.entities`)
    puts a stray ``I-X``, and the ``I-X`` run it heads, in no entity, in the gold tags and the predicted ones
    alike, so hftool's score on a file equals seqeval strict on that file. Rewriting strays as ``B-`` for
    training only would teach the model entities the metric does not count."""

    def __init__(self, scheme: str, setting: str = "data.tag_scheme"):
        self.scheme = scheme
        self.iob1_hint = f"{setting}=iob1" if setting.startswith("data.") else f"{setting} iob1"  # how to ask for it
        self.strays: list[str] = []
        self.starts = 0

    def __call__(self, tags: Sequence[str], lines: Sequence[str]) -> list[str]:
        out = []
        previous = "O"
        for tag, where in zip(tags, lines, strict=True):
            if not is_iob_tag(tag):
                raise HftoolError(f"{where}: tag '{tag}' is not IOB (O, B-TYPE or I-TYPE)")
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                if self.scheme == "iob1":
                    tag = "B-" + tag[2:]
                else:
                    self.strays.append(where)
            self.starts += tag.startswith("B-")
            out.append(tag)
            previous = tag
        return out

    def finish(self, source: str, warn) -> None:
        if not self.strays:
            return
        if len(self.strays) > self.starts:
            raise HftoolError(f"{self.strays[0]}: {len(self.strays)} entities start with I- and only {self.starts} "
                              f"with B-: this is IOB1, not IOB2; pass {self.iob1_hint} to convert it")
        warn(f"{source}: {len(self.strays)} I- tag(s) follow O or a tag of another type (first at "
             f"{self.strays[0]}); kept as written, and scored as seqeval's strict IOB2 mode does: such a stray I- "
             "and the I- run it heads form no entity, in gold or predictions (seqeval's default conlleval mode "
             f"would start an entity there); pass {self.iob1_hint} to read each stray I- as an entity start (B-)")


def check_tags(tags: Sequence[str], lines: Sequence[str], scheme: str) -> list[str]:
    """One sentence's tags checked (and converted from IOB1) as :class:`SchemeCheck` does."""
    return SchemeCheck(scheme)(tags, lines)


def read_conll_file(path: str | Path, flag: str, scheme: str = "iob2", need_tags: bool = True,
                    warn=warn_main, scheme_setting: str = "data.tag_scheme") -> list[TaggedSentence]:
    """Sentences of a CoNLL file (token first, tag last on each line) or a JSONL file; messages name
    ``scheme_setting`` (the recipe key, or the flag of a command without a recipe)."""
    path = Path(path).expanduser()
    if not path.exists() or path.is_dir():
        raise HftoolError(f"{flag} {path}: no such file")
    text = read_input_text(path, f"{flag} {path}")
    check = SchemeCheck(scheme, scheme_setting)
    if path.suffix.lower() in (".jsonl", ".json"):
        sentences = _read_jsonl(path, text, check, need_tags)
    else:
        sentences = _read_conll(path, text, check, need_tags)
    if not sentences:
        raise HftoolError(f"{flag} {path}: no sentences found (empty file?)")
    check.finish(str(path), warn)
    return sentences


def _read_conll(path: Path, text: str, check: SchemeCheck, need_tags: bool) -> list[TaggedSentence]:
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[str] = []

    def flush():
        if tokens:
            sentences.append(TaggedSentence(list(tokens), check(tags, lines) if need_tags else None,
                                            lines[0]))
        tokens.clear(), tags.clear(), lines.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            flush()
            continue
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        where = f"{path}:{number}"
        if need_tags and len(fields) < 2:
            raise HftoolError(f"{where}: token '{fields[0]}' has no tag (expected 'token tag')")
        tokens.append(fields[0])
        tags.append(fields[-1])
        lines.append(where)
    flush()
    return sentences


def _read_jsonl(path: Path, text: str, check: SchemeCheck, need_tags: bool) -> list[TaggedSentence]:
    sentences = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise HftoolError(f"{where}: not valid JSON ({exc.msg})") from None
        tokens = record.get("tokens") if isinstance(record, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t.strip() for t in tokens):
            raise HftoolError(f"{where}: field 'tokens' must be a list of non-empty strings")
        if not tokens:
            continue
        tags = record.get("tags")
        if not need_tags:
            sentences.append(TaggedSentence(tokens, None, where))
            continue
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise HftoolError(f"{where}: field 'tags' must be a list of strings (one per token)")
        if len(tags) != len(tokens):
            raise HftoolError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
        sentences.append(TaggedSentence(tokens, check(tags, [where] * len(tags)), where))
    return sentences


def read_hub_ner(data: NerDataConfig, split: str) -> list[TaggedSentence]:
    """A Hub split whose tag column holds ``ClassLabel`` integers (``conll2003``'s ``ner_tags``) or strings."""
    dataset = load_hub_split(data, split)
    shown = data.hub_name(split)
    column = data.tags_column if data.tags_column in dataset.features else "ner_tags"
    if column not in dataset.features or data.tokens_column not in dataset.features:
        raise HftoolError(f"data.hub_dataset={shown}: needs columns '{data.tokens_column}' and "
                          f"'{data.tags_column}' (has {', '.join(dataset.features)})")
    feature = getattr(dataset.features[column], "feature", None)
    names = getattr(feature, "names", None)
    sentences = []
    check = SchemeCheck(data.tag_scheme)
    for i, row in enumerate(dataset):
        tokens = row[data.tokens_column]
        if not tokens:
            continue
        tags = [names[t] if names else str(t) for t in row[column]]
        where = f"{shown} row {i}"
        sentences.append(TaggedSentence(tokens, check(tags, [where] * len(tags)), where))
    check.finish(shown, warn_main)
    return sentences


def tag_list(sentences: Sequence[TaggedSentence]) -> list[str]:
    """The tag set in a fixed order: O first, then by type, B before I (B-LOC, I-LOC, B-MISC, ...)."""
    found = {tag for s in sentences for tag in s.tags}
    kinds = sorted({tag[2:] for tag in found if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I")]
