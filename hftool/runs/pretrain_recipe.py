"""``hftool pretrain``'s recipe schema, and what an objective's setup hands to the run.

Kept apart from :mod:`hftool.runs.pretrain` so that reading and checking a recipe imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hftool.adapters import AdapterSettings
from hftool.data.bert_examples import BertExamplesConfig
from hftool.data.text import DataConfig
from hftool.engine.config import TrainConfig
from hftool.errors import HftoolError
from hftool.models import Architecture, check_config_keys

Objective = Literal["causal-lm", "mlm", "mlm-nsp"]
OBJECTIVE_ARCHITECTURES = {"causal-lm": {"gpt2", "bloom"}, "mlm": {"bert"}, "mlm-nsp": {"bert"}}


@dataclass
class ModelConfig:
    """The network: a fresh one from ``architecture`` + ``config``, or a checkpoint to continue from."""

    architecture: Architecture = "gpt2"
    init_from: str | None = None  # folder, Hub id or alias (gpt2, bloom-560m, ...) to continue pretraining
    config: dict = field(default_factory=dict)  # fields of the transformers config (n_layer, hidden_size, ...)
    trust_remote_code: bool = False


@dataclass
class TokenizerConfig:
    """An existing tokenizer (``path``), the checkpoint's own, or one trained on the training split."""

    path: str | None = None
    kind: Literal["byte-bpe", "wordpiece"] | None = None  # default: byte-bpe for GPT-2/BLOOM, wordpiece for BERT
    vocab_size: int | None = None  # default: 30,522 for WordPiece (BERT's), 8,000 for byte-level BPE
    lowercase: bool = False
    min_frequency: int = 2
    resize_embeddings: bool = False  # grow the model when the tokenizer has more tokens than it has rows


@dataclass
class PretrainRecipe:
    """A pretraining run: objective, model, tokenizer, data and training settings."""

    objective: Objective = "causal-lm"
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    bert: BertExamplesConfig = field(default_factory=BertExamplesConfig)  # objectives mlm and mlm-nsp
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/pretrain"))
    adapter: AdapterSettings = field(default_factory=AdapterSettings)  # LoRA for continued causal-LM pretraining

    def validate(self) -> None:
        allowed = OBJECTIVE_ARCHITECTURES[self.objective]
        if self.model.architecture not in allowed:
            raise HftoolError(f"objective={self.objective} needs model.architecture in {sorted(allowed)}, "
                              f"got {self.model.architecture}")
        if self.model.init_from is None:
            check_config_keys(self.model.architecture, self.model.config)
        elif self.model.config:
            raise HftoolError("model.config sets a fresh model's shape; it cannot be combined with "
                              "model.init_from (the checkpoint has its own config)")
        self.data.validate()
        if self.objective != "causal-lm":
            self.bert.validate()
            shortest = 5 if self.objective == "mlm-nsp" else 4  # [CLS] A [SEP] B [SEP] with one token each
            if self.data.block_size < shortest:
                raise HftoolError(f"data.block_size={self.data.block_size} is too short for "
                                  f"objective={self.objective}; use at least {shortest}")
        self.train.validate()

    @property
    def tokenizer_kind(self) -> str:
        return self.tokenizer.kind or ("wordpiece" if self.model.architecture == "bert" else "byte-bpe")

    @property
    def tokenizer_vocab_size(self) -> int:
        if self.tokenizer.vocab_size is not None:
            return self.tokenizer.vocab_size
        return 30522 if self.tokenizer_kind == "wordpiece" else 8000


@dataclass
class PretrainJob:
    """What an objective's setup hands to the engine, and how it saves the result."""

    model: object
    train_data: object
    task: object
    data_stats: dict
    finish: object  # callable(model, out, summary, state_dict): writes the model folder and reports on it
