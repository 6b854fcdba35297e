"""``hftool finetune``'s recipe schemas: one section per task (squad, classify, ner).

Each recipe is a model section, the task's data section and the shared ``train:`` section; reading and
checking one imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hftool.data.classification import ClassifyDataConfig
from hftool.data.conll import NerDataConfig
from hftool.data.squad import SquadDataConfig
from hftool.engine.config import TrainConfig
from hftool.schemas.adapter import AdapterSettings

# ---- finetune squad ---------------------------------------------------------------------------------------

@dataclass
class SquadModelConfig:
    """The pretrained encoder to fine-tune; a fresh question-answering head is put on top."""

    name_or_path: str = "bert-base-uncased"  # folder, Hub id, alias, or package:<module> (a model on PyPI)
    trust_remote_code: bool = False


@dataclass
class SquadRecipe:
    """A SQuAD fine-tuning run: model, data and training settings."""

    model: SquadModelConfig = field(default_factory=SquadModelConfig)
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
class LabelModelConfig:
    """The pretrained model to fine-tune; a fresh classification head is put on top."""

    name_or_path: str = "bert-base-uncased"  # folder, Hub id, alias, or package:<module> (a model on PyPI)
    trust_remote_code: bool = False


@dataclass
class ClassifyRecipe:
    """A sequence-classification fine-tuning run: model, data and training settings."""

    model: LabelModelConfig = field(default_factory=LabelModelConfig)
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

    model: LabelModelConfig = field(default_factory=LabelModelConfig)
    data: NerDataConfig = field(default_factory=NerDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/ner", lr=5e-5, batch_size=32, epochs=3, scheduler="linear", weight_decay=0.0,
        eval_batch_size=128))
    group_by_length: bool = True  # batches of similar lengths (less padding); the order stays seeded
    adapter: AdapterSettings = field(default_factory=AdapterSettings)  # LoRA instead of a full fine-tune

    def validate(self) -> None:
        self.data.validate()
        self.train.validate()
