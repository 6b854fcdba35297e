"""Attention weights: for every layer and head, how much each token looks at every other token."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hftool.errors import HftoolError
from hftool.explain.loading import LoadedModel, encode, is_encoder_only


@dataclass
class AttentionMaps:
    """Attention of one text: ``weights[l, h, q, k]`` is how much query token q attends to key token k.

    ``layers`` and ``heads`` hold the 1-based numbers of the rows kept in ``weights``.
    """

    tokens: list[str]
    weights: np.ndarray
    layers: list[int]
    heads: list[int]
    causal: bool
    architecture: str


def select_numbers(requested: list[int] | None, count: int, flag: str) -> list[int]:
    """1-based layer/head numbers (negative counts from the end); all of them when none are requested."""
    if not requested:
        return list(range(1, count + 1))
    chosen = []
    for number in requested:
        resolved = number + count + 1 if number < 0 else number
        if not 1 <= resolved <= count:
            raise HftoolError(f"{flag} {number}: the model has {count}, numbered 1 to {count} "
                              f"(or -1 for the last)")
        if resolved not in chosen:
            chosen.append(resolved)
    return chosen


def token_labels(tokenizer, input_ids) -> list[str]:
    """The tokens exactly as the model sees them (``Ġ`` marks a leading space in byte-level BPE)."""
    return tokenizer.convert_ids_to_tokens([int(i) for i in input_ids])


def attention_maps(loaded: LoadedModel, text: str, layers: list[int] | None = None,
                   heads: list[int] | None = None) -> AttentionMaps:
    """Run ``text`` through a model loaded with eager attention; keep the chosen layers' and heads'."""
    import torch

    encoding = encode(loaded, text)
    with torch.inference_mode():
        output = loaded.model(**encoding, output_attentions=True)
    if not output.attentions or output.attentions[0] is None:
        raise HftoolError(f"--model {loaded.name}: {loaded.architecture} did not return attention weights")
    layer_numbers = select_numbers(layers, len(output.attentions), "--layer")
    head_numbers = select_numbers(heads, output.attentions[0].shape[1], "--head")
    weights = np.stack([output.attentions[layer - 1][0, [head - 1 for head in head_numbers]].float().numpy()
                        for layer in layer_numbers])
    return AttentionMaps(tokens=token_labels(loaded.tokenizer, encoding["input_ids"][0]), weights=weights,
                         layers=layer_numbers, heads=head_numbers,
                         causal=not is_encoder_only(loaded.model.config), architecture=loaded.architecture)


def strongest_links(maps: AttentionMaps) -> list[list[tuple[int, float]]]:
    """For each layer kept and each query token: the key token it attends to most, averaged over the heads."""
    mean_over_heads = maps.weights.mean(axis=1)
    return [[(int(row.argmax()), float(row.max())) for row in layer] for layer in mean_over_heads]
