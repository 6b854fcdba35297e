"""Where a labelled task's two splits come from and how much of them to use: the part of the ``data:`` section
that ``finetune classify`` and ``finetune ner`` share (local files, or a Hub dataset for online users)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hftool.errors import HftoolError

SPLIT_FLAGS = {"train": "--train-file", "validation": "--validation-file"}


@dataclass
class SplitsConfig:
    """Training and validation data: a file each (the task's formats), or else a Hub dataset's splits."""

    train_file: str | None = None  # default: the Hub dataset below
    validation_file: str | None = None
    hub_dataset: str | None = None  # e.g. nyu-mll/glue or eriktks/conll2003 (online users)
    hub_config: str | None = None  # e.g. sst2
    hub_train_split: str = "train"
    hub_validation_split: str = "validation"
    max_length: int = 128
    max_train_examples: int | None = None
    max_eval_examples: int | None = None

    def validate(self) -> None:
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HftoolError(f"data.{name}={value} must be at least 1 (or null for all)")

    def file(self, split: str) -> str | None:
        return self.train_file if split == "train" else self.validation_file

    def hub_split(self, split: str) -> str:
        return self.hub_train_split if split == "train" else self.hub_validation_split

    def limit(self, split: str) -> int | None:
        return self.max_train_examples if split == "train" else self.max_eval_examples

    def hub_name(self, hub_split: str) -> str:
        """How messages name a Hub split: ``dataset (config) [split]``."""
        config = f" ({self.hub_config})" if self.hub_config else ""
        return f"{self.hub_dataset}{config} [{hub_split}]"

    def describe(self, split: str) -> str:
        if self.file(split):
            return f"`{Path(self.file(split)).name}`"
        return f"`{self.hub_name(self.hub_split(split))}`"


def load_hub_split(data: SplitsConfig, split: str):
    """``split`` of ``data.hub_dataset`` (with ``data.hub_config``) through ``datasets.load_dataset``; offline at
    once when the Hub is unreachable, and one-line errors for a dataset neither cached nor reachable."""
    from datasets import load_dataset

    from hftool.hub import datasets_offline_unless_reachable, hub_reachable, offline_mode

    shown = data.hub_name(split)
    try:
        with datasets_offline_unless_reachable():
            return load_dataset(data.hub_dataset, data.hub_config, split=split)
    except Exception as exc:  # datasets raises many types for unreachable or malformed datasets
        if offline_mode() or not hub_reachable():
            raise HftoolError(f"data.hub_dataset={shown}: not cached and the Hub cannot be reached; pass local "
                              "files with --train-file/--validation-file instead") from None
        raise HftoolError(f"data.hub_dataset={shown}: {str(exc).splitlines()[0][:200]}") from None
