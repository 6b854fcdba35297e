"""LoRA against full fine-tuning on a BLOOM-560m-shaped causal LM: training step time, peak memory, trainable
parameters and optimizer state.

The model has BLOOM-560m's shape (24 layers, 1024 wide, 16 heads, its 250,880-token vocabulary) and random weights
(no pretrained causal LM is available offline; speed and memory do not depend on the values). Each arm runs in a
process of its own, so its peak resident memory is its own: the model, hftool's ``apply_adapter`` (peft LoRA,
hftool's BLOOM defaults: r 8 on every block linear layer) or nothing, AdamW over the trainable parameters, and
``--steps`` timed steps of causal-LM loss on random tokens after one warm-up step. Reported: median step seconds,
peak RSS, trainable parameters and the AdamW state bytes.

    python benchmarks/bench_lora_step.py                  # batch 2 x 256 tokens, 3 timed steps per arm
    python benchmarks/bench_lora_step.py --layers 2       # a minute: checks the plumbing
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from common import REPO, child_env, describe, machine


def arm(kind: str, layers: int, batch: int, length: int, steps: int) -> dict:
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    sys.path.insert(0, str(REPO))
    from hftool.adapters import apply_adapter
    from hftool.schemas.adapter import AdapterSettings

    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(n_layer=layers, hidden_size=1024, n_head=16, vocab_size=250880))
    model = apply_adapter(model, AdapterSettings(kind=kind), "causal-lm")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, 250880, (batch, length))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t))
    return {"arm": "LoRA" if kind == "lora" else "full", "step_s": statistics.median(times),
            "trainable": sum(p.numel() for p in trainable), "total": sum(p.numel() for p in model.parameters()),
            "optimizer_state_mb": state / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--arm", choices=["none", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(arm(args.arm, args.layers, args.batch, args.length, args.steps)))
        return
    rows = []
    for kind in ("none", "lora"):
        out = subprocess.run([sys.executable, __file__, "--arm", kind, "--layers", str(args.layers), "--batch",
                              str(args.batch), "--length", str(args.length), "--steps", str(args.steps)],
                             env=child_env(), check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{describe(machine('float32'))}; BLOOM-560m shape with {args.layers} layers, batch {args.batch} x "
          f"{args.length} tokens, median of {args.steps} steps\n")
    print("| | step s | peak RSS MB | trainable parameters | AdamW state MB |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['arm']} | {row['step_s']:.2f} | {row['peak_rss_mb']:,.0f} | {row['trainable']:,} of "
              f"{row['total']:,} ({100 * row['trainable'] / row['total']:.2f} %) | {row['optimizer_state_mb']:,.0f} |")
    full, lora = rows
    print(f"\nLoRA / full: step time {lora['step_s'] / full['step_s']:.2f}x, peak memory "
          f"{lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
