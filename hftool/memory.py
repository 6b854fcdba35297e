"""Training-memory estimates per device, for DDP, FSDP and DeepSpeed ZeRO, in fp32 and mixed precision.

Model states follow the usual accounting (Rajbhandari et al., ZeRO): with AdamW, ``P`` parameters cost
4P (fp32 weights) + 4P (fp32 gradients) + 8P (two fp32 moments) bytes, plus 2P for the 16-bit weight copies that
autocast makes; sharding divides what it shards by the number of devices.

Activations are not guessed from a formula: the model is built on PyTorch's ``meta`` device (no memory, no
compute) and one forward pass of the recipe's micro-batch records the bytes of every tensor autograd saves for
the backward pass. On top come the transients of the backward pass (the gradients of the two largest saved
tensors, usually the vocabulary logits, and one fp32 buffer the size of the parameters for clipping and the
optimizer) and the runtime's own working memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hftool.errors import HftoolError
from hftool.loading import load_config, load_tokenizer, resolve_model
from hftool.models import config_class
from hftool.tasks.causal_lm import causal_lm_loss_sum

MiB = 2**20
# Working memory of the runtime itself (allocator, kernel scratch space, autograd engine), measured on a CPU
# with this stack: the same ~100 MiB for a 5M- and a 30M-parameter model. A GPU adds its CUDA context on top.
RUNTIME_WORKSPACE = 100 * MiB
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
MEASURED_LAYERS = 2  # deeper models are extrapolated from one and two layers (measure_any_depth)


@dataclass
class Footprint:
    """Bytes per device of one training setup."""

    strategy: str
    precision: str
    parameters: float
    gradients: float
    optimizer: float
    activations: float
    transient: float
    workspace: float = RUNTIME_WORKSPACE

    @property
    def total(self) -> float:
        return (self.parameters + self.gradients + self.optimizer + self.activations + self.transient
                + self.workspace)


def saved_activation_bytes(model: torch.nn.Module, loss_fn, inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(total, largest) bytes of the tensors autograd saves in one forward pass, views counted once."""
    saved: dict[int, int] = {}

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        saved[id(base)] = base.numel() * base.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn(model, inputs)
    sizes = sorted(saved.values())
    return sum(sizes), sizes[-1] if sizes else 0


def meta_model(config, dtype: torch.dtype):
    """The model for ``config`` on the meta device: shapes only, no memory."""
    from transformers import AutoModelForCausalLM, BertForPreTraining

    with torch.device("meta"):
        if config.model_type == "bert":
            model = BertForPreTraining(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype)


def activation_bytes(config, batch_size: int, seq_len: int, dtype: torch.dtype) -> tuple[int, int]:
    """Saved-activation bytes (total, largest tensor) of one micro-batch, measured on the meta device."""
    model = meta_model(config, dtype)
    model.train()
    with torch.device("meta"):
        ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
    if config.model_type == "bert":
        def loss(m, batch):
            out = m(input_ids=batch["input_ids"], token_type_ids=torch.zeros_like(batch["input_ids"]))
            return out.prediction_logits.float().sum() + out.seq_relationship_logits.float().sum()
    else:
        def loss(m, batch):
            return causal_lm_loss_sum(m(input_ids=batch["input_ids"]).logits, batch["input_ids"])
    return saved_activation_bytes(model, loss, {"input_ids": ids})


def largest_block_parameters(model: torch.nn.Module) -> int:
    """Parameters of the biggest transformer block: what FSDP / ZeRO-3 gather at once."""
    from hftool.engine.distributed import transformer_block_classes  # imports accelerate: only when sharding

    names = set(transformer_block_classes(model))
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    return max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)


@dataclass(frozen=True)
class Measured:
    """What the meta-device model of one config shows: parameters, the largest block's, and per precision the
    saved-activation bytes of one micro-batch and its largest saved tensor."""

    params: int
    block: int
    activations: dict[str, tuple[int, int]]


