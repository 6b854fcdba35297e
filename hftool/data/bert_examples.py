"""BERT's training examples: sentence pairs for next-sentence prediction, and masked tokens.

The pairs are made the way BERT's ``create_pretraining_data.py`` makes them: documents are split into
sentences; consecutive sentences are gathered into a *chunk* up to a target length (with a small probability
of a shorter target); the chunk is cut into segment A and, half of the time, its true continuation B, otherwise
a span from a *different* document; the longer segment is trimmed from the front or the back at random;
the example is ``[CLS] A [SEP] B [SEP]`` with token type ids 0 for A and 1 for B. Masking follows BERT too:
15 % of the non-special tokens are predicted, of which 80 % become ``[MASK]``, 10 % a random token and 10 % stay.

Differences from the original, each for a reason:

* Chunks are fixed once per run, but everything drawn inside a chunk (where A ends, IsNext or not, the
  negative's document and start, truncation, masks) is a pure function of ``(seed, epoch, example index)``.
  Pairs and masks are therefore re-sampled every epoch (dynamic), the dataset keeps a fixed length, and
  resuming at any step needs no sampler state.
* The original forces a negative whenever a chunk holds a single sentence, which pushes IsNext below 50 %;
  here such a chunk is cut inside the sentence, so B is still the true continuation and IsNext stays at 50 %.
* A negative always comes from another document (the original gives up after 10 tries).
* The random replacement token is drawn from the non-special vocabulary, never ``[CLS]``/``[PAD]``/...
* A sentence longer than the maximum length is cut into pieces (counted) instead of being truncated away;
  a document shorter than ``min_document_tokens`` (a heading, a title) is joined to the next document.

Sentences, the tokenized corpus and its chunks are :mod:`hftool.data.bert_sentences` (re-exported here).
"""


from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from hftool.data.bert_sentences import (
    SentenceCorpus,
    SentenceSplitter,
    build_chunks,
    prepare_corpus,
    split_sentences,
    tokenize_corpus,
)
from hftool.errors import HftoolError

__all__ = [
    "IS_NEXT", "NOT_NEXT", "TRAIN_SALT", "VALIDATION_SALT", "BertExample", "BertExamples", "BertExamplesConfig",
    "ExampleRef", "Masker", "SentenceCorpus", "SentenceSplitter", "build_chunks", "collate_examples",
    "prepare_corpus", "split_sentences", "tokenize_corpus", "truncate_pair",
]

NOT_NEXT, IS_NEXT = 1, 0  # transformers' next_sentence_label: 0 = B continues A, 1 = B is random
TRAIN_SALT, VALIDATION_SALT = 0, 1



