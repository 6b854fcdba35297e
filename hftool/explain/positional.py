"""Position information: the sinusoidal encoding of "Attention Is All You Need", and learned tables."""

from __future__ import annotations

import numpy as np

from hftool.errors import HftoolError

SINUSOID_BASE = 10000.0
DEFAULT_D_MODEL = 512
MAX_POSITIONS = 10_000
MAX_D_MODEL = 8192

POSITION_TABLE_NAMES = ("wpe", "position_embeddings", "embed_positions")
ALIBI_MODEL_TYPES = ("bloom", "mpt")


def sinusoidal_encoding(positions: int, d_model: int, base: float = SINUSOID_BASE) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / base^(2i/d)) and PE(pos, 2i+1) = cos(pos / base^(2i/d)), shape (positions, d).

    Each pair of dimensions is a clock ticking at its own frequency, from one turn every 2π positions
    (dimension 0) to one every 2π·base positions (the last pair), so every position gets a distinct pattern.
    """
    check_encoding_size(positions, d_model)
    pair_index = np.arange(d_model) // 2
    frequencies = 1.0 / base ** (2 * pair_index / d_model)
    angles = np.arange(positions)[:, None] * frequencies[None, :]
    return np.where(np.arange(d_model) % 2 == 0, np.sin(angles), np.cos(angles))


def check_encoding_size(positions: int, d_model: int) -> None:
    if not 1 <= positions <= MAX_POSITIONS:
        raise HftoolError(f"--positions {positions}: use a number from 1 to {MAX_POSITIONS}")
    if not 2 <= d_model <= MAX_D_MODEL:
        raise HftoolError(f"--d-model {d_model}: use a number from 2 to {MAX_D_MODEL}")


def default_curve_dimensions(d_model: int) -> list[int]:
    """A few dimensions spanning the frequencies: the fastest pair (0, 1), then slower and slower sines."""
    slower = [d_model // 8, d_model // 4, d_model // 2]
    return sorted({0, 1, *(dim - dim % 2 for dim in slower)} & set(range(d_model)))


def check_dimensions(dimensions: list[int], d_model: int) -> None:
    for dim in dimensions:
        if not 0 <= dim < d_model:
            raise HftoolError(f"--dim {dim}: dimensions are numbered 0 to {d_model - 1} "
                              f"for --d-model {d_model}")


def cosine_similarity_matrix(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity between every pair of rows (zero rows count as similarity 0)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return unit @ unit.T


def similarity_by_distance(table: np.ndarray, distances: list[int]) -> dict[int, float]:
    """Mean cosine similarity of positions ``d`` apart, for each distance shorter than the table."""
    similarity = cosine_similarity_matrix(table)
    return {distance: float(np.diagonal(similarity, offset=distance).mean())
            for distance in distances if 0 < distance < len(table)}


def position_table(model) -> np.ndarray | None:
    """The model's trained position table (GPT-2 ``wpe``, BERT ``position_embeddings``), or None."""
    import torch

    for module_name, module in model.named_modules():
        if module_name.rsplit(".", 1)[-1] in POSITION_TABLE_NAMES and isinstance(module, torch.nn.Embedding):
            return module.weight.detach().float().cpu().numpy()
    return None


def uses_alibi(config) -> bool:
    return config.model_type in ALIBI_MODEL_TYPES or bool(getattr(config, "alibi", False))


def learned_position_embeddings(name: str, trust_remote_code: bool = False,
                                flag: str = "--model") -> np.ndarray:
    """Load ``name`` and return its learned position embeddings, shape (positions, hidden size).

    Models that put position into attention instead (ALiBi in BLOOM, rotary in Llama) have no such table;
    that is an error which says so, before any weights are read where the config tells.
    """
    from hftool.explain.loading import architecture_name, load_config, load_model

    config = load_config(name, trust_remote_code, flag)
    architecture = architecture_name(config)
    if uses_alibi(config):
        raise HftoolError(f"{flag} {name}: {architecture} has no learned position embeddings; it uses ALiBi, "
                          "a per-head penalty on attention scores growing with the distance between tokens "
                          f"(see it with 'hftool explain attention --model {name}')")
    table = position_table(load_model(name, "base", trust_remote_code, flag=flag).model)
    if table is None:
        raise HftoolError(f"{flag} {name}: {architecture} has no learned position-embedding table (it may "
                          "use rotary or relative positions inside attention); pass a GPT-2 or BERT model")
    return table
