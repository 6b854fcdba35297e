"""Contextual embeddings: the same word gets a different vector in each sentence, its static one does not."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from hftool.errors import HftoolError
from hftool.explain.loading import LoadedModel, encode
from hftool.explain.positional import cosine_similarity_matrix


@dataclass
class WordEmbeddings:
    """One word's vectors, one row per sentence.

    ``contextual`` is the mean of the word's subword hidden states at ``layer`` (0 is the embedding layer's
    output, N the N-th transformer block); ``static`` is the mean of the same subwords' rows of the input
    embedding matrix, which no context can change.
    """

    word: str
    sentences: list[str]
    subwords: list[list[str]]
    contextual: np.ndarray
    static: np.ndarray
    layer: int

    @property
    def contextual_similarity(self) -> np.ndarray:
        return cosine_similarity_matrix(self.contextual)

    @property
    def static_similarity(self) -> np.ndarray:
        return cosine_similarity_matrix(self.static)


def find_word(sentence: str, word: str) -> tuple[int, int]:
    """Character span of the first whole-word, case-insensitive occurrence of ``word`` in ``sentence``."""
    if not word.strip():
        raise HftoolError("--word is empty; pass the word to follow, e.g. --word bank")
    match = re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", sentence, flags=re.IGNORECASE)
    if match is None:
        raise HftoolError(f"--word {word!r} is not in --sentence {sentence!r}; pass sentences containing it")
    return match.span()


def word_spans(word: str, sentences: list[str]) -> list[tuple[int, int]]:
    """Where ``word`` is in each sentence; checked before any model is loaded so mistakes fail fast."""
    if len(sentences) < 2:
        raise HftoolError("pass at least two --sentence options to compare the word across contexts")
    return [find_word(sentence, word) for sentence in sentences]


def word_token_positions(offsets, span: tuple[int, int]) -> list[int]:
    """Indices of the tokens whose characters overlap ``span`` (special tokens have empty offsets)."""
    start, end = span
    return [index for index, (token_start, token_end) in enumerate(offsets)
            if token_end > token_start and token_start < end and token_end > start]


def resolve_layer(layer: int, block_count: int) -> int:
    """``--layer`` as an index into the hidden states: 0 is the embedding layer, -1 the last block."""
    if not -(block_count + 1) <= layer <= block_count:
        raise HftoolError(f"--layer {layer}: use 0 (embedding layer) to {block_count} (last block), "
                          "or -1 for the last")
    return layer if layer >= 0 else block_count + 1 + layer


def word_embeddings(loaded: LoadedModel, word: str, sentences: list[str], layer: int = -1) -> WordEmbeddings:
    """Contextual and static vectors of ``word`` in each sentence, from the model's hidden states."""
    import torch

    if not getattr(loaded.tokenizer, "is_fast", False):
        raise HftoolError(f"--model {loaded.name}: its tokenizer is slow (Python); a fast one is needed "
                          "to find the word's tokens")
    input_table = loaded.model.get_input_embeddings().weight.detach().float()
    contextual, static, subwords = [], [], []
    for sentence, span in zip(sentences, word_spans(word, sentences), strict=True):
        encoding = encode(loaded, sentence, "--sentence", return_offsets_mapping=True)
        offsets = encoding.pop("offset_mapping")[0].tolist()
        positions = word_token_positions(offsets, span)
        if not positions:
            raise HftoolError(f"--word {word!r}: no token of --sentence {sentence!r} covers it")
        with torch.inference_mode():
            hidden_states = loaded.model(**encoding, output_hidden_states=True).hidden_states
        resolved_layer = resolve_layer(layer, len(hidden_states) - 1)
        hidden = hidden_states[resolved_layer][0]
        token_ids = encoding["input_ids"][0, positions]
        contextual.append(hidden[positions].float().mean(dim=0).numpy())
        static.append(input_table[token_ids].mean(dim=0).numpy())
        subwords.append(loaded.tokenizer.convert_ids_to_tokens(token_ids.tolist()))
    return WordEmbeddings(word=word, sentences=list(sentences), subwords=subwords,
                          contextual=np.stack(contextual), static=np.stack(static), layer=resolved_layer)
