"""SQuAD v1.1 windows: the ``data:`` section of a recipe, and cutting questions and contexts into windows.

A context longer than a window is cut into overlapping windows of ``max_length`` tokens (question + context
+ special tokens) that share ``doc_stride`` context tokens. Each window keeps its character offsets, so a
predicted token span maps back to the original context text, and its answer labels are the first and last
token of the answer, or the [CLS] position when the answer is not wholly inside the window.

The records themselves are read and checked by :mod:`hftool.data.squad_records`; its names (and
:class:`WindowSettings`) are re-exported here, so callers import SQuAD data from one place.
Nothing here imports torch, so bad files fail fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hftool.data.squad_records import (
    QAExample,
    check_examples,
    parse_record,
    read_hub_split,
    read_questions_file,
    read_squad_file,
    warn_on_stderr,
)
from hftool.data.squad_windows import DOC_STRIDE, MAX_ANSWER_LENGTH, MAX_LENGTH, N_BEST, WindowSettings
from hftool.errors import HftoolError

__all__ = [
    "PAD_TO_MULTIPLE_OF", "QAExample", "SquadDataConfig", "WindowSettings", "Windows", "answer_token_span",
    "cached_windows", "check_examples", "check_windows_fit", "encode_windows",
    "parse_record", "read_hub_split", "read_questions_file", "read_squad_file", "warn_on_stderr",
    "windows_cache_key",
]

WINDOWS_FORMAT_VERSION = 1
TOKENIZE_CHUNK = 1000
# Batches are padded to their longest window rounded up to this: with length grouping that leaves few distinct
# shapes, so the allocator reuses its blocks (peak RSS of a full SQuAD run: 8.7 -> 3.7 GB; training speed within 3 %).
PAD_TO_MULTIPLE_OF = 32
WINDOW_ARRAYS = ("input_ids", "token_type_ids", "offsets", "bounds", "example_index", "start_positions",
                 "end_positions")


@dataclass
class SquadDataConfig:
    """Where the questions come from and how they are windowed (the ``data:`` section of a recipe)."""

    train_file: str | None = None  # official SQuAD v1.1 JSON or flat JSONL; default: the Hub dataset
    validation_file: str | None = None
    hub_dataset: str = "rajpurkar/squad"  # the Hub's `squad`
    hub_config: str | None = None
    hub_train_split: str = "train"
    hub_validation_split: str = "validation"
    max_length: int = MAX_LENGTH  # tokens per window: question + context + special tokens
    doc_stride: int = DOC_STRIDE  # context tokens shared by consecutive windows of one long context
    pad_to_max_length: bool = False  # static shapes for XLA/TPU; otherwise pad each batch to its longest, rounded
    pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF  # up to a multiple of this
    group_by_length: bool = True  # batch windows of similar length together (less padding)
    strict: bool = False  # fail on answers not found at answer_start (default: skip them with a warning)
    max_train_examples: int | None = None  # first N training questions (quick experiments)
    max_eval_examples: int | None = None  # first N validation questions
    n_best: int = N_BEST  # start/end candidates per window considered by post-processing
    max_answer_length: int = MAX_ANSWER_LENGTH  # longest answer predicted, in tokens

    def validate(self) -> None:
        windows = WindowSettings(self.max_length, self.doc_stride, self.max_answer_length, self.n_best)
        windows.validate()
        if self.pad_to_multiple_of < 1:
            raise HftoolError(f"data.pad_to_multiple_of={self.pad_to_multiple_of} must be at least 1")
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HftoolError(f"data.{name}={value} must be at least 1 (or null for all)")

    @property
    def windows(self) -> WindowSettings:
        return WindowSettings(self.max_length, self.doc_stride, self.max_answer_length, self.n_best)

    def describe(self, split: str) -> str:
        file = self.train_file if split == "train" else self.validation_file
        if file:
            return file
        hub_split = self.hub_train_split if split == "train" else self.hub_validation_split
        config = f" ({self.hub_config})" if self.hub_config else ""
        return f"{self.hub_dataset}{config} [{hub_split}]"


# ---- windows ----------------------------------------------------------------------------------------------

def _pair(tokenizer, questions: list[str], contexts: list[str]) -> tuple[list[str], list[str], int]:
    """(first texts, second texts, index of the context): the question goes on the side away from padding."""
    if tokenizer.padding_side == "right":
        return questions, contexts, 1
    return contexts, questions, 0


def check_windows_fit(examples: list[QAExample], tokenizer, settings: WindowSettings) -> None:
    """Every question must leave room for context in a window, and more room than the stride.

    Checked on the questions alone before the contexts are tokenized (the tokenizer would otherwise panic).
    """
    special = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for start in range(0, len(examples), TOKENIZE_CHUNK)
               for ids in tokenizer([e.question.lstrip() for e in examples[start:start + TOKENIZE_CHUNK]],
                                    add_special_tokens=False, verbose=False)["input_ids"]]
    longest = int(np.argmax(lengths))
    example, length = examples[longest], lengths[longest]
    room = settings.max_length - length - special
    if room < 1:
        raise HftoolError(f"question id '{example.id}' is {length} tokens long, which with {special} "
                          f"special tokens leaves no room for the context in {settings.name('max_length')}="
                          f"{settings.max_length}; raise {settings.name('max_length')} or shorten the "
                          "question")
    if settings.doc_stride >= room:
        raise HftoolError(f"{settings.name('doc_stride')}={settings.doc_stride} is too large for "
                          f"{settings.name('max_length')}={settings.max_length}: question id '{example.id}' "
                          f"({length} tokens + {special} special) leaves {room} context tokens per window "
                          f"and the stride must be smaller; lower {settings.name('doc_stride')} or raise "
                          f"{settings.name('max_length')}")


@dataclass
class Windows:
    """Tokenized windows, unpadded and stored flat: window ``i`` is ``input_ids[bounds[i]:bounds[i+1]]``.

    ``offsets`` holds each token's (start, end) characters in its context, -1 for tokens outside the
    context (question, special tokens). ``start_positions``/``end_positions`` are the answer's first and
    last token, or ``cls_index`` when the answer is not wholly inside the window (or there is none).
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray | None
    offsets: np.ndarray
    bounds: np.ndarray
    example_index: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray
    pad_token_id: int = 0

    def __len__(self) -> int:
        return len(self.example_index)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.bounds)

    def window_offsets(self, index: int) -> np.ndarray:
        return self.offsets[self.bounds[index]:self.bounds[index + 1]]

    def __getitem__(self, index: int) -> dict:
        begin, end = self.bounds[index], self.bounds[index + 1]
        item = {"input_ids": self.input_ids[begin:end], "start_positions": int(self.start_positions[index]),
                "end_positions": int(self.end_positions[index]), "window_index": int(index)}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[begin:end]
        return item

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        arrays = {name: getattr(self, name) for name in WINDOW_ARRAYS if getattr(self, name) is not None}
        np.savez(tmp, pad_token_id=np.array(self.pad_token_id), **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Windows:
        with np.load(path) as data:
            arrays = {name: data[name] if name in data else None for name in WINDOW_ARRAYS}
            return cls(**arrays, pad_token_id=int(data["pad_token_id"]))


def encode_windows(examples: list[QAExample], tokenizer, settings: WindowSettings) -> Windows:
    """Cut every example into windows with offsets and answer labels (the first gold answer)."""
    keep_types = "token_type_ids" in tokenizer.model_input_names
    ids_parts, type_parts, offset_parts, lengths = [], [], [], []
    example_index, starts, ends = [], [], []
    for chunk_start in range(0, len(examples), TOKENIZE_CHUNK):
        chunk = examples[chunk_start:chunk_start + TOKENIZE_CHUNK]
        first, second, context_side = _pair(tokenizer, [e.question.lstrip() for e in chunk],
                                            [e.context for e in chunk])
        encoded = tokenizer(first, second, truncation="only_second" if context_side == 1 else "only_first",
                            max_length=settings.max_length, stride=settings.doc_stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True, padding=False,
                            verbose=False)
        for w, sample in enumerate(encoded["overflow_to_sample_mapping"]):
            example = chunk[sample]
            ids = np.asarray(encoded["input_ids"][w], dtype=np.int32)
            offsets = np.asarray(encoded["offset_mapping"][w], dtype=np.int32).reshape(-1, 2)
            in_context = np.asarray([s == context_side for s in encoded.sequence_ids(w)])
            offsets[~in_context] = -1
            cls_index = _cls_index(ids, tokenizer)
            start, end = cls_index, cls_index
            if example.answer_texts:
                start, end = answer_token_span(offsets, example.answer_starts[0],
                                               example.answer_starts[0] + len(example.answer_texts[0]),
                                               default=cls_index)
            ids_parts.append(ids)
            offset_parts.append(offsets)
            if keep_types:
                type_parts.append(np.asarray(encoded["token_type_ids"][w], dtype=np.int8))
            lengths.append(len(ids))
            example_index.append(chunk_start + sample)
            starts.append(start)
            ends.append(end)
    bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    return Windows(
        input_ids=np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32),
        token_type_ids=np.concatenate(type_parts) if type_parts else None,
        offsets=np.concatenate(offset_parts) if offset_parts else np.zeros((0, 2), np.int32),
        bounds=bounds, example_index=np.asarray(example_index, dtype=np.int32),
        start_positions=np.asarray(starts, dtype=np.int32), end_positions=np.asarray(ends, dtype=np.int32),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


def _cls_index(ids: np.ndarray, tokenizer) -> int:
    if tokenizer.cls_token_id is not None:
        found = np.flatnonzero(ids == tokenizer.cls_token_id)
        if len(found):
            return int(found[0])
    return 0


def answer_token_span(offsets: np.ndarray, start_char: int, end_char: int, default: int) -> tuple[int, int]:
    """First and last context token of the characters [start_char, end_char), or ``default`` twice when
    they are not wholly inside this window's context."""
    context = np.flatnonzero(offsets[:, 0] >= 0)
    if len(context) == 0:
        return default, default
    token_starts, token_ends = offsets[context, 0], offsets[context, 1]
    if not (token_starts[0] <= start_char and token_ends[-1] >= end_char):
        return default, default
    first = context[np.searchsorted(token_starts, start_char, side="right") - 1]
    last = context[np.searchsorted(token_ends, end_char, side="left")]
    return int(first), int(last)


def _tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's vocabulary and pipeline, without the truncation/padding state each call changes."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return json.dumps(state, sort_keys=True)


def windows_cache_key(examples: list[QAExample], tokenizer, settings: WindowSettings) -> str:
    """A digest of everything windows depend on: the text, the tokenizer and the window settings."""
    digest = hashlib.sha256()
    digest.update(f"v{WINDOWS_FORMAT_VERSION}|{settings.max_length}|{settings.doc_stride}|"
                  f"{tokenizer.padding_side}|{type(tokenizer).__name__}|".encode())
    digest.update(_tokenizer_fingerprint(tokenizer).encode())
    for example in examples:
        for part in (example.question, example.context, *example.answer_texts):
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\x00")
        digest.update(",".join(map(str, example.answer_starts)).encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:24]


def cached_windows(examples: list[QAExample], tokenizer, settings: WindowSettings,
                   cache_dir: Path | None) -> Windows:
    """:func:`encode_windows`, reusing an earlier result for the same text, tokenizer and settings.

    Under a multi-process launch call it inside ``main_process_first()``: the main process writes the
    cache file, the others then read it.
    """
    if cache_dir is None:
        return encode_windows(examples, tokenizer, settings)
    path = cache_dir / f"squad-windows-{windows_cache_key(examples, tokenizer, settings)}.npz"
    if path.is_file():
        try:
            return Windows.load(path)
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
    windows = encode_windows(examples, tokenizer, settings)
    windows.save(path)
    return windows
