"""Masked-word and next-token predictions: the model's top-k candidates with their probabilities."""

from __future__ import annotations

from dataclasses import dataclass

from hftool.errors import HftoolError
from hftool.explain.loading import LoadedModel, encode

MAX_TOP_K = 1000


@dataclass
class Candidate:
    token_id: int
    token: str
    text: str
    probability: float
    logit: float


@dataclass
class TokenPredictions:
    """The top candidates for one position of the input: a masked token, or the token after the text."""

    position: int
    candidates: list[Candidate]


def check_top_k(top_k: int, vocab_size: int | None = None) -> None:
    limit = min(MAX_TOP_K, vocab_size) if vocab_size else MAX_TOP_K
    if not 1 <= top_k <= limit:
        raise HftoolError(f"--top-k {top_k}: use a number from 1 to {limit}")


def top_candidates(logits, tokenizer, top_k: int) -> list[Candidate]:
    """The ``top_k`` most probable tokens of one logits row: softmax probabilities, highest first."""
    import torch

    logits = logits.float()
    check_top_k(top_k, logits.shape[-1])
    probabilities = torch.softmax(logits, dim=-1)
    best = torch.topk(probabilities, top_k)
    return [Candidate(token_id=int(token_id), token=tokenizer.convert_ids_to_tokens(int(token_id)),
                      text=tokenizer.decode([int(token_id)]), probability=float(probability),
                      logit=float(logits[token_id]))
            for probability, token_id in zip(best.values, best.indices, strict=True)]


def check_mask_text(tokenizer, text: str, name: str) -> str:
    """The tokenizer's mask token, after checking that ``text`` contains it."""
    mask = tokenizer.mask_token
    if mask is None:
        raise HftoolError(f"--model {name}: its tokenizer has no mask token, so it cannot fill masks; "
                          "use 'hftool explain next-token' with it")
    if mask not in text:
        raise HftoolError(f"--text has no {mask} token; put {mask} where the missing word goes, "
                          f"e.g. \"A robot must obey the {mask} it is given.\"")
    return mask


def fill_mask(loaded: LoadedModel, text: str, top_k: int = 10) -> list[TokenPredictions]:
    """Top-k candidates for every mask token in ``text``, from a model with a masked-LM head."""
    import torch

    check_mask_text(loaded.tokenizer, text, loaded.name)
    encoding = encode(loaded, text)
    mask_positions = (encoding["input_ids"][0] == loaded.tokenizer.mask_token_id).nonzero().flatten().tolist()
    if not mask_positions:
        raise HftoolError(f"--text: the tokenizer did not keep {loaded.tokenizer.mask_token} as one token; "
                          "separate it from the words around it with spaces")
    with torch.inference_mode():
        logits = loaded.model(**encoding).logits[0]
    return [TokenPredictions(position, top_candidates(logits[position], loaded.tokenizer, top_k))
            for position in mask_positions]


def next_token(loaded: LoadedModel, text: str, top_k: int = 10) -> TokenPredictions:
    """Top-k candidates for the token that follows ``text``, from a causal language model."""
    import torch

    encoding = encode(loaded, text)
    with torch.inference_mode():
        logits = loaded.model(**encoding).logits[0]
    last = logits.shape[0] - 1
    return TokenPredictions(position=last, candidates=top_candidates(logits[last], loaded.tokenizer, top_k))
