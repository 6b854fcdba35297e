"""LoRA adapters (through ``peft``): the recipe's ``adapter:`` section, wrapping a model before training, the
adapter folder a run writes, loading such a folder for inference, and merging it into an ordinary model.

An adapter folder holds ``adapter_config.json`` + ``adapter_model.safetensors`` (plain ``peft``: the LoRA weights
and the trained head), the tokenizer, and the trained model's ``config.json`` (labels, positions, architecture),
so every hftool command reads it like a model folder; ``base_model_name_or_path`` names the base model (an
absolute path when it is a local folder). Reading a recipe imports no torch: peft loads only when a model is
wrapped or loaded.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path

from hftool.errors import HftoolError
from hftool.schemas.adapter import AdapterSettings

ADAPTER_CONFIG = "adapter_config.json"

# The layers LoRA adapts by default: every linear layer of the blocks (attention and MLP), which keeps
# fine-tuning quality close to a full fine-tune; other architectures fall back to peft's own defaults.
DEFAULT_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}

# hftool's head names -> peft's task types; the new heads a task trains whole (``modules_to_save``).
TASK_TYPES = {
    "sequence-classification": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "question-answering": "QUESTION_ANS",
    "causal-lm": "CAUSAL_LM",
}
HEAD_MODULES = ("classifier", "score", "qa_outputs")

# peft's task types -> the transformers auto class that loads the base model.
AUTO_CLASSES = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "CAUSAL_LM": "AutoModelForCausalLM",
}


@contextlib.contextmanager
def quiet_peft():
    """Hide peft's notes on GPT-2's Conv1D layers and its use of a method transformers renamed: nothing a user
    can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _base_path(model) -> str:
    """The base model as the adapter config should name it: an absolute path for a local folder."""
    name = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    path = Path(name).expanduser()
    return str(path.resolve()) if name and path.is_dir() else name


def target_modules(model, settings: AdapterSettings) -> list[str]:
    if settings.target_modules:
        return list(settings.target_modules)
    model_type = model.config.model_type
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    if model_type in PEFT_DEFAULTS:
        return list(PEFT_DEFAULTS[model_type])
    raise HftoolError(f"adapter.target_modules: no default layers for the {model_type} architecture; name the "
                      "linear layers LoRA should adapt, e.g. adapter.target_modules=[q_proj,v_proj]")


def apply_adapter(model, settings: AdapterSettings, task: str, new_token_ids: list[int] | None = None):
    """``model`` wrapped for LoRA training (``task``: hftool's head name, e.g. ``sequence-classification``), or
    ``model`` itself when the recipe asks for no adapter. Only the adapters and the new head are trainable.

    ``new_token_ids``: tokens the run added to the vocabulary (sft's ChatML markers). Their embedding rows (and,
    through the tie, their output rows) train too, as peft's ``trainable_token_indices``: the adapter file holds
    just those rows, which replace whatever rows a loader's resize makes for them."""
    if not settings.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, settings)
    names = [name for name, _ in model.named_modules()]
    unknown = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if unknown:
        layers = sorted({name.rsplit(".", 1)[-1] for name in names if name})
        raise HftoolError(f"adapter.target_modules: the {model.config.model_type} model has no layer named "
                          f"{', '.join(unknown)}; its layers include {', '.join(layers[:16])}")
    heads = settings.modules_to_save
    if heads is None and task != "causal-lm":
        heads = [name for name in HEAD_MODULES if hasattr(model, name)]
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, modules_to_save=heads or None, task_type=TASK_TYPES[task],
                        trainable_token_indices=list(new_token_ids) if new_token_ids else None,
                        base_model_name_or_path=_base_path(model))
    with quiet_peft():
        return get_peft_model(model, config)


def is_adapter_model(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_adapter(model, folder: Path, state_dict=None) -> None:
    """The adapter files (peft's format) and the trained model's config and generation settings, so that the
    folder reads like a model folder (``state_dict``: the gathered state of a sharded run). When the vocabulary
    grew by trainable tokens, their rows are saved on their own and the whole embedding matrix is left out."""
    new_tokens = getattr(model.peft_config["default"], "trainable_token_indices", None)
    model.save_pretrained(folder, state_dict=state_dict, save_embedding_layers=False if new_tokens else "auto")
    base = model.get_base_model()
    base.config.architectures = [type(base).__name__]  # the trained head's class, as save_pretrained records it
    base.config.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)  # the run's own, else the base model's
    if generation is not None and base.can_generate():
        generation.save_pretrained(folder)


