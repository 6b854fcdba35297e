"""Where a BLOOM-560m-shaped decode step spends its time on this CPU, against the memory-bandwidth bound.

bench_generate.py finds hftool's decode fast path reading the weights at 0.59 (float32) / 0.51 (bfloat16) of
the rate a streaming sum reads memory (issue 16 asks for 0.7). This script says where the rest goes, per dtype:

1. the streaming read rate: a 1 GiB sum, as bench_generate.py measures its bound;
2. the kernels' ceiling: the read and a one-row product by the largest matrix (the LM head), on 1 thread and on
   all threads, so the product kernel PyTorch offers is compared with the read on equal terms;
3. each kind of one-row product a step makes, the input row against every layer's matrix in turn (as a step
   streams them, so none is still in cache), by the kernel the fast path uses: the plain product (PyTorch's
   default kernel, as the forward and the fast path run it) and, in float32, the row-block split;
   GB/s and the fraction of (1);
4. steady decoding: fused steps alone (no prompt, no first-step check), and the same step's products alone in
   the step's order, taking turns, each round beside its own read; what is left is everything else a step does;
5. whole calls: the fast path's tokens/s (prompt and check included) without a profiler, and torch.profiler's
   time by operator over the same call (products against everything else).

    python benchmarks/profile_decode.py              # about five minutes on 2 cores
    python benchmarks/profile_decode.py --tokens 8   # fewer profiled steps

Prints tables and writes benchmarks/results/profile_decode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from bench_generate import bloom_560m_shaped, read_bandwidth
from common import RESULTS, describe, machine
from transformers import DynamicCache

from hftool.generation.fastpath import greedy_tokens
from hftool.generation.fastpath.matvec import MatVec
from hftool.generation.fastpath.steps import step_builder

PRODUCT_OPS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::mv", "aten::addmv"}


def layer_products(model) -> dict[str, list[torch.nn.Linear]]:
    """Each kind of product a BLOOM step makes, as the modules whose weights it streams."""
    blocks = model.transformer.h
    return {"query_key_value 1024→3072": [b.self_attention.query_key_value for b in blocks],
            "attention dense 1024→1024": [b.self_attention.dense for b in blocks],
            "mlp up 1024→4096": [b.mlp.dense_h_to_4h for b in blocks],
            "mlp down 4096→1024": [b.mlp.dense_4h_to_h for b in blocks],
            "lm_head 1024→250880": [model.lm_head]}


def step_linears(model) -> list[torch.nn.Linear]:
    """The modules a BLOOM step multiplies by, in the step's order."""
    return [layer for block in model.transformer.h for layer in (
        block.self_attention.query_key_value, block.self_attention.dense, block.mlp.dense_h_to_4h,
        block.mlp.dense_4h_to_h)] + [model.lm_head]


def kernel_ceiling(model, big: torch.Tensor, repeats: int) -> list[dict]:
    """The read and the plain one-row product by the LM head (the largest matrix), on 1 thread and on all."""
    threads = torch.get_num_threads()
    head = model.lm_head.weight
    x = torch.randn(1, head.shape[1], generator=torch.Generator().manual_seed(0)).to(head.dtype)
    rows = []
    for count in sorted({1, threads}):
        torch.set_num_threads(count)
        try:
            read = statistics.median(read_bandwidth(big) for _ in range(repeats))
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                F.linear(x, head)
                seconds.append(time.perf_counter() - started)
        finally:
            torch.set_num_threads(threads)
        product = head.numel() * head.element_size() / statistics.median(seconds)
        rows.append({"threads": count, "read_GBps": round(read / 1e9, 2), "product_GBps": round(product / 1e9, 2),
                     "product_of_read": round(product / read, 3)})
    return rows


def steady_decoding(model, prompt: list[int], big: torch.Tensor, rounds: int, steps_per_round: int = 4) -> dict:
    """Fused steps after the prompt, against the step's products alone in its order, in the same rounds.

    Each round measures the read, times ``steps_per_round`` steps, then the products; fractions are per round,
    then the median, so the read's drift between runs moves both sides alike.
    """
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    linears = step_linears(model)
    matvec = MatVec((m.weight, m.bias, True) for m in linears)
    rows = {width: torch.randn(1, width, generator=torch.Generator().manual_seed(0)).to(model.dtype)
            for width in {m.in_features for m in linears}}
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True)
    step = step_builder(model)(model, cache, len(prompt) + rounds * steps_per_round + 1)
    token, position = torch.tensor([[prompt[-1]]]), len(prompt)
    step(token, position)  # the first step allocates nothing later steps do not
    step_fractions, product_fractions, step_ms, product_ms, reads = [], [], [], [], []
    for _ in range(rounds):
        reads.append(read_bandwidth(big))
        bound_seconds = weight_bytes / reads[-1]
        for _ in range(steps_per_round):
            position += 1
            started = time.perf_counter()
            step(token, position)
            seconds = time.perf_counter() - started
            step_ms.append(seconds * 1e3)
            step_fractions.append(bound_seconds / seconds)
        started = time.perf_counter()
        for module in linears:
            matvec.linear(rows[module.in_features], module.weight, module.bias)
        seconds = time.perf_counter() - started
        product_ms.append(seconds * 1e3)
        product_fractions.append(bound_seconds / seconds)
    step_median, product_median = statistics.median(step_ms), statistics.median(product_ms)
    return {"rounds": rounds, "step_ms": round(step_median, 1), "step_of_bound": round(
                statistics.median(step_fractions), 3),
            "products_ms": round(product_median, 1),
            "products_of_bound": round(statistics.median(product_fractions), 3),
            "rest_ms": round(step_median - product_median, 1),
            "read_GBps": {"min": round(min(reads) / 1e9, 1), "median": round(statistics.median(reads) / 1e9, 1),
                          "max": round(max(reads) / 1e9, 1)}}


