"""Text sources for language-model pretraining, and packing tokenized text into fixed-length blocks.

Sources, in the order they are looked at: local files (``.txt``/``.raw`` plain text, ``.jsonl``/``.json``,
``.parquet``), a Hub dataset (``load_dataset(name, config)``), or the embedded default corpus. Plain text is
split into documents at blank lines; JSON and Parquet rows are one document each (``text_column``).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from hftool.data.files import bounded_lines, read_input_bytes
from hftool.errors import HftoolError

TEXT_SUFFIXES = {".txt", ".raw", ".text", ".md", ""}
JSON_SUFFIXES = {".jsonl", ".json"}
BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass
class DataConfig:
    """Where the text comes from and how it is cut (the ``data:`` section of a pretraining recipe)."""

    files: list[str] = field(default_factory=list)  # local text/JSONL/Parquet files
    validation_files: list[str] = field(default_factory=list)  # else validation_fraction of the documents
    hub_dataset: str | None = None  # e.g. wikitext
    hub_config: str | None = None  # e.g. wikitext-2-raw-v1
    hub_split: str = "train"
    hub_validation_split: str | None = None  # e.g. validation
    text_column: str = "text"
    block_size: int = 128
    validation_fraction: float = 0.05
    streaming: bool = False  # read a Hub dataset or large files lazily (needs train.max_steps)
    streaming_validation_documents: int = 200  # held out from the head of a stream without a validation split
    encoding_errors: Literal["strict", "replace"] = "strict"
    max_documents: int | None = None  # cap on training documents (quick experiments)

    def validate(self) -> None:
        if self.block_size < 2:
            raise HftoolError(f"data.block_size={self.block_size} must be at least 2")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise HftoolError(f"data.validation_fraction={self.validation_fraction} must be in [0, 1)")
        if self.files and self.hub_dataset:
            raise HftoolError("give data.files or data.hub_dataset, not both")

    def describe(self) -> str:
        if self.files:
            return ", ".join(self.files)
        if self.hub_dataset:
            return f"{self.hub_dataset}" + (f" ({self.hub_config})" if self.hub_config else "")
        return "the embedded Python documentation corpus (pydoc topics and standard-library docstrings)"


@dataclass(frozen=True)
class SettingNames:
    """How an error names the data settings: recipe keys for ``pretrain``, flags for ``tokenizer train``."""

    files: str = "data.files"
    text_column: str = "data.text_column"
    hub_dataset: str = "data.hub_dataset"
    encoding_errors: str | None = "data.encoding_errors=replace"  # None: the command has no such setting


RECIPE_NAMES = SettingNames()


@dataclass
class Documents:
    """Training and validation documents (lists, or iterators when streaming)."""

    train: Iterable[str]
    validation: list[str]
    source: str


def read_text_documents(path: Path, encoding_errors: str = "strict", names: SettingNames = RECIPE_NAMES
                        ) -> list[str]:
    """Documents of a plain-text file: blocks separated by blank lines, stripped, empty ones dropped."""
    try:
        raw = read_input_bytes(path, str(path))
    except FileNotFoundError:
        raise HftoolError(f"{path}: no such file; check {names.files}") from None
    except IsADirectoryError:
        raise HftoolError(f"{path}: is a folder; list the files inside it in {names.files}") from None
    try:
        text = raw.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise HftoolError(
            f"{path}:{line}:{column}: not UTF-8 (byte 0x{raw[exc.start]:02x}); re-encode the file as UTF-8"
            + (f" or pass {names.encoding_errors}" if names.encoding_errors else "")
        ) from None
    text = text.replace("\r\n", "\n")
    return [doc.strip() for doc in BLANK_LINES.split(text) if doc.strip()]


def _dataset_column(dataset, column: str, where: str, names: SettingNames) -> Iterable[str]:
    columns = dataset.column_names or []
    if columns and column not in columns:
        raise HftoolError(f"{where}: no column '{column}' (columns: {', '.join(columns)}); "
                          f"set {names.text_column}")
    return (row[column] for row in dataset)


def read_jsonl_texts(path: Path, column: str, names: SettingNames = RECIPE_NAMES) -> Iterator[str]:
    """The ``column`` text of each JSON Lines record; a bad line is an error naming ``file:line``, and
    records with empty text are skipped and counted on stderr."""
    import json
    import sys

    skipped = 0
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise HftoolError(f"{path}: no such file; check {names.files}") from None
    with handle:
        try:
            for number, line in enumerate(bounded_lines(handle, str(path)), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise HftoolError(f"{path}:{number}: not valid JSON ({exc}); fix or remove the line") from None
                if not isinstance(record, dict):
                    raise HftoolError(f"{path}:{number}: expected a JSON object with a '{column}' field, got "
                                      f"{type(record).__name__}")
                if column not in record:
                    raise HftoolError(f"{path}:{number}: no column '{column}' (fields: {', '.join(record)}); "
                                      f"set {names.text_column}")
                text = record[column]
                if text is None or (isinstance(text, str) and not text.strip()):
                    skipped += 1
                    continue
                if not isinstance(text, str):
                    raise HftoolError(f"{path}:{number}: field '{column}' is {type(text).__name__} "
                                      f"({json.dumps(text)[:40]}), not a string")
                yield text.strip()
        except UnicodeDecodeError as exc:
            raise HftoolError(f"{path}: not UTF-8 ({exc.reason}); re-encode the file as UTF-8") from None
    if skipped:
        print(f"{path}: skipped {skipped:,} record(s) with empty '{column}'", file=sys.stderr)


def _read_file(path: Path, cfg: DataConfig, streaming: bool, names: SettingNames) -> Iterable[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        texts = read_jsonl_texts(path, cfg.text_column, names)
        return texts if streaming else list(texts)
    if suffix in JSON_SUFFIXES or suffix == ".parquet":
        from datasets import load_dataset

        if not path.is_file():
            raise HftoolError(f"{path}: no such file; check {names.files}")
        builder = "parquet" if suffix == ".parquet" else "json"
        try:
            dataset = load_dataset(builder, data_files=str(path), split="train", streaming=streaming)
        except Exception as exc:  # datasets raises many types for malformed files
            raise HftoolError(f"{path}: could not read as {builder} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from None
        return _texts(_dataset_column(dataset, cfg.text_column, str(path), names), str(path), cfg.text_column)
    if suffix in TEXT_SUFFIXES:
        return read_text_documents(path, cfg.encoding_errors, names)
    raise HftoolError(f"{path}: unknown file type '{suffix}'; use .txt, .jsonl or .parquet")


def _texts(values: Iterable, where: str, column: str) -> Iterator[str]:
    """Stripped non-empty texts; a value that is not a string is an error naming its row."""
    for row, text in enumerate(values, start=1):
        if text is not None and not isinstance(text, str):
            raise HftoolError(f"{where}: row {row}: '{column}' is {type(text).__name__}, not a string")
        if text and text.strip():
            yield text.strip()


def _read_files(paths: list[str], cfg: DataConfig, streaming: bool, names: SettingNames) -> Iterable[str]:
    sources = [_read_file(Path(p).expanduser(), cfg, streaming, names) for p in paths]
    if streaming:
        return (doc for source in sources for doc in source)
    return [doc for source in sources for doc in source]


def _hub_split(cfg: DataConfig, split: str, streaming: bool, names: SettingNames) -> Iterable[str]:
    from datasets import load_dataset

    from hftool.hub import datasets_offline_unless_reachable, hub_reachable, offline_mode

    name = cfg.hub_dataset + (f" ({cfg.hub_config})" if cfg.hub_config else "")
    try:
        with datasets_offline_unless_reachable():
            dataset = load_dataset(cfg.hub_dataset, cfg.hub_config, split=split, streaming=streaming)
    except Exception as exc:
        if offline_mode() or not hub_reachable():
            raise HftoolError(f"{names.hub_dataset}={name}: not cached and the Hub cannot be reached; "
                              f"pass local files with {names.files} instead") from None
        raise HftoolError(f"{names.hub_dataset}={name} split '{split}': {str(exc).splitlines()[0][:200]}") from None
    return (t.strip() for t in _dataset_column(dataset, cfg.text_column, name, names) if t and t.strip())


def load_documents(cfg: DataConfig, seed: int, names: SettingNames = RECIPE_NAMES) -> Documents:
    """Read the configured source and split off validation documents (``names``: how errors name the
    settings)."""
    from hftool.data.builtin_corpus import python_docs_file

    streaming = cfg.streaming
    if cfg.files:
        train: Iterable[str] = _read_files(cfg.files, cfg, streaming, names)
        source = cfg.describe()
    elif cfg.hub_dataset:
        train = _hub_split(cfg, cfg.hub_split, streaming, names)
        source = cfg.describe()
    else:
        train = read_text_documents(python_docs_file())
        source = cfg.describe()

    if cfg.validation_files:
        validation = list(_read_files(cfg.validation_files, cfg, False, names))
    elif cfg.hub_dataset and cfg.hub_validation_split:
        validation = list(_hub_split(cfg, cfg.hub_validation_split, False, names))
    elif streaming:
        iterator = iter(train)
        validation = [doc for _, doc in zip(range(cfg.streaming_validation_documents), iterator, strict=False)]
        train = iterator
    else:
        train, validation = _split_documents(list(train), cfg.validation_fraction, seed)

    if not streaming:
        train = list(train)
        if cfg.max_documents is not None:
            train = train[:cfg.max_documents]
        if not train:
            raise HftoolError(f"{source}: no text (the corpus is empty or only blank lines); "
                              f"check {names.files}")
    return Documents(train=train, validation=validation, source=source)


def _split_documents(docs: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out a seeded random ``fraction`` of documents (at least one when there are several)."""
    if fraction <= 0 or len(docs) < 2:
        return docs, []
    count = max(1, round(len(docs) * fraction))
    held_out = set(random.Random(seed).sample(range(len(docs)), count))
    return ([d for i, d in enumerate(docs) if i not in held_out],
            [d for i, d in enumerate(docs) if i in held_out])


