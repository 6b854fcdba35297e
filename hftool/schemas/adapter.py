"""The ``adapter:`` section every fine-tuning recipe has (LoRA through ``peft``, :mod:`hftool.adapters`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class AdapterSettings:
    """The recipe's ``adapter:`` section: ``kind: lora`` trains low-rank adapters (and the new task head) instead
    of every weight; ``none`` is a full fine-tune."""

    kind: Literal["none", "lora"] = "none"
    r: int = 8  # rank of the low-rank update
    alpha: int = 16  # the update is scaled by alpha / r
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: every block linear layer of BERT, GPT-2 and BLOOM
    modules_to_save: list[str] | None = None  # None: the task's new head (classifier, score, qa_outputs)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"adapter.r={self.r} must be at least 1")
        if self.alpha <= 0:
            raise ValueError(f"adapter.alpha={self.alpha} must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"adapter.dropout={self.dropout} must be in [0, 1)")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("adapter.target_modules is empty; leave it out for the architecture's default")

    @property
    def enabled(self) -> bool:
        return self.kind != "none"
