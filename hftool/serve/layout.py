"""GPT-2's Conv1D layers become ``nn.Linear`` layers when a model is served in bfloat16 on the CPU.

Conv1D keeps its weight input-major, (in, out), and multiplies with ``torch.addmm``; ``nn.Linear`` keeps it
output-major, (out, in). The product is the same, but oneDNN, which runs PyTorch's bfloat16 products on the
CPU, brings the weight into its own layout inside every call, and it does that faster from the output-major one
(benchmarks/README.md, "Serving"). A decoding step is mostly those products. In float32 the layers stay as they
are: there the served greedy tokens must be ``hftool generate``'s bit for bit, and another kernel may round
differently.
"""

from __future__ import annotations


def output_major_linears(model) -> int:
    """Replace each Conv1D of ``model`` (bfloat16, on the CPU) by an ``nn.Linear`` holding the transposed
    weight; the Conv1D's weight is freed. Returns how many were replaced (0: the model is left as it is)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if model.dtype != torch.bfloat16 or model.device.type != "cpu":
        return 0
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is Conv1D]
    for parent, name, conv in swaps:
        inputs, outputs = conv.weight.shape
        linear = torch.nn.Linear(inputs, outputs, bias=conv.bias is not None, device="meta", dtype=conv.weight.dtype)
        linear.weight = torch.nn.Parameter(conv.weight.detach().t().contiguous(), requires_grad=False)
        if conv.bias is not None:
            linear.bias = torch.nn.Parameter(conv.bias.detach(), requires_grad=False)
        setattr(parent, name, linear)
    return len(swaps)
