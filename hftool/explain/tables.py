"""Terminal tables (rich) for ``hftool explain``: the numbers behind each picture, readable at a glance."""

from __future__ import annotations

import numpy as np
from rich.table import Table
from rich.text import Text

PREVIEW_POSITIONS = 5
PREVIEW_DIMENSIONS = 6
SIMILARITY_DISTANCES = [1, 2, 5, 10, 50]


def _cell(value) -> Text:
    """A cell shown literally: tokens like ``[MASK]`` must not be read as rich markup."""
    return Text(str(value))


def encoding_preview(encoding: np.ndarray) -> Table:
    positions, dims = min(PREVIEW_POSITIONS, encoding.shape[0]), min(PREVIEW_DIMENSIONS, encoding.shape[1])
    table = Table(title=f"sinusoidal encoding, first {positions} positions × {dims} dimensions")
    table.add_column("pos", justify="right")
    for dim in range(dims):
        table.add_column(f"dim {dim}", justify="right")
    for position in range(positions):
        table.add_row(str(position), *(f"{encoding[position, dim]:+.3f}" for dim in range(dims)))
    return table


def distance_similarity(columns: dict[str, dict[int, float]]) -> Table:
    """How similar positions are as they move apart, one column per encoding."""
    table = Table(title="mean cosine similarity of two positions, by distance")
    table.add_column("distance", justify="right")
    for name in columns:
        table.add_column(_cell(name), justify="right")
    distances = sorted({distance for values in columns.values() for distance in values})
    for distance in distances:
        table.add_row(str(distance), *(f"{values[distance]:.3f}" if distance in values else "-"
                                       for values in columns.values()))
    return table


def strongest_attention(maps, links: list[list[tuple[int, float]]]) -> Table:
    heads = f"the {len(maps.heads)} heads shown" if len(maps.heads) > 1 else f"head {maps.heads[0]}"
    table = Table(title=f"the token each token attends to most (mean over {heads})")
    table.add_column("#", justify="right")
    table.add_column("token")
    for layer in maps.layers:
        table.add_column(f"layer {layer}")
    for query, token in enumerate(maps.tokens):
        cells = [_cell(f"{maps.tokens[key]} ({weight:.2f})") for key, weight in
                 (layer_links[query] for layer_links in links)]
        table.add_row(str(query), _cell(token), *cells)
    return table


def word_contexts(result) -> Table:
    table = Table(title=_cell(f"'{result.word}' in each sentence"))
    table.add_column("S", justify="right")
    table.add_column("sentence")
    table.add_column("subword tokens averaged")
    for index, (sentence, subwords) in enumerate(zip(result.sentences, result.subwords, strict=True)):
        table.add_row(f"S{index + 1}", _cell(sentence), _cell(" ".join(subwords)))
    return table


def word_similarities(result) -> Table:
    table = Table(title=_cell(f"cosine similarity of '{result.word}' between sentences"))
    table.add_column("pair")
    table.add_column(f"contextual (layer {result.layer})", justify="right")
    table.add_column("static", justify="right")
    contextual, static = result.contextual_similarity, result.static_similarity
    count = len(result.sentences)
    for first in range(count):
        for second in range(first + 1, count):
            table.add_row(f"S{first + 1} · S{second + 1}", f"{contextual[first, second]:.4f}",
                          f"{static[first, second]:.4f}")
    return table


def candidates_table(title: str, candidates) -> Table:
    table = Table(title=_cell(title))
    table.add_column("rank", justify="right")
    table.add_column("token")
    table.add_column("text")
    table.add_column("id", justify="right")
    table.add_column("probability", justify="right")
    table.add_column("logit", justify="right")
    for rank, candidate in enumerate(candidates, start=1):
        table.add_row(str(rank), _cell(candidate.token), _cell(repr(candidate.text)), str(candidate.token_id),
                      f"{candidate.probability:.4f}", f"{candidate.logit:.3f}")
    return table
