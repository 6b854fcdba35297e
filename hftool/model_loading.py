"""Loading a model with the head a command needs: one check for every command that uses a model for a task.

A checkpoint saved without that head (GPT-2's LM folder for question answering, MiniLM's plain ``BertModel``
for fill-mask) would get random head weights and print confident nonsense; it is refused, naming the
architecture and the missing head. A folder that cannot be loaded (pickle weights only, truncated
safetensors, invalid config) is one line naming the folder, never a traceback.
"""

from __future__ import annotations

import contextlib

from hftool.errors import HftoolError

# What each head is called in messages, and what a user can pass instead.
HEADS = {
    "masked-lm": ("masked-language-model (MLM)", ", e.g. BertForMaskedLM or BertForPreTraining"),
    "causal-lm": ("language-model (LM)", ", e.g. GPT2LMHeadModel"),
    "question-answering": ("question-answering", ", e.g. a folder written by 'hftool finetune squad'"),
    "sequence-classification": ("sequence-classification", ", e.g. a folder written by 'hftool finetune classify'"),
    "token-classification": ("token-classification", ", e.g. a folder written by 'hftool finetune ner'"),
}


def architecture_name(config) -> str:
    """The class the checkpoint was saved from (``BertModel``), or its model type when the config lacks it."""
    architectures = getattr(config, "architectures", None)
    return architectures[0] if architectures else config.model_type


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' progress bars and load reports: hftool checks what was loaded itself."""
    from transformers.utils import logging as hf_logging

    from hftool.verbosity import verbose

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


def load_with_head(auto_class, name_or_path: str, head: str, name: str, flag: str = "--model", config=None,
                   **options):
    """``auto_class.from_pretrained`` (with ``config`` when given) that refuses a checkpoint without trained
    ``head`` weights."""
    if config is not None:
        options["config"] = config
    model, info = load_pretrained(
        lambda: auto_class.from_pretrained(name_or_path, output_loading_info=True, **options), name, flag)
    check_head_loaded(model.config, info["missing_keys"], head, name, flag)
    return model


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
