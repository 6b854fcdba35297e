"""Loading configs, tokenizers and models: the one place every command reads a checkpoint through.

A name is resolved by :func:`hftool.hub.resolve_model` (local folder / Hub id / alias / ``package:<module>``,
failing fast offline); this module turns the resulting :class:`~hftool.hub.ModelRef` into a config, a
tokenizer or a model with one error policy, and holds hftool's one cache location (:func:`cache_dir`).

Three functions do it: :func:`load_config`, :func:`load_tokenizer` (with what a command's data needs of it:
words given pre-split, character offsets, a pad token) and :func:`load_model` (with ``head``, the trained head
the command needs; without it, a body that gets a fresh head to fine-tune).

A checkpoint saved without that head (GPT-2's LM folder for question answering, MiniLM's plain ``BertModel``
for fill-mask) would get random head weights and print confident nonsense; it is refused, naming the
architecture and the missing head. A folder that cannot be loaded (pickle weights only, truncated
safetensors, invalid config) is one line naming the folder, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from hftool.errors import HftoolError
from hftool.hub import ModelRef, resolve_model
from hftool.verbosity import verbose

__all__ = ["ModelRef", "resolve_model", "cache_dir", "load_config", "load_tokenizer", "load_model",
           "load_pretrained", "check_head_loaded", "architecture_name", "quiet_transformers"]

# What each head is called in messages, and what a user can pass instead.
HEADS = {
    "masked-lm": ("masked-language-model (MLM)", ", e.g. BertForMaskedLM or BertForPreTraining"),
    "causal-lm": ("language-model (LM)", ", e.g. GPT2LMHeadModel"),
    "question-answering": ("question-answering", ", e.g. a folder written by 'hftool finetune squad'"),
    "sequence-classification": ("sequence-classification", ", e.g. a folder written by 'hftool finetune classify'"),
    "token-classification": ("token-classification", ", e.g. a folder written by 'hftool finetune ner'"),
}


# The class-name endings of the checkpoints that carry each head. A checkpoint saved with another head is refused
# even where the weights' names match (BERT's sequence- and token-classification heads are both ``classifier``).
HEAD_ARCHITECTURES = {
    "masked-lm": ("ForMaskedLM", "ForPreTraining"),
    "causal-lm": ("ForCausalLM", "LMHeadModel"),
    "question-answering": ("ForQuestionAnswering",),
    "sequence-classification": ("ForSequenceClassification",),
    "token-classification": ("ForTokenClassification",),
}


def cache_dir() -> Path:
    """hftool's one cache folder (tokenized blocks, SQuAD windows, the embedded corpus): ``$HFTOOL_CACHE``
    when set, else ``~/.cache/hftool``. Models and datasets stay in the Hugging Face caches."""
    root = os.environ.get("HFTOOL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hftool")
    return Path(root)


def architecture_name(config) -> str:
    """The class the checkpoint was saved from (``BertModel``), or its model type when the config lacks it."""
    architectures = getattr(config, "architectures", None)
    return architectures[0] if architectures else config.model_type


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' progress bars and load reports: hftool checks what was loaded itself."""
    from transformers.utils import logging as hf_logging  # transformers pulls in torch: not at CLI start-up

    if verbose():
        yield
        return
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a broken model folder raises while loading: bad JSON, pickle-only weights, truncated files."""
    from safetensors import SafetensorError

    return OSError, ValueError, RuntimeError, KeyError, SafetensorError


def load_pretrained(load, name: str, flag: str, what: str = "the model"):
    """Call ``load()`` (a ``from_pretrained``); a folder that cannot be loaded becomes one line naming it."""
    try:
        with quiet_transformers():
            return load()
    except _load_errors() as exc:
        raise HftoolError(f"{flag} {name}: cannot load {what}: {first_line(exc)}; pass a folder written "
                          "by save_pretrained (or hftool) with safetensors weights") from None


def check_head_loaded(config, missing_keys, head: str, name: str, flag: str = "--model") -> None:
    """Refuse when the weights of ``head`` were not in the checkpoint (they were initialised at random)."""
    missing = sorted(missing_keys)
    if not missing:
        return
    description, example = HEADS[head]
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    raise HftoolError(f"{flag} {name}: the {architecture_name(config)} checkpoint has no trained {description} "
                      f"head (missing {missing[0]}{more}), so its predictions would be random; pass a model "
                      f"saved with that head{example}")


def check_head_architecture(config, head: str, name: str, flag: str = "--model") -> None:
    """Refuse a checkpoint saved with a different head than ``head`` (a sentiment classifier for ``tag``)."""
    saved = architecture_name(config)
    if saved.endswith(HEAD_ARCHITECTURES[head]):
        return
    other = next((h for h, endings in HEAD_ARCHITECTURES.items() if saved.endswith(endings)), None)
    if other is None:
        return  # a bare body (BertModel) or an unknown class: the missing weights tell (check_head_loaded)
    description, example = HEADS[head]
    raise HftoolError(f"{flag} {name}: the {saved} checkpoint has no trained {description} head (it was saved "
                      f"with a {HEADS[other][0]} head), so its predictions would be meaningless; pass a model "
                      f"saved with that head{example}")


def load_config(ref: ModelRef, name: str, flag: str, trust_remote_code: bool = False, **overrides):
    """The checkpoint's config alone: enough to refuse an unsuitable model before reading its weights.
    ``overrides`` replace fields (a fresh head's ``num_labels`` and label names)."""
    from transformers import AutoConfig

    return load_pretrained(lambda: AutoConfig.from_pretrained(
        ref.name_or_path, trust_remote_code=trust_remote_code, **ref.load_kwargs(), **overrides), name, flag,
        "its config")


def load_tokenizer(ref: ModelRef, name: str, flag: str, trust_remote_code: bool = False, *,
                   split_words: bool = False, offsets_for: str | None = None, pad: bool = False):
    """The checkpoint's tokenizer (or a tokenizer-only folder's), ready for what the command feeds it.

    ``split_words``: texts come as words (NER), and byte-level BPE needs a space before each to encode it as
    inside a sentence. ``offsets_for``: what needs character offsets or word ids (word alignment, question
    answering); a slow tokenizer has none and is refused. ``pad``: batches are padded, so a tokenizer without
    a pad token (GPT-2, BLOOM) pads with its end-of-text token.
    """
    from transformers import AutoTokenizer

    options = {"trust_remote_code": trust_remote_code, **ref.load_kwargs()}
    tokenizer = load_pretrained(lambda: AutoTokenizer.from_pretrained(ref.name_or_path, **options), name, flag,
                                "its tokenizer")
    if split_words:
        add_prefix_space(tokenizer)
    if offsets_for and not getattr(tokenizer, "is_fast", False):
        raise HftoolError(f"{flag} {name}: the tokenizer {type(tokenizer).__name__} is a slow (Python) tokenizer "
                          f"without offset mappings; {offsets_for} needs a fast tokenizer (a folder with "
                          "tokenizer.json)")
    if pad and tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise HftoolError(f"{flag} {name}: the tokenizer has neither a pad nor an end-of-text token to pad "
                              "batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def add_prefix_space(tokenizer) -> None:
    """Give every byte-level pre-tokenizer step a space before its text, so that words given one by one (NER) are
    encoded as inside a sentence (" world", not "world"). Done on the tokenizer's own pipeline: transformers 5's
    ``from_pretrained(add_prefix_space=True)`` records the flag but leaves a saved ``tokenizer.json``'s
    pre-tokenizer as it was. The model folder saves it, so its inference encodes text the same way."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return
    import json

    from tokenizers import Tokenizer

    state = json.loads(backend.to_str())

    def set_space(step: dict) -> bool:
        if step.get("type") == "ByteLevel":
            changed = not step.get("add_prefix_space")
            step["add_prefix_space"] = True
            return changed
        return any([set_space(inner) for inner in step.get("pretokenizers", [])])

    if set_space(state["pre_tokenizer"]):
        backend.pre_tokenizer = Tokenizer.from_str(json.dumps(state)).pre_tokenizer
        tokenizer.add_prefix_space = True


def load_model(auto_class, ref: ModelRef, name: str, flag: str, head: str | None = None,
               with_info: bool = False, **options):
    """``auto_class.from_pretrained`` for ``ref`` (an adapter folder loads its base model with the adapter merged
    in, :mod:`hftool.adapters`); with ``head``, a checkpoint without trained weights for that head is refused
    (scoring, predicting); without it, missing head weights are initialised (fine-tuning puts a fresh head on a
    body). ``with_info`` also returns transformers' loading info (missing keys ...)."""
    from hftool.adapters import is_adapter_folder, load_for_inference

    if is_adapter_folder(ref.name_or_path):  # a LoRA adapter folder: its base model with the adapter merged in
        model, info = load_pretrained(lambda: load_for_inference(ref.name_or_path, auto_class, flag, **options),
                                      name, flag)
    else:
        options = {**ref.load_kwargs(), **options}
        model, info = load_pretrained(
            lambda: auto_class.from_pretrained(ref.name_or_path, output_loading_info=True, **options), name, flag)
    if head is not None:
        check_head_architecture(model.config, head, name, flag)
        check_head_loaded(model.config, info["missing_keys"], head, name, flag)
    return (model, info) if with_info else model