def adapter_usage(task_type: str) -> str:
    """The model card's lines on loading the adapter without hftool."""
    auto = {"SEQ_CLS": "AutoPeftModelForSequenceClassification", "TOKEN_CLS": "AutoPeftModelForTokenClassification",
            "QUESTION_ANS": "AutoPeftModelForQuestionAnswering", "CAUSAL_LM": "AutoPeftModelForCausalLM"}[task_type]
    labels = "" if task_type in ("CAUSAL_LM", "QUESTION_ANS") else (
        "  # add num_labels=, id2label= from config.json when the head has other than 2 labels")
    return f"""This folder is a LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`) over the base model
named in `adapter_config.json`: load it with peft, or merge it first for the plain `transformers` lines above.

```python
from peft import {auto}
model = {auto}.from_pretrained("path/to/this/folder"){labels}
```

```bash
hftool adapters merge path/to/this/folder -o merged  # an ordinary model folder
```
"""


def read_adapter_config(folder: Path, flag: str) -> dict:
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HftoolError(f"{flag} {folder}: cannot read {ADAPTER_CONFIG}: {exc}") from None
    if not isinstance(config, dict) or not config.get("base_model_name_or_path"):
        raise HftoolError(f"{flag} {folder}: {ADAPTER_CONFIG} names no base_model_name_or_path; set it to the "
                          "base model's folder or Hub id")
    return config


def base_model_ref(folder: Path, flag: str):
    """The base model named by the adapter folder, refused in one line when it is missing."""
    from hftool.hub import resolve_model

    base = read_adapter_config(folder, flag)["base_model_name_or_path"]
    try:
        return resolve_model(base, f"{ADAPTER_CONFIG} base_model_name_or_path")
    except HftoolError as exc:
        raise HftoolError(f"{flag} {folder}: the adapter's base model is missing: {exc} (restore the base model "
                          f"or point base_model_name_or_path at it)") from None


def load_for_inference(folder: str | Path, auto_class, flag: str = "--model", **options):
    """The base model with the adapter of ``folder`` merged in, as an ordinary transformers model, and the
    loading info (``missing_keys``: base weights neither the base checkpoint nor the adapter holds).

    ``options`` go to the base model's ``from_pretrained`` (dtype, device_map, config ...); the config defaults to
    the adapter folder's own (the trained head's labels). ``AutoModel`` (the bare body, as ``explain`` asks for)
    gets the body of the merged task model, so the adapted layers are where peft expects them. A missing base is
    one line; other loading errors are transformers' and peft's own (:func:`hftool.loading.load_model` turns them
    into one line).
    """
    import transformers
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoConfig, GenerationConfig

    folder = Path(folder)
    ref = base_model_ref(folder, flag)
    peft_config = PeftConfig.from_pretrained(folder)
    body_only = auto_class is transformers.AutoModel and peft_config.task_type in AUTO_CLASSES
    if body_only:
        auto_class = getattr(transformers, AUTO_CLASSES[peft_config.task_type])
    options = {**ref.load_kwargs(), "config": options.get("config") or AutoConfig.from_pretrained(folder), **options}
    vocabulary = getattr(options["config"], "vocab_size", None)
    base_vocabulary = getattr(AutoConfig.from_pretrained(ref.name_or_path, **ref.load_kwargs()), "vocab_size", None)
    grown = bool(vocabulary and base_vocabulary and vocabulary > base_vocabulary)
    if grown:  # the run added tokens: load the base at its own size, then grow it as the run did
        options["config"] = copy.deepcopy(options["config"])
        options["config"].vocab_size = base_vocabulary
    base, info = auto_class.from_pretrained(ref.name_or_path, output_loading_info=True, **options)
    if grown:  # the new rows come from the adapter (its trainable tokens, or the saved embedding matrices)
        base.resize_token_embeddings(vocabulary, mean_resizing=False)
    saved = load_file(str(folder / "adapter_model.safetensors"))
    missing = [k for k in info["missing_keys"] if f"base_model.model.{k}" not in saved]
    with quiet_peft():
        model = get_peft_model(base, peft_config)
        unused = set_peft_model_state_dict(model, saved).unexpected_keys
    if unused:
        raise HftoolError(f"{flag} {folder}: {len(unused)} adapter weight(s) fit no layer of the base model "
                          f"{ref.name_or_path} (e.g. {unused[0]}); was the adapter trained on another base model?")
    merged = model.merge_and_unload().eval()
    if (folder / "generation_config.json").is_file() and merged.can_generate():  # the run's decoding defaults
        merged.generation_config = GenerationConfig.from_pretrained(folder)
    return (merged.base_model if body_only else merged), {**info, "missing_keys": missing}


def merge(folder: str | Path, flag: str = "ADAPTER_FOLDER"):
    """The merged model of an adapter folder and its tokenizer, ready for ``save_pretrained``."""
    import transformers
    from transformers import AutoTokenizer

    folder = Path(folder)
    task = read_adapter_config(folder, flag).get("task_type")
    if task not in AUTO_CLASSES:
        raise HftoolError(f"{flag} {folder}: {ADAPTER_CONFIG} has task_type {task!r}; hftool merges adapters of "
                          f"the tasks {', '.join(AUTO_CLASSES)}")
    model, _ = load_for_inference(folder, getattr(transformers, AUTO_CLASSES[task]), flag)
    return model, AutoTokenizer.from_pretrained(folder)
