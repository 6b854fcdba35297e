"""``hftool pretrain``'s recipe schema, ``estimate-memory``'s and ``tokenizer train``'s options.

Reading and checking a recipe imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from hftool.data.bert_examples import BertExamplesConfig
from hftool.data.text import DataConfig
from hftool.engine.config import TrainConfig
from hftool.errors import HftoolError
from hftool.models import Architecture, check_config_keys
from hftool.schemas.adapter import AdapterSettings
from hftool.schemas.fields import at_least, one_of, setting

Objective = Literal["causal-lm", "mlm", "mlm-nsp"]
TokenizerKind = Literal["byte-bpe", "wordpiece"]
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
    kind: TokenizerKind | None = None  # default: byte-bpe for GPT-2/BLOOM, wordpiece for BERT
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
class LaunchOptions:
    """How many processes a training command starts (pretrain and finetune)."""

    num_processes: int = setting(1, flag="--num-processes", short="-n", bound=at_least(1),
                                 help="Data-parallel processes: one per GPU, or on the CPU over gloo.")


@dataclass
class EstimateMemoryOptions:
    num_processes: int = setting(8, flag="--num-processes", short="-n", bound=at_least(1),
                                 help="Devices the states are sharded over.")


@dataclass
class TokenizerTrainOptions:
    """``hftool tokenizer train``: the recipe's tokenizer section as flags, with a vocabulary size of its own."""

    kind: TokenizerKind = setting("byte-bpe", flag="--kind", help="byte-bpe (GPT-2/BLOOM) or wordpiece (BERT).",
                        bound=one_of(get_args(TokenizerKind)))
    vocab_size: int = setting(8000, flag="--vocab-size", bound=at_least(1),
                              help="Vocabulary size, special tokens included.")
    lowercase: bool = setting(False, flag="--lowercase", help="Lower-case and strip accents (WordPiece).")
    min_frequency: int = setting(TokenizerConfig.min_frequency, flag="--min-frequency", bound=at_least(0),
                                 help="Minimum count for a merge or word.")
    hub_dataset: str | None = setting(None, flag="--hub-dataset", help="Hub dataset name instead of files.")
    hub_config: str | None = setting(None, flag="--hub-config", help="Hub dataset configuration.")
    text_column: str = setting("text", flag="--text-column", help="Column holding the text (JSONL, Parquet, Hub).")