# ---- tokenization and packing ---------------------------------------------------------------------------

def tokenize_documents(docs: Iterable[str], tokenizer, separator_id: int | None,
                       batch_size: int = 1000) -> Iterator[np.ndarray]:
    """Token ids per batch of documents, each document followed by ``separator_id`` (e.g. EOS)."""
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == batch_size:
            yield _encode(batch, tokenizer, separator_id)
            batch = []
    if batch:
        yield _encode(batch, tokenizer, separator_id)


def _encode(batch: list[str], tokenizer, separator_id: int | None) -> np.ndarray:
    ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
    if separator_id is not None:
        ids = [seq + [separator_id] for seq in ids]
    return np.fromiter((t for seq in ids for t in seq), dtype=np.int32)


@dataclass
class PackedBlocks:
    """Fixed-length blocks of token ids: ``blocks[i]`` is one training example."""

    blocks: np.ndarray  # (num_blocks, block_size) int32
    total_tokens: int
    dropped_tokens: int

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.blocks[index]


def pack_tokens(tokens: np.ndarray, block_size: int) -> PackedBlocks:
    """Cut one token stream into ⌊N / block_size⌋ blocks; the remainder is dropped and reported."""
    count = len(tokens) // block_size
    blocks = tokens[:count * block_size].reshape(count, block_size)
    return PackedBlocks(blocks=blocks, total_tokens=len(tokens), dropped_tokens=len(tokens) - count * block_size)


