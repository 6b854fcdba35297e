"""``hftool explain``'s options: what to compute and draw (positions, layers, heads, candidates)."""

from __future__ import annotations

from dataclasses import dataclass

from hftool.schemas.fields import at_least, setting


@dataclass
class ExplainOptions:
    d_model: int | None = setting(None, flag="--d-model", bound=at_least(2),
                                  help="Width of the encoding; default 512, or the hidden size of --model.")
    positions: int = setting(100, flag="--positions", bound=at_least(1),
                             help="How many positions (rows) to compute and draw.")
    dims: list[int] | None = setting(None, flag="--dim", bound=at_least(0),
                                     help="Dimension to draw as a curve (repeatable); default a few, fast to slow.")
    layers: list[int] | None = setting(None, flag="--layer", short="-l", bound=at_least(-1),
                                       help="Layer to show, 1 to N or -1 for the last (repeatable); all if unset.")
    heads: list[int] | None = setting(None, flag="--head", bound=at_least(-1),
                                      help="Head to show, 1 to H or -1 for the last (repeatable); all if unset.")
    layer: int = setting(-1, flag="--layer", short="-l", bound=at_least(-1),
                         help="Hidden state to use: 0 is the embedding layer, N block N, -1 the last.")
    top_k: int = setting(10, flag="--top-k", short="-k", bound=at_least(1), help="How many candidates to show.")
    trust_remote_code: bool = setting(False, flag="--trust-remote-code",
                                      help="Run Python code shipped with a Hub model (only for models you trust).")
