"""What an objective's setup (causal LM or BERT) hands to the pretraining run.

The recipe schema lives in :mod:`hftool.schemas.pretrain`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PretrainJob:
    """What an objective's setup hands to the engine, and how it saves the result."""

    model: object
    train_data: object
    task: object
    data_stats: dict
    finish: object  # callable(model, out, summary, state_dict): writes the model folder and reports on it
