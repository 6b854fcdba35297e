"""How SQuAD contexts are cut into windows, and the one place their defaults are declared.

Recipes (``data.max_length``), ``hftool answer`` and ``hftool evaluate squad`` all take these defaults from
here. This module is apart from ``hftool.data.squad`` (which re-exports it) because it imports nothing heavy:
the CLI reads the defaults when it starts, before any command runs, and ``squad`` imports numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

from hftool.errors import HftoolError

MAX_LENGTH = 384  # tokens per window: question + context + special tokens (BERT's SQuAD setting)
DOC_STRIDE = 128  # context tokens shared by consecutive windows of one long context
MAX_ANSWER_LENGTH = 30  # longest answer predicted, in tokens
N_BEST = 20  # start/end candidates per window considered by post-processing
MIN_MAX_LENGTH = 8  # the shortest window: special tokens, a question and some context


@dataclass(frozen=True)
class WindowSettings:
    """How contexts are cut into windows and how answers are read back; ``prefix`` names them in errors
    as recipe fields (``data.``) or as command-line flags (``--``)."""

    max_length: int = MAX_LENGTH
    doc_stride: int = DOC_STRIDE
    max_answer_length: int = MAX_ANSWER_LENGTH
    n_best: int = N_BEST
    prefix: str = "data."

    def name(self, field_name: str) -> str:
        if self.prefix == "--":
            return "--" + field_name.replace("_", "-")
        return self.prefix + field_name

    def validate(self) -> None:
        """Checks that need no tokenizer: run before anything is read or tokenized."""
        if self.max_length < MIN_MAX_LENGTH:
            raise HftoolError(f"{self.name('max_length')}={self.max_length} must be at least {MIN_MAX_LENGTH}")
        if self.doc_stride < 0:
            raise HftoolError(f"{self.name('doc_stride')}={self.doc_stride} must be 0 or more")
        if self.doc_stride >= self.max_length:
            raise HftoolError(f"{self.name('doc_stride')}={self.doc_stride} is too large for "
                              f"{self.name('max_length')}={self.max_length}: the overlap between windows "
                              f"must be smaller than the window ({DOC_STRIDE} for {MAX_LENGTH} is usual)")
        for name in ("max_answer_length", "n_best"):
            if getattr(self, name) < 1:
                raise HftoolError(f"{self.name(name)}={getattr(self, name)} must be at least 1")

    def check_positions(self, config, where: str) -> None:
        """A window longer than the model's position table (``config``'s, of the model ``where`` names) would
        index past it."""
        positions = getattr(config, "max_position_embeddings", None)
        if positions is not None and self.max_length > positions:
            raise HftoolError(f"{self.name('max_length')}={self.max_length} is longer than the {positions} "
                              f"positions of {where}; lower it")