def tokenized_cache_file(cache_dir: Path, kind: str, suffix: str, tokenizer, docs: Sequence[str],
                         settings: str) -> Path:
    """Where a tokenized corpus is cached: named by a digest of the tokenizer's full definition, the settings
    and every document, so changing any of them reads (and writes) a different file."""
    digest = hashlib.sha256()
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(f"|{settings}|".encode())
    for doc in docs:
        digest.update(doc.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return cache_dir / f"{kind}-{digest.hexdigest()[:24]}{suffix}"


def pack_documents(docs: list[str], tokenizer, block_size: int, separator_id: int | None,
                   cache_dir: Path | None = None) -> PackedBlocks:
    """Tokenize and pack ``docs``, reusing a cached result for the same text, tokenizer and block size."""
    cache_file = None
    if cache_dir is not None:
        cache_file = tokenized_cache_file(cache_dir, "blocks", ".npy", tokenizer, docs, f"{block_size}|{separator_id}")
        if cache_file.is_file():
            tokens = np.load(cache_file)
            return pack_tokens(tokens, block_size)
    parts = list(tokenize_documents(docs, tokenizer, separator_id))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npy")
        np.save(tmp, tokens)
        tmp.replace(cache_file)
    return pack_tokens(tokens, block_size)


class StreamingBlocks:
    """Blocks packed on the fly from a document stream, for corpora that do not fit in memory.

    It is an iterable (no length); the engine takes consecutive blocks for each step and, on resume, skips
    the blocks already consumed, so the data order is the same as in an uninterrupted run.
    """

    def __init__(self, make_docs, tokenizer, block_size: int, separator_id: int | None):
        self.make_docs = make_docs
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.separator_id = separator_id

    def __iter__(self) -> Iterator[np.ndarray]:
        buffer = np.zeros(0, dtype=np.int32)
        for chunk in tokenize_documents(self.make_docs(), self.tokenizer, self.separator_id, batch_size=64):
            buffer = np.concatenate([buffer, chunk])
            count = len(buffer) // self.block_size
            for i in range(count):
                yield buffer[i * self.block_size:(i + 1) * self.block_size]
            buffer = buffer[count * self.block_size:]