def product_rates(model, read_rate: float, repeats: int) -> list[dict]:
    """GB/s of each kind of product, plain and (where the fast path would) split, medians over ``repeats``."""
    kinds = layer_products(model)
    products = [(m.weight, m.bias, True) for modules in kinds.values() for m in modules]
    matvec = MatVec(products)
    rows = []
    for kind, modules in kinds.items():
        x = torch.randn(1, modules[0].in_features, generator=torch.Generator().manual_seed(0)).to(model.dtype)
        nbytes = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
        ways = {"plain": lambda m, x=x: F.linear(x, m.weight, m.bias)}
        if all(id(m.weight) in matvec.split for m in modules):
            ways["split"] = lambda m, x=x: matvec.linear(x, m.weight, m.bias)
        row = {"product": kind, "matrices": len(modules), "MB": round(nbytes / 1e6, 1)}
        for way, product in ways.items():
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                for module in modules:
                    product(module)
                seconds.append(time.perf_counter() - started)
            rate = nbytes / statistics.median(seconds)
            row[f"{way}_GBps"] = round(rate / 1e9, 2)
            row[f"{way}_of_read"] = round(rate / read_rate, 3)
        rows.append(row)
    return rows


def step_profile(model, prompt: list[int], tokens: int) -> dict:
    """The fast path's tokens/s (unprofiled, median of 3), and the profiler's operator times over one run."""
    speeds = []
    for _ in range(3):
        started = time.perf_counter()
        new = greedy_tokens(model, prompt, tokens, set(), "cpu")
        speeds.append(len(new) / (time.perf_counter() - started))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        greedy_tokens(model, prompt, tokens, set(), "cpu")
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    products = sum(e.self_cpu_time_total for e in events if e.key in PRODUCT_OPS)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {"tok_s": round(statistics.median(speeds), 2), "profiled_ms": round(total / 1e3, 1),
            "products_share": round(products / total, 3),
            "top_ops": [{"op": e.key, "calls": e.count, "share": round(e.self_cpu_time_total / total, 3)}
                        for e in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16, help="New tokens per timed and profiled run.")
    parser.add_argument("--repeats", type=int, default=5, help="Rounds of each product kind.")
    parser.add_argument("--rounds", type=int, default=12, help="Rounds of steady decoding (4 steps each).")
    args = parser.parse_args()
    load_before = os.getloadavg()
    big = torch.ones(2**28, dtype=torch.float32)
    report = {"dtypes": []}
    for dtype in (torch.float32, torch.bfloat16):
        model, _, prompt = bloom_560m_shaped(dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        with torch.inference_mode():
            read_rate = statistics.median(read_bandwidth(big) for _ in range(3))
            ceiling = kernel_ceiling(model, big, args.repeats)
            products = product_rates(model, read_rate, args.repeats)
            steady = steady_decoding(model, prompt, big, args.rounds)
        steps = step_profile(model, prompt, args.tokens)
        bound = read_rate / weight_bytes
        entry = {"dtype": str(dtype).removeprefix("torch."), "read_GBps": round(read_rate / 1e9, 2),
                 "bound_tok_s": round(bound, 2), "fast_path_of_bound": round(steps["tok_s"] / bound, 3),
                 "kernel_ceiling": ceiling, "products": products, "steady": steady, "steps": steps}
        report["dtypes"].append(entry)
        print(f"\n{entry['dtype']}: streaming read {entry['read_GBps']} GB/s, bound {entry['bound_tok_s']} tok/s, "
              f"fast path {steps['tok_s']} tok/s = {entry['fast_path_of_bound']} of the bound")
        print("| threads | read GB/s | one-row product by the LM head, GB/s | product / read |")
        print("|---:|---:|---:|---:|")
        for row in ceiling:
            print(f"| {row['threads']} | {row['read_GBps']} | {row['product_GBps']} | {row['product_of_read']} |")
        print("| product | matrices | MB | plain GB/s | plain / read | split GB/s | split / read |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in products:
            print(f"| {row['product']} | {row['matrices']} | {row['MB']} | {row['plain_GBps']} | "
                  f"{row['plain_of_read']} | {row.get('split_GBps', '–')} | {row.get('split_of_read', '–')} |")
        print(f"steady decoding ({steady['rounds']} rounds): step {steady['step_ms']} ms = "
              f"{steady['step_of_bound']} of the bound; its products alone {steady['products_ms']} ms = "
              f"{steady['products_of_bound']}; everything else {steady['rest_ms']} ms; read per round "
              f"{steady['read_GBps']['min']}–{steady['read_GBps']['max']} GB/s")
        print(f"profiled steps: products {steps['products_share']:.0%} of operator time; top operators: "
              + ", ".join(f"{op['op']} {op['share']:.0%}" for op in steps["top_ops"]))
        del model
    report["machine"] = {**machine("float32 and bfloat16 (per row)"), "load_average_before": load_before,
                         "load_average_after": os.getloadavg(), "threads": torch.get_num_threads()}
    print("\n" + describe(report["machine"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile_decode.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'profile_decode.json'}")


if __name__ == "__main__":
    main()
