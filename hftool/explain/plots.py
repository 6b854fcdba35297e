"""PNG figures for ``hftool explain``, drawn with matplotlib's Agg renderer and written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from hftool.errors import HftoolError

DPI = 100
MAX_FIGURE_INCHES = 40.0
MIN_LABEL_POINTS = 4.0


def new_figure(width: float, height: float):
    """A figure outside pyplot: no global state, no GUI backend, always the Agg renderer."""
    from matplotlib.figure import Figure

    return Figure(figsize=(min(width, MAX_FIGURE_INCHES), min(height, MAX_FIGURE_INCHES)), dpi=DPI,
                  layout="constrained")


def check_output(path: Path, overwrite: bool = True) -> Path:
    """Refuse an output that is a folder, not a .png name, or (without ``overwrite``) an existing file,
    before any model is loaded."""
    from hftool.outputs import check_output_file

    if path.is_dir():
        raise HftoolError(f"--output {path} is a folder; pass a file name such as {path / 'explain.png'}")
    if path.suffix.lower() != ".png":
        raise HftoolError(f"--output {path}: explain writes PNG images; use a name ending in .png")
    return check_output_file(path, "--output", overwrite)


def save_png(figure, path: Path) -> Path:
    """Write ``figure`` as PNG to a temporary file beside ``path``, then rename: no half-written image."""
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def plain(text: str) -> str:
    """Text shown as typed: a ``$`` would otherwise start matplotlib's math mode."""
    return text.replace("$", r"\$")


def _label_size(cell_inches: float, count: int) -> float:
    return min(9.0, 0.8 * cell_inches * 72 / max(count, 1))


def _token_axes(axes, tokens: list[str], cell_inches: float, show_x: bool, show_y: bool) -> None:
    size = _label_size(cell_inches, len(tokens))
    ticks = range(len(tokens))
    tokens = [plain(token) for token in tokens]
    axes.set_xticks(ticks, tokens if show_x and size >= MIN_LABEL_POINTS else [], rotation=90, fontsize=size)
    axes.set_yticks(ticks, tokens if show_y and size >= MIN_LABEL_POINTS else [], fontsize=size)


def positional_figure(encoding: np.ndarray, dimensions: list[int], learned: np.ndarray | None = None,
                      model_name: str | None = None):
    """Sinusoidal encoding (heatmap, dimension curves, similarity between positions), and a learned table."""
    from hftool.explain.positional import cosine_similarity_matrix

    rows = 2 if learned is not None else 1
    figure = new_figure(18, 5.5 * rows)
    grid = figure.subplots(rows, 3, squeeze=False)
    tables = [("sinusoidal encoding", encoding)]
    if learned is not None:
        tables.append((f"learned position embeddings of {plain(model_name)}", learned))
    for row, (title, table) in zip(grid, tables, strict=True):
        heatmap, curves, similarity = row
        image = heatmap.imshow(table, aspect="auto", cmap="RdBu_r", interpolation="nearest",
                               vmin=-np.abs(table).max(), vmax=np.abs(table).max())
        heatmap.set(title=f"{title} ({table.shape[0]} positions × {table.shape[1]} dims)",
                    xlabel="dimension", ylabel="position")
        figure.colorbar(image, ax=heatmap)
        for dim in (d for d in dimensions if d < table.shape[1]):
            curves.plot(np.arange(table.shape[0]), table[:, dim], label=f"dim {dim}")
        curves.set(title="value of a few dimensions along the positions", xlabel="position", ylabel="value")
        curves.legend(loc="upper right", fontsize=8)
        image = similarity.imshow(cosine_similarity_matrix(table), cmap="viridis", vmin=-1, vmax=1,
                                  interpolation="nearest")
        similarity.set(title="cosine similarity between positions", xlabel="position", ylabel="position")
        figure.colorbar(image, ax=similarity)
    return figure


def attention_figure(maps):
    """One heatmap per (layer, head): row = the token attending, column = the token attended to."""
    layer_count, head_count, token_count, _ = maps.weights.shape
    cell = min(max(2.8, 0.22 * token_count), 6.0, MAX_FIGURE_INCHES / max(layer_count, head_count))
    figure = new_figure(cell * head_count + 1.2, cell * layer_count + 0.8)
    grid = figure.subplots(layer_count, head_count, squeeze=False)
    top = float(maps.weights.max())
    image = None
    for layer_index, layer in enumerate(maps.layers):
        for head_index, head in enumerate(maps.heads):
            axes = grid[layer_index][head_index]
            image = axes.imshow(maps.weights[layer_index, head_index], cmap="viridis", vmin=0, vmax=top,
                                interpolation="nearest")
            axes.set_title(f"layer {layer} · head {head}", fontsize=9)
            is_bottom, is_left = layer_index == layer_count - 1, head_index == 0
            _token_axes(axes, maps.tokens, cell, show_x=is_bottom, show_y=is_left)
    kind = "causal: a token sees only itself and earlier tokens" if maps.causal else "bidirectional"
    figure.suptitle(f"{plain(maps.architecture)} attention ({kind}); rows attend to columns")
    figure.colorbar(image, ax=grid, shrink=0.6, label="attention weight")
    return figure


def _shorten(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def embeddings_figure(result):
    """Cosine similarities of the word between sentences: contextual vectors beside static ones."""
    count = len(result.sentences)
    short_labels = [f"S{index + 1}" for index in range(count)]
    long_labels = [f"{label}: {plain(_shorten(sentence, 100))}"
                   for label, sentence in zip(short_labels, result.sentences, strict=True)]
    size = max(4.0, 0.9 * count + 2)
    figure = new_figure(2 * size + 2, size + 0.25 * count + 0.5)
    panels = figure.subplots(1, 2)
    titles = (f"contextual (hidden state, layer {result.layer})", "static (input embedding rows)")
    matrices = (result.contextual_similarity, result.static_similarity)
    for axes, title, matrix in zip(panels, titles, matrices, strict=True):
        image = axes.imshow(matrix, cmap="viridis", vmin=-1, vmax=1)
        axes.set_title(f"'{plain(result.word)}': {title}")
        axes.set_xticks(range(count), short_labels)
        axes.set_yticks(range(count), short_labels)
        for row in range(count):
            for column in range(count):
                axes.text(column, row, f"{matrix[row, column]:.3f}", ha="center", va="center",
                          color="black" if matrix[row, column] > 0.3 else "white", fontsize=9)
    figure.colorbar(image, ax=panels, shrink=0.8, label="cosine similarity")
    figure.supxlabel("\n".join(long_labels), x=0.02, ha="left", fontsize=9)
    return figure


def predictions_figure(panels: list[tuple[str, list]]):
    """Horizontal bars of the candidates' probabilities, most probable on top; one panel per position."""
    top_k = max(len(candidates) for _, candidates in panels)
    figure = new_figure(8, (0.35 * top_k + 1.2) * len(panels))
    grid = figure.subplots(len(panels), 1, squeeze=False)
    for (title, candidates), (axes,) in zip(panels, grid, strict=True):
        labels = [plain(repr(candidate.text)) for candidate in candidates]
        probabilities = [candidate.probability for candidate in candidates]
        bars = axes.barh(range(len(candidates)), probabilities, color="tab:blue")
        axes.bar_label(bars, [f"{p:.4f}" for p in probabilities], padding=3, fontsize=8)
        axes.set_yticks(range(len(candidates)), labels)
        axes.invert_yaxis()
        axes.set_xlim(0, min(1.0, max(probabilities) * 1.25))
        axes.set(title=plain(title), xlabel="probability")
    return figure
