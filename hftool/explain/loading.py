"""Loading a model for ``hftool explain`` with the head a command needs, refusing models that cannot do it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hftool import loading
from hftool.errors import HftoolError
from hftool.loading import architecture_name, resolve_model

Head = Literal["base", "masked-lm", "causal-lm"]

HEAD_AUTO_CLASSES = {
    "base": "AutoModel",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
}


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer; ``architecture`` (GPT2LMHeadModel) names it in messages."""

    model: object
    tokenizer: object
    architecture: str
    name: str


def is_encoder_decoder(config) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def is_encoder_only(config) -> bool:
    """A bidirectional encoder (BERT family): every token sees the whole text, so there is no next token."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return (not is_encoder_decoder(config) and not getattr(config, "is_decoder", False)
            and config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def _supports(config, head: Head) -> bool:
    """Whether transformers (or the model's own remote code) has a class with ``head`` for this config."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if HEAD_AUTO_CLASSES[head] in (getattr(config, "auto_map", None) or {}):
        return True
    mapping = {"masked-lm": MODEL_FOR_MASKED_LM_MAPPING_NAMES, "causal-lm": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES}
    return head == "base" or config.model_type in mapping[head]


def load_config(name: str, trust_remote_code: bool = False, flag: str = "--model"):
    """The model's config alone: enough to refuse an unsuitable model before reading its weights."""
    return loading.load_config(resolve_model(name, flag), name, flag, trust_remote_code)


def check_head(config, head: Head, name: str, flag: str = "--model") -> None:
    """Refuse models that cannot answer: encoder-decoders, next-token from an encoder, masks in GPT-2."""
    architecture = architecture_name(config)
    if is_encoder_decoder(config):
        raise HftoolError(f"{flag} {name}: {architecture} is an encoder-decoder model; explain works with "
                          "encoder-only (BERT) and decoder-only (GPT-2, BLOOM) models")
    if head == "causal-lm" and is_encoder_only(config):
        raise HftoolError(f"{flag} {name}: {architecture} is an encoder-only (bidirectional) model and has "
                          "no next token to predict; pass a causal LM such as GPT-2 or BLOOM (masked models "
                          "go to 'hftool explain fill-mask')")
    if not _supports(config, head):
        use = "next-token" if head == "masked-lm" else "fill-mask"
        kind = "masked" if head == "masked-lm" else "causal"
        raise HftoolError(f"{flag} {name}: {architecture} is not a {kind} language model; "
                          f"try 'hftool explain {use}' with it")


def load_model(name: str, head: Head = "base", trust_remote_code: bool = False, eager_attention: bool = False,
               flag: str = "--model") -> LoadedModel:
    """Load ``name`` (folder, Hub id or alias) with ``head``, in eval mode, refusing a checkpoint without it.

    A checkpoint saved without the requested head (MiniLM is a plain ``BertModel``) would get random head
    weights and print confident nonsense, so that is an error naming the architecture.
    """
    import transformers

    config = load_config(name, trust_remote_code, flag)
    check_head(config, head, name, flag)
    architecture = architecture_name(config)
    ref = resolve_model(name, flag)
    auto_class = getattr(transformers, HEAD_AUTO_CLASSES[head])
    options = {"trust_remote_code": trust_remote_code}
    if eager_attention:
        options["attn_implementation"] = "eager"
    if head == "base":
        model = loading.load_model(auto_class, ref, name, flag, **options)
    else:
        model = loading.load_model(auto_class, ref, name, flag, head=head, config=config, **options)
    tokenizer = loading.load_tokenizer(ref, name, flag, trust_remote_code)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, architecture=architecture, name=name)


def max_positions(model) -> int | None:
    """How many tokens the model's position table holds, when it has one (BLOOM's ALiBi has no limit)."""
    config = model.config
    for field in ("n_positions", "max_position_embeddings"):
        value = getattr(config, field, None)
        if isinstance(value, int):
            return value
    return None


def encode(loaded: LoadedModel, text: str, flag: str = "--text", **tokenizer_options):
    """Tokenize ``text`` for the model, refusing empty input and text longer than the model's positions."""
    if not text.strip():
        raise HftoolError(f"{flag} is empty; pass some text")
    encoding = loaded.tokenizer(text, return_tensors="pt", **tokenizer_options)
    length = encoding["input_ids"].shape[1]
    if length == 0:
        raise HftoolError(f"{flag} {text!r} becomes no tokens with this tokenizer; pass more text")
    limit = max_positions(loaded.model)
    if limit is not None and length > limit:
        raise HftoolError(f"{flag} is {length} tokens long but {loaded.name} has only {limit} positions; "
                          "shorten the text")
    return encoding