@dataclass
class BertExamplesConfig:
    """How BERT's examples are made from documents (the ``bert:`` section; objectives mlm and mlm-nsp)."""

    sentence_splitter: SentenceSplitter = "regex"  # regex: . ! ? boundaries; lines: one sentence per line
    min_document_tokens: int = 16  # shorter documents (headings, titles) are joined to the next one
    random_next_probability: float = 0.5  # B is taken from another document (NotNext) this often
    short_seq_probability: float = 0.1  # a chunk aims at a random shorter length this often
    mask_probability: float = 0.15  # share of non-special tokens the MLM predicts
    mask_token_fraction: float = 0.8  # of those: replaced by [MASK] ...
    random_token_fraction: float = 0.1  # ... by a random token; the rest are kept unchanged
    whole_word_mask: bool = False  # mask every WordPiece of a word together (## continuations)
    max_predictions: int | None = None  # cap per example; default ceil(block_size * mask_probability)

    def validate(self) -> None:
        for name in ("random_next_probability", "short_seq_probability", "mask_token_fraction",
                     "random_token_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise HftoolError(f"bert.{name}={value} must be between 0 and 1")
        if not 0.0 < self.mask_probability < 1.0:
            raise HftoolError(f"bert.mask_probability={self.mask_probability} must be between 0 and 1 (exclusive)")
        if self.mask_token_fraction + self.random_token_fraction > 1.0:
            raise HftoolError(f"bert.mask_token_fraction + bert.random_token_fraction = "
                              f"{self.mask_token_fraction + self.random_token_fraction:g} exceeds 1")
        if self.max_predictions is not None and self.max_predictions < 1:
            raise HftoolError(f"bert.max_predictions={self.max_predictions} must be at least 1")
        if self.min_document_tokens < 0:
            raise HftoolError(f"bert.min_document_tokens={self.min_document_tokens} must be 0 or more")

    def predictions_cap(self, block_size: int) -> int:
        return self.max_predictions or math.ceil(block_size * self.mask_probability)




# ---- masking --------------------------------------------------------------------------------------------

class Masker:
    """BERT's masked-LM corruption of one example, driven by a caller's random generator."""

    def __init__(self, tokenizer, config: BertExamplesConfig, block_size: int):
        self.mask_id = tokenizer.mask_token_id
        self.probability = config.mask_probability
        self.max_predictions = config.predictions_cap(block_size)
        self.mask_fraction = config.mask_token_fraction
        self.random_fraction = config.random_token_fraction
        self.whole_word = config.whole_word_mask
        vocab_size = len(tokenizer)
        special = np.zeros(vocab_size, dtype=bool)
        special[[i for i in tokenizer.all_special_ids if i is not None and i < vocab_size]] = True
        self.special = special
        self.replacement_ids = np.flatnonzero(~special)
        self.continuation = np.zeros(vocab_size, dtype=bool)
        prefix = getattr(tokenizer.backend_tokenizer.model, "continuing_subword_prefix", None)
        if prefix:
            for token, index in tokenizer.get_vocab().items():
                if token.startswith(prefix) and index < vocab_size:
                    self.continuation[index] = True

    def __call__(self, input_ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(corrupted ids, predicted positions, original ids there)``; special tokens are never chosen."""
        candidates = np.flatnonzero(~self.special[input_ids])
        if len(candidates) == 0:
            return input_ids.copy(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        expected = len(candidates) * self.probability
        count = int(expected) + int(rng.random() < expected - int(expected))  # unbiased rounding
        count = min(self.max_predictions, max(1, count))
        if self.whole_word:
            positions = self._whole_words(input_ids, candidates, count, rng)
        else:
            positions = np.sort(rng.choice(candidates, size=count, replace=False))
        labels = input_ids[positions].astype(np.int64)
        corrupted = input_ids.copy()
        draw = rng.random(len(positions))
        to_mask = draw < self.mask_fraction
        to_random = (draw >= self.mask_fraction) & (draw < self.mask_fraction + self.random_fraction)
        corrupted[positions[to_mask]] = self.mask_id
        corrupted[positions[to_random]] = rng.choice(self.replacement_ids, size=int(to_random.sum()))
        return corrupted, positions.astype(np.int64), labels

    def _whole_words(self, input_ids: np.ndarray, candidates: np.ndarray, count: int,
                     rng: np.random.Generator) -> np.ndarray:
        """Whole words in random order while they fit in ``count`` (a word too long for the rest is skipped)."""
        follows_previous = np.zeros(len(candidates), dtype=bool)
        follows_previous[1:] = (candidates[1:] == candidates[:-1] + 1) & self.continuation[input_ids[candidates[1:]]]
        word_starts = np.flatnonzero(~follows_previous)
        word_ends = np.append(word_starts[1:], len(candidates))
        chosen: list[np.ndarray] = []
        total = 0
        for w in rng.permutation(len(word_starts)):
            size = int(word_ends[w] - word_starts[w])
            if total + size > count:
                if total >= count:
                    break
                continue
            chosen.append(candidates[word_starts[w]:word_ends[w]])
            total += size
        return np.sort(np.concatenate(chosen)) if chosen else candidates[:1]


# ---- examples -------------------------------------------------------------------------------------------

class BertExample(NamedTuple):
    """One training example before padding."""

    input_ids: np.ndarray  # int64, masked
    token_type_ids: np.ndarray  # int64
    masked_positions: np.ndarray  # int64 positions into input_ids
    masked_labels: np.ndarray  # int64 original ids at those positions
    next_sentence_label: int  # IS_NEXT / NOT_NEXT, or -1 without NSP


class ExampleRef(NamedTuple):
    """What the engine gets from ``dataset[i]``: the example is made in ``collate``, which knows the epoch."""

    source: BertExamples
    index: int


class BertExamples(Sequence):
    """Examples from fixed chunks, re-sampled per epoch: ``example(i, epoch)`` is a pure function.

    With ``next_sentence=True`` an example is a ``[CLS] A [SEP] B [SEP]`` pair; otherwise (MLM alone) the
    whole chunk as ``[CLS] text [SEP]``.
    """

    def __init__(self, corpus: SentenceCorpus, tokenizer, config: BertExamplesConfig, block_size: int,
                 seed: int, next_sentence: bool, salt: int = TRAIN_SALT):
        self.corpus = corpus
        self.config = config
        self.seed = seed
        self.salt = salt
        self.next_sentence = next_sentence
        self.max_tokens = block_size - (3 if next_sentence else 2)
        if self.max_tokens < 2:
            raise HftoolError(f"data.block_size={block_size} is too short for BERT examples; use at least "
                              f"{5 if next_sentence else 4}")
        if next_sentence and corpus.num_documents < 2:
            raise HftoolError(f"the corpus has {corpus.num_documents} document(s); next-sentence prediction "
                              "needs at least 2 to draw negatives from another document (separate documents "
                              "with blank lines, give several files or rows), or use objective=mlm")
        self.chunks = build_chunks(corpus, self.max_tokens, config.short_seq_probability, seed + salt)
        self.masker = Masker(tokenizer, config, block_size)
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> ExampleRef:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return ExampleRef(self, int(index) % len(self))

    def rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.salt, epoch, index])

    def example(self, index: int, epoch: int) -> BertExample:
        rng = self.rng(index, epoch)
        if self.next_sentence:
            tokens_a, tokens_b, label = self.segments(index, rng)
            ids = np.concatenate([[self.cls_id], tokens_a, [self.sep_id], tokens_b, [self.sep_id]])
            types = np.zeros(len(ids), dtype=np.int64)
            types[len(tokens_a) + 2:] = 1
        else:
            _, first, end, _ = self.chunks[index]
            text = self._span(first, end)
            text, _ = truncate_pair(text, text[:0], self.max_tokens, rng)
            ids = np.concatenate([[self.cls_id], text, [self.sep_id]])
            types, label = np.zeros(len(ids), dtype=np.int64), -1
        masked, positions, labels = self.masker(ids.astype(np.int64), rng)
        return BertExample(masked, types, positions, labels, label)

    def segments(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """Segments A and B of chunk ``index`` and whether B is the true continuation.

        B starts where A ends, at a sentence boundary where there is one. A chunk of one sentence takes its
        continuation from the document's next sentences; only a sentence that ends its document is cut
        inside, and then a negative's B also starts inside a sentence, so that where B starts says nothing
        about the label.
        """
        doc, first, end, target = (int(v) for v in self.chunks[index])
        random_next = rng.random() < self.config.random_next_probability
        doc_end = int(self.corpus.document_starts[doc + 1])
        inside_sentence = False
        if end - first >= 2:
            a_end = int(rng.integers(first + 1, end))
            tokens_a, continuation = self._span(first, a_end), self._span(a_end, end)
        elif end < doc_end:
            tokens_a = self._span(first, end)
            continuation = self._sentences_from(end, doc_end, max(1, target - len(tokens_a)))
        else:
            sentence = self._span(first, end)
            inside_sentence = len(sentence) >= 2
            random_next = random_next or not inside_sentence
            cut = int(rng.integers(1, len(sentence))) if inside_sentence else len(sentence)
            tokens_a, continuation = sentence[:cut], sentence[cut:]
        if random_next:
            tokens_b = self._random_span(doc, max(1, target - len(tokens_a)), inside_sentence, rng)
        else:
            tokens_b = continuation
        tokens_a, tokens_b = truncate_pair(tokens_a, tokens_b, self.max_tokens, rng)
        return tokens_a, tokens_b, NOT_NEXT if random_next else IS_NEXT

    def _span(self, first: int, end: int) -> np.ndarray:
        starts = self.corpus.sentence_starts
        return self.corpus.tokens[starts[first]:starts[end]]

    def _sentences_from(self, start: int, last: int, length: int, skip: int = 0) -> np.ndarray:
        """Sentences ``start``, ``start + 1``, ... (before ``last``) until ``length`` tokens, less ``skip``."""
        starts = self.corpus.sentence_starts
        reached = starts[start + 1:last + 1] - starts[start] - skip
        end = start + 1 + min(int(np.searchsorted(reached, length)), last - start - 1)
        return self.corpus.tokens[starts[start] + skip:starts[end]]

    def _random_span(self, doc: int, length: int, inside_sentence: bool, rng: np.random.Generator) -> np.ndarray:
        """``length`` tokens from a random sentence of a document other than ``doc`` (from inside it if asked)."""
        other = int(rng.integers(0, self.corpus.num_documents - 1))
        other += other >= doc
        first, last = int(self.corpus.document_starts[other]), int(self.corpus.document_starts[other + 1])
        start = int(rng.integers(first, last))
        size = int(self.corpus.sentence_starts[start + 1] - self.corpus.sentence_starts[start])
        skip = int(rng.integers(1, size)) if inside_sentence and size >= 2 else 0
        return self._sentences_from(start, last, length, skip)


def truncate_pair(tokens_a: np.ndarray, tokens_b: np.ndarray, max_tokens: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Trim the longer segment one token at a time, each from the front or the back at random (as BERT)."""
    len_a, len_b = len(tokens_a), len(tokens_b)
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return tokens_a, tokens_b
    gap = abs(len_a - len_b)
    from_longer = min(excess, gap)
    rest = excess - from_longer
    cut_a = cut_b = rest // 2
    if rest % 2:  # lengths are equal when the odd token goes: the loop in BERT takes it from B
        cut_b += 1
    if len_a > len_b:
        cut_a += from_longer
    else:
        cut_b += from_longer
    return _trim(tokens_a, cut_a, rng), _trim(tokens_b, cut_b, rng)


def _trim(tokens: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if count == 0:
        return tokens
    front = int(rng.binomial(count, 0.5))
    return tokens[front:len(tokens) - (count - front)]


def collate_examples(examples: Iterable[BertExample], pad_id: int) -> dict[str, np.ndarray]:
    """Pad to the longest example; masked positions are flattened indices into ``(rows * length)``.

    ``masked_weights`` holds ``1 / (masked tokens of its example)`` at every masked position, so that the
    summed weighted loss is the sum over examples of each example's mean MLM loss.
    """
    examples = list(examples)
    length = max(len(e.input_ids) for e in examples)
    rows = len(examples)
    input_ids = np.full((rows, length), pad_id, dtype=np.int64)
    token_types = np.zeros((rows, length), dtype=np.int64)
    attention = np.zeros((rows, length), dtype=np.int64)
    positions, labels, weights = [], [], []
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[r, :n] = e.input_ids
        token_types[r, :n] = e.token_type_ids
        attention[r, :n] = 1
        positions.append(e.masked_positions + r * length)
        labels.append(e.masked_labels)
        weights.append(np.full(len(e.masked_positions), 1.0 / max(len(e.masked_positions), 1), dtype=np.float32))
    batch = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_types,
             "masked_positions": np.concatenate(positions), "masked_labels": np.concatenate(labels),
             "masked_weights": np.concatenate(weights)}
    if examples[0].next_sentence_label >= 0:
        batch["next_sentence_label"] = np.asarray([e.next_sentence_label for e in examples], dtype=np.int64)
    return batch
