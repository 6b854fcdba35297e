"""BERT's corpus: documents split into sentences, tokenized into flat arrays, and grouped into chunks.

The chunks are made the way BERT's ``create_pretraining_data.py`` makes them (consecutive sentences of one
document up to a target length, sometimes shorter); a sentence longer than the maximum length is cut into
pieces (counted) instead of being truncated away, and a document shorter than ``min_document_tokens`` (a
heading, a title) is joined to the next document. The examples drawn from the chunks are
:mod:`hftool.data.bert_examples`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from hftool.data.text import tokenized_cache_file

SentenceSplitter = Literal["regex", "lines"]

# A sentence ends at . ! or ? (and any closing quotes/brackets) followed by space and a capital, digit or quote.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_WORD_BEFORE = re.compile(r"(\S+)$")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "cf", "no", "nos", "fig", "figs",
    "al", "approx", "inc", "ltd", "co", "corp", "mt", "ft", "gen", "col", "lt", "sgt", "capt", "rev", "vol", "pp",
    "ed", "eds", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s",
}



# ---- sentences ------------------------------------------------------------------------------------------

def split_sentences(text: str, splitter: SentenceSplitter = "regex") -> list[str]:
    """Sentences of a document: at ``.!?`` boundaries (skipping common abbreviations and initials), or lines."""
    if splitter == "lines":
        return [line.strip() for line in text.splitlines() if line.strip()]
    flat = " ".join(text.split())
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(flat):
        word = _WORD_BEFORE.search(flat, 0, match.start())
        before = word.group(1).lower().rstrip(".") if word else ""
        if before in _ABBREVIATIONS or (len(before) == 1 and before.isalpha()):
            continue
        sentences.append(flat[start:match.end()].strip())
        start = match.end()
    if flat[start:].strip():
        sentences.append(flat[start:].strip())
    return sentences


@dataclass
class SentenceCorpus:
    """Tokenized documents as flat arrays, so that any sentence or document is two slices away.

    ``tokens[sentence_starts[s]:sentence_starts[s + 1]]`` is sentence ``s``; document ``d`` holds sentences
    ``document_starts[d]`` to ``document_starts[d + 1] - 1``.
    """

    tokens: np.ndarray  # int32
    sentence_starts: np.ndarray  # int64, one more than there are sentences
    document_starts: np.ndarray  # int64, one more than there are documents
    stats: dict = field(default_factory=dict)

    @property
    def num_documents(self) -> int:
        return len(self.document_starts) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_starts) - 1

    def document_lengths(self) -> np.ndarray:
        return self.sentence_starts[self.document_starts[1:]] - self.sentence_starts[self.document_starts[:-1]]


def tokenize_corpus(docs: Sequence[str], tokenizer, splitter: SentenceSplitter = "regex",
                    cache_dir: Path | None = None, batch_size: int = 1000) -> SentenceCorpus:
    """Split ``docs`` into sentences and tokenize them in batches; the result is cached by content."""
    cache_file = None
    if cache_dir is not None:
        cache_file = tokenized_cache_file(cache_dir, "sentences", ".npz", tokenizer, docs, splitter)
        if cache_file.is_file():
            with np.load(cache_file) as saved:
                return SentenceCorpus(saved["tokens"], saved["sentence_starts"], saved["document_starts"],
                                      {"documents_without_sentence_boundary": int(saved["no_boundary"])})

    sentence_counts = np.zeros(len(docs), dtype=np.int64)
    no_boundary = 0
    lengths: list[int] = []
    parts: list[np.ndarray] = []
    pending: list[str] = []

    def flush() -> None:
        ids = tokenizer(pending, add_special_tokens=False, verbose=False)["input_ids"]
        lengths.extend(len(seq) for seq in ids)
        parts.append(np.fromiter((t for seq in ids for t in seq), dtype=np.int32))
        pending.clear()

    for d, doc in enumerate(docs):
        sentences = split_sentences(doc, splitter)
        no_boundary += len(sentences) == 1
        sentence_counts[d] = len(sentences)
        pending.extend(sentences)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    corpus = SentenceCorpus(
        tokens=np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32),
        sentence_starts=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
        document_starts=np.concatenate([[0], np.cumsum(sentence_counts)]),
        stats={"documents_without_sentence_boundary": no_boundary},
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, tokens=corpus.tokens, sentence_starts=corpus.sentence_starts,
                 document_starts=corpus.document_starts, no_boundary=no_boundary)
        tmp.replace(cache_file)
    return corpus


def prepare_corpus(corpus: SentenceCorpus, max_tokens: int, min_document_tokens: int) -> SentenceCorpus:
    """Cut sentences longer than ``max_tokens`` into pieces, drop empty ones, join too-short documents.

    Every token is kept and stays in place: only the sentence and document boundaries move. A document
    under ``min_document_tokens`` (a heading, a title) is joined to the next one (the last to the one before).
    What was changed is counted in ``stats`` so that the run can report it.
    """
    lengths = np.diff(corpus.sentence_starts)
    pieces = -(-lengths // max_tokens)  # 0 for an empty sentence
    first_piece = np.cumsum(pieces) - pieces
    within = np.arange(int(pieces.sum())) - np.repeat(first_piece, pieces)
    piece_starts = np.repeat(corpus.sentence_starts[:-1], pieces) + within * max_tokens
    doc_piece_ends = np.concatenate([[0], np.cumsum(pieces)])[corpus.document_starts[1:]]
    doc_tokens = corpus.document_lengths()

    bounds, pending, joined = [0], 0, 0
    for d in range(corpus.num_documents):
        if doc_tokens[d] == 0:
            continue
        pending += int(doc_tokens[d])
        if pending < min_document_tokens:
            joined += 1
            continue
        bounds.append(int(doc_piece_ends[d]))
        pending = 0
    if pending:
        if len(bounds) > 1:
            bounds[-1] = len(piece_starts)
        else:
            bounds.append(len(piece_starts))
            joined -= 1
    stats = {**corpus.stats, "long_sentences_split": int((lengths > max_tokens).sum()),
             "short_documents_joined": joined}
    return SentenceCorpus(
        tokens=corpus.tokens,
        sentence_starts=np.append(piece_starts, len(corpus.tokens)).astype(np.int64),
        document_starts=np.asarray(bounds, dtype=np.int64),
        stats=stats,
    )


def build_chunks(corpus: SentenceCorpus, max_tokens: int, short_seq_probability: float,
                 seed: int) -> np.ndarray:
    """Groups of consecutive sentences of one document, each filled up to a target length.

    Returns an int64 array of rows ``(document, first sentence, end sentence, target length)``. As in BERT,
    a chunk closes once it reaches its target or its document ends; with ``short_seq_probability`` the
    target is drawn from ``[2, max_tokens]`` instead of ``max_tokens``, so the model also sees short inputs.
    """
    rng = np.random.default_rng([seed, 7])
    lengths = np.diff(corpus.sentence_starts)
    rows = []
    for d in range(corpus.num_documents):
        first, last = int(corpus.document_starts[d]), int(corpus.document_starts[d + 1])
        target = _draw_target(rng, max_tokens, short_seq_probability)
        begin, filled = first, 0
        for s in range(first, last):
            filled += int(lengths[s])
            if s == last - 1 or filled >= target:
                rows.append((d, begin, s + 1, target))
                begin, filled = s + 1, 0
                target = _draw_target(rng, max_tokens, short_seq_probability)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def _draw_target(rng: np.random.Generator, max_tokens: int, short_seq_probability: float) -> int:
    if rng.random() < short_seq_probability:
        return int(rng.integers(2, max_tokens + 1))
    return max_tokens