def measure(config, batch_size: int, seq_len: int) -> Measured:
    shapes = meta_model(config, torch.float32)
    return Measured(sum(p.numel() for p in shapes.parameters()), largest_block_parameters(shapes),
                    {precision: activation_bytes(config, batch_size, seq_len, dtype)
                     for precision, dtype in PRECISIONS.items()})


def measure_any_depth(config, batch_size: int, seq_len: int) -> Measured:
    """``measure`` for any number of layers in the time of two: every block has the same parameters and saves
    the same tensors, so a deep model is the one-layer model plus (layers - 1) times what the second layer
    adds. A million layers are never built."""
    import copy

    layers = config.num_hidden_layers
    if layers <= MEASURED_LAYERS:
        return _measure_or_refuse(config, batch_size, seq_len)
    one, two = (_measure_or_refuse(_with_layers(copy.deepcopy(config), n), batch_size, seq_len) for n in (1, 2))
    more = layers - 1
    return Measured(one.params + more * (two.params - one.params), two.block,
                    {precision: (one.activations[precision][0]
                                 + more * (two.activations[precision][0] - one.activations[precision][0]),
                                 two.activations[precision][1])
                     for precision in PRECISIONS})


def _with_layers(config, layers: int):
    config.num_hidden_layers = layers
    return config


def _measure_or_refuse(config, batch_size: int, seq_len: int) -> Measured:
    """Sizes whose tensors PyTorch cannot even describe (more than 2**63 elements) are one line, not a
    traceback."""
    try:
        return measure(config, batch_size, seq_len)
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            raise
        raise HftoolError(f"the model or micro-batch is too large to estimate ({str(exc).splitlines()[0]}); "
                          "check model.config, data.block_size and train.batch_size") from None


def estimate(config, batch_size: int, seq_len: int, num_processes: int = 1) -> list[Footprint]:
    """Per-device footprints of every strategy and precision for one model config and micro-batch."""
    measured = measure_any_depth(config, batch_size, seq_len)
    params, block = measured.params, measured.block
    n = max(num_processes, 1)
    footprints = []
    for precision in PRECISIONS:
        saved, largest = measured.activations[precision]
        transient = 2 * largest + 4 * params
        half = precision != "fp32"
        copies = 2 * params if half else 0  # autocast's 16-bit weight copies
        footprints += [
            Footprint("DDP", precision, 4 * params + copies, 4 * params, 8 * params, saved, transient),
            Footprint("FSDP", precision, (4 * params + copies) / n + 2 * 4 * block, 4 * params / n,
                      8 * params / n, saved, transient / n + 2 * largest),
            # DeepSpeed keeps 16-bit weights and gradients and fp32 master weights in its optimizer state.
            Footprint("ZeRO-2", precision, (2 if half else 4) * params, (2 if half else 4) * params / n,
                      (12 if half else 8) * params / n, saved, transient),
            Footprint("ZeRO-3", precision, (2 if half else 4) * params / n + 2 * 4 * block,
                      (2 if half else 4) * params / n, (12 if half else 8) * params / n, saved,
                      transient / n + 2 * largest),
        ]
    return footprints


def recipe_model_config(recipe):
    """The transformers config a pretraining recipe trains, without touching data or weights."""
    if recipe.model.init_from:
        name = recipe.model.init_from
        return load_config(resolve_model(name, "model.init_from"), name, "model.init_from")
    fields = {"bos_token_id": None, "eos_token_id": None, **recipe.model.config}
    fields.setdefault("vocab_size", _recipe_vocab_size(recipe))
    return config_class(recipe.model.architecture)(**fields)


def _recipe_vocab_size(recipe) -> int:
    if recipe.tokenizer.path:
        name = recipe.tokenizer.path
        ref = resolve_model(name, "tokenizer.path", marker="tokenizer_config.json")
        return len(load_tokenizer(ref, name, "tokenizer.path"))
    return recipe.tokenizer_vocab_size
