"""Load a causal LM and its tokenizer ready for batched generation (left padding, a pad token, eval mode)."""

from __future__ import annotations

import sys

from hftool.errors import HftoolError
from hftool.loading import load_config, load_model, load_tokenizer, resolve_model
from hftool.schemas.generate import ModelSettings

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
DEFAULT_CONTEXT = 2048  # for models without learned positions (BLOOM's ALiBi) or a stated limit


def check_causal_lm(config, flag: str, name: str, command: str = "generate") -> None:
    """Refuse encoders (BERT ...) and encoder-decoders by their architecture, before the weights load;
    ``command`` is the one the user ran, so the refusal names it (translate, summarize, serve ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", "?")
    architectures = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False):
        shown = architectures[0] if architectures else model_type
        raise HftoolError(
            f"{flag} {name} is a {shown} (encoder-decoder, model_type {model_type}), not a causal "
            f"language model; {command} needs a decoder such as GPT-2 or BLOOM"
        )
    if architectures:
        if not any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
            raise HftoolError(
                f"{flag} {name} is a {', '.join(architectures)} (model_type {model_type}), not a "
                f"causal language model; {command} needs a decoder such as GPT-2 or BLOOM "
                "(…ForCausalLM / …LMHeadModel)"
            )
    elif model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise HftoolError(
            f"{flag} {name}: model_type {model_type} has no causal-LM head in transformers; "
            f"{command} needs a decoder such as GPT-2 or BLOOM"
        )


def torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_for_generation(settings: ModelSettings, flag: str = "--model", command: str = "generate"):
    """Return ``(model, tokenizer)`` for ``command``: the model in eval mode on its device, the tokenizer padding
    on the left.

    A tokenizer without a pad token pads with its end-of-text token, as GPT-2 and BLOOM generation expects.
    """
    if not settings.name:
        raise HftoolError(
            f"{flag} is required (a folder, a Hub id or an alias such as gpt2 or bloom-560m), "
            "or pass a --recipe that names one"
        )
    ref = resolve_model(settings.name, flag)
    import torch

    from hftool.environment import bf16_inference_warning

    warning = bf16_inference_warning(settings.dtype)
    if warning:
        print(warning, file=sys.stderr)
    from transformers import AutoModelForCausalLM

    remote = settings.trust_remote_code
    config = load_config(ref, settings.name, flag, remote)
    check_causal_lm(config, flag, settings.name, command)
    tokenizer = load_tokenizer(ref, settings.name, flag, remote, pad=True)
    tokenizer.padding_side = "left"
    placement: dict = {}
    if settings.device_map == "auto":
        placement = {"device_map": "auto"}
        if settings.offload_folder:
            placement["offload_folder"] = settings.offload_folder
        if settings.max_memory:
            budget = settings.max_memory.items()
            placement["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in budget}
    model = load_model(AutoModelForCausalLM, ref, settings.name, flag, head="causal-lm", config=config,
                       dtype=torch_dtype(settings.dtype), trust_remote_code=remote, **placement)
    if settings.device_map is None and torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def input_device(model):
    """Where input ids go: the embedding's device (with device_map=auto, offloaded weights are on meta)."""
    import torch

    device = model.get_input_embeddings().weight.device
    return torch.device("cpu") if device.type == "meta" else device


def context_length(model, tokenizer) -> int:
    """The longest sequence (prompt + new tokens) the model takes."""
    config = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return DEFAULT_CONTEXT
