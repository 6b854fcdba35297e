"""``hftool finetune``'s recipe schemas: one section per task (squad, classify, ner, sft).

Each recipe is a model section, the task's data section and the shared ``train:`` section; reading and
checking one imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hftool.data.classification import ClassifyDataConfig
from hftool.data.conll import NerDataConfig
from hftool.data.squad import SquadDataConfig
from hftool.engine.config import TrainConfig
from hftool.errors import HftoolError
from hftool.schemas.adapter import AdapterSettings


@dataclass
class PretrainedModelConfig:
    """The pretrained model to fine-tune (squad, classify, ner); a fresh task head is put on top."""

    name_or_path: str = "bert-base-uncased"  # folder, Hub id, alias, or package:<module> (a model on PyPI)
    trust_remote_code: bool = False


# ---- finetune squad ---------------------------------------------------------------------------------------

@dataclass
class SquadRecipe:
    """A SQuAD fine-tuning run: model, data and training settings."""

    model: PretrainedModelConfig = field(default_factory=PretrainedModelConfig)
    data: SquadDataConfig = field(default_factory=SquadDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/squad", lr=3e-5, batch_size=12, epochs=2, scheduler="linear", weight_decay=0.0,
        eval_batch_size=64))
    eval_each_epoch: bool = True  # evaluate at every epoch end (when train.eval_every is 0)
    adapter: AdapterSettings = field(default_factory=AdapterSettings)  # LoRA instead of a full fine-tune

    def validate(self) -> None:
        self.data.validate()
        self.train.validate()


# ---- finetune classify ------------------------------------------------------------------------------------

@dataclass
class ClassifyRecipe:
    """A sequence-classification fine-tuning run: model, data and training settings."""

    model: PretrainedModelConfig = field(default_factory=PretrainedModelConfig)
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/classify", lr=2e-5, batch_size=32, epochs=3, scheduler="linear", weight_decay=0.0,
        eval_batch_size=128))
    group_by_length: bool = True  # batches of similar lengths (less padding); the order stays seeded
    adapter: AdapterSettings = field(default_factory=AdapterSettings)  # LoRA instead of a full fine-tune

    def validate(self) -> None:
        self.data.validate()
        self.train.validate()


# ---- finetune ner -----------------------------------------------------------------------------------------

@dataclass
class NerRecipe:
    """A token-classification fine-tuning run: model, data and training settings."""

    model: PretrainedModelConfig = field(default_factory=PretrainedModelConfig)
    data: NerDataConfig = field(default_factory=NerDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/ner", lr=5e-5, batch_size=32, epochs=3, scheduler="linear", weight_decay=0.0,
        eval_batch_size=128))
    group_by_length: bool = True  # batches of similar lengths (less padding); the order stays seeded
    adapter: AdapterSettings = field(default_factory=AdapterSettings)  # LoRA instead of a full fine-tune

    def validate(self) -> None:
        self.data.validate()
        self.train.validate()


# ---- finetune sft ------------------------------------------------------------------------------------------

SFT_MIN_MAX_LENGTH = 8  # a chat turn's markers and a token of content


@dataclass
class SftModelConfig:
    """The causal LM to fine-tune (any AutoModelForCausalLM: GPT-2, BLOOM, ...)."""

    name_or_path: str = "gpt2"  # folder (e.g. one written by hftool pretrain), Hub id or alias
    trust_remote_code: bool = False
    missing_hint: str | None = None  # the command that makes a missing name_or_path folder (shown in the error)


@dataclass
class SftDataConfig:
    """Where the conversations come from and how they become token sequences (the ``data:`` section).

    ``format: auto`` reads JSONL records with ``messages`` (OpenAI chat), ``instruction``/``input``/``output``
    (Alpaca) or ``prompt``/``completion``; ``squad``, ``sst2`` and ``conll`` turn those data sets' own files
    (SQuAD v1.1 JSON, GLUE TSV, CoNLL text) into chats at run time.
    """

    train_file: str | None = None
    validation_file: str | None = None
    format: Literal["auto", "squad", "sst2", "conll"] = "auto"
    chat_template: Literal["auto", "chatml"] = "auto"  # auto: the tokenizer's own, ChatML when it has none
    max_length: int = 512  # tokens per conversation; longer ones are cut (and counted)
    truncation: Literal["keep_start", "keep_end"] = "keep_start"  # keep_end keeps the answer, cuts the prompt
    train_on_prompt: bool = False  # true: loss on every token, not only the assistant's / completion's
    packing: bool = False  # several conversations per row, each attending only to itself
    group_by_length: bool = True  # unpacked: batches of similar length (less padding), order still seeded
    max_train_examples: int | None = None
    max_eval_examples: int | None = None

    def validate(self) -> None:
        if self.max_length < SFT_MIN_MAX_LENGTH:
            raise HftoolError(f"data.max_length={self.max_length} must be at least {SFT_MIN_MAX_LENGTH}")
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HftoolError(f"data.{name}={value} must be at least 1 (or null for all)")
        if not self.train_file:
            raise HftoolError("no training data: pass --train-file (data.train_file)")


@dataclass
class SftEvalConfig:
    """What evaluation adds to the held-out completion loss: answers generated for conversations that carry
    references, scored with SQuAD exact match / F1 (``evaluation:`` section)."""

    max_generate_examples: int = 100  # 0: no generation, loss and perplexity only
    max_new_tokens: int = 32

    def validate(self) -> None:
        if self.max_generate_examples < 0:
            raise HftoolError("evaluation.max_generate_examples must be 0 or more")
        if self.max_new_tokens < 1:
            raise HftoolError("evaluation.max_new_tokens must be at least 1")


@dataclass
class SftRecipe:
    """An instruction / chat fine-tuning run of a causal LM: model, data, evaluation and training settings."""

    model: SftModelConfig = field(default_factory=SftModelConfig)
    data: SftDataConfig = field(default_factory=SftDataConfig)
    evaluation: SftEvalConfig = field(default_factory=SftEvalConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/sft", lr=2e-5, batch_size=8, epochs=1, scheduler="cosine", weight_decay=0.0,
        warmup_steps=0))
    adapter: AdapterSettings = field(default_factory=AdapterSettings)  # LoRA instead of a full fine-tune

    def validate(self) -> None:
        self.data.validate()
        self.evaluation.validate()
        self.train.validate()
