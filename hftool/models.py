"""Building a model's config from a recipe's ``model:`` section, and checking a tokenizer fits its embeddings.

Loading a model from a folder, Hub id or alias is ``hftool.loading``'s job."""

from __future__ import annotations

import difflib
from typing import Literal

from hftool.errors import HftoolError

Architecture = Literal["gpt2", "bloom", "bert"]


def config_class(architecture: str):
    from transformers import BertConfig, BloomConfig, GPT2Config

    classes = {"gpt2": GPT2Config, "bloom": BloomConfig, "bert": BertConfig}
    if architecture not in classes:
        raise HftoolError(f"model.architecture={architecture!r} is not one of: {', '.join(classes)}")
    return classes[architecture]


def check_config_keys(architecture: str, fields: dict) -> None:
    """Refuse keys the transformers config does not know (it would silently ignore them)."""
    known = set(config_class(architecture)().to_dict())
    for key in fields:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean 'model.config.{close[0]}'?" if close else ""
            raise HftoolError(f"unknown key 'model.config.{key}' for a {architecture} model{hint}")


def build_config(architecture: str, fields: dict, tokenizer, max_length: int):
    """A transformers config for ``architecture`` sized to ``tokenizer`` and at least ``max_length``."""
    check_config_keys(architecture, fields)
    cls = config_class(architecture)
    special = {}
    # A causal LM's pad id lives in its generation config: in the model config it would make GPT-2 warn
    # about padding on packed blocks, where the shared EOS/pad id separates documents.
    names = ("bos_token_id", "eos_token_id") if architecture != "bert" else ("pad_token_id",)
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            special[name] = value
    config = cls(**{"vocab_size": len(tokenizer), **special, **fields})
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if positions is not None and positions < max_length:
        raise HftoolError(f"model.config: {positions} positions is fewer than data.block_size={max_length}; "
                          "raise the model's positions or lower the block size")
    return config


def check_vocab_fits(model, tokenizer, resize: bool, flag: str = "tokenizer") -> None:
    """A tokenizer with more ids than the model's embedding matrix would index past it: refuse or resize."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return
    if not resize:
        raise vocab_too_large(len(tokenizer), rows, flag)
    model.resize_token_embeddings(len(tokenizer))


def vocab_too_large(tokens: int, rows: int, flag: str = "tokenizer") -> HftoolError:
    """The refusal of a tokenizer with more ids than the model has embedding rows, naming both numbers."""
    return HftoolError(f"{flag}: vocabulary of {tokens} tokens is larger than the model's {rows} embedding rows; "
                       "pass tokenizer.resize_embeddings=true to grow the model")
