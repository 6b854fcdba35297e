"""Benchmark greedy decoding of one prompt on the CPU: hftool's fast path against model.generate, with and without
transformers' own fast path (static cache + torch.compile).

Three models with random weights built from their configs (no download): a tiny GPT-2 (4 layers, 256 wide, the
gpt2-tiny recipe's shape, an 8k byte-level BPE trained on the embedded corpus), one with GPT-2 small's exact shape
(12 layers, 768 wide, vocab 50,257) and one with BLOOM-560m's (24 layers, hidden 1024, 16 heads, vocab 250,880),
each in float32 and bfloat16, batch 1; the two full-size shapes read a prompt of ``--prompt-tokens`` token ids
(12 by default; a long one shows what the prompt's forward costs). Contenders:

- ``fast path``: ``hftool generate``'s default (:mod:`hftool.generation.fastpath`, fused step + split products);
- ``fast path, plain products`` (float32 only): the same without the row-block split, to show what it adds;
- ``model.generate``: ``--no-fast-decode``, i.e. plain ``model.generate`` with its dynamic cache;
- ``static + compile``: ``model.generate(cache_implementation="static")`` with ``torch.compile``'d forward, as
  transformers documents it (compiled once, before timing).

The contenders take turns within each round in one process (a shared machine's busy spells hit them alike),
and the medians over the rounds are reported, with the memory-bandwidth bound for the full-size shapes (a 1 GiB sum
measured before each timed run ÷ bytes of weights read per token). Greedy tokens are compared with
``model.generate``'s. Prints a table and writes benchmarks/results/generate.json.

    python benchmarks/bench_generate.py            # full run (about fifteen minutes on 2 cores)
    python benchmarks/bench_generate.py --quick    # a smoke run: fewer tokens and repeats
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no pool of compile workers left running beside the timing
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import BloomConfig, BloomForCausalLM, GenerationConfig, GPT2Config, GPT2LMHeadModel  # noqa: E402

from hftool.generation.decoding import Generator  # noqa: E402
from hftool.generation.fastpath import matvec  # noqa: E402
from hftool.schemas.generate import DecodingSettings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe, machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
PROMPT = "The with statement is used to wrap the execution of a block"


def tiny_gpt2(dtype: torch.dtype):
    from hftool.data.builtin_corpus import python_docs_documents
    from hftool.data.tokenizer_training import train_tokenizer

    tokenizer = train_tokenizer(python_docs_documents()[:2000], "byte-bpe", vocab_size=8000)
    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=512, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).to(dtype).eval(), tokenizer, tokenizer(PROMPT)["input_ids"]


def bloom_560m_shaped(dtype: torch.dtype, prompt_tokens: int = 12):
    """BLOOM-560m's architecture with random N(0, 0.02) weights, built without any download."""
    config = BloomConfig(vocab_size=250_880, hidden_size=1024, n_layer=24, n_head=16, bos_token_id=1,
                         eos_token_id=2, pad_token_id=3)
    return _random_weights(BloomForCausalLM, config, dtype, prompt_tokens)


def gpt2_small_shaped(dtype: torch.dtype, prompt_tokens: int = 12):
    """GPT-2 small's architecture (the Hub's ``gpt2``) with random N(0, 0.02) weights."""
    config = GPT2Config(bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return _random_weights(GPT2LMHeadModel, config, dtype, prompt_tokens)


def _random_weights(model_class, config, dtype: torch.dtype, prompt_tokens: int):
    """The model on the CPU with seeded N(0, 0.02) weights (norms at 1 and 0, biases 0), a tokenizer stub and
    ``prompt_tokens`` token ids as the prompt."""
    with torch.device("meta"):
        model = model_class(config)
    model = model.to_empty(device="cpu").to(dtype)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name or "ln_" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.tie_weights()
    return model.eval(), TokenizerStub(), list(range(1000, 1000 + prompt_tokens))


class TokenizerStub:
    """The few tokenizer fields the decoder needs; the BLOOM case feeds token ids directly."""

    pad_token_id, bos_token_id, eos_token_id = 3, 1, 2

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def contenders(model, tokenizer, prompt: list[int], new_tokens: int) -> dict:
    """name -> run() returning the new token ids, each contender generating from the same prompt."""
    on = Generator(model, tokenizer, DecodingSettings(max_new_tokens=new_tokens))
    off = Generator(model, tokenizer, DecodingSettings(max_new_tokens=new_tokens, fast_decode=False))
    assert on.uses_fast_path and not off.uses_fast_path
    static = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              cache_implementation="static")
    compiled_forward = torch.compile(model.forward, fullgraph=True)

    def fast_path():
        return on.generate([prompt])[0][0].token_ids

    def plain_products():
        threshold = matvec.MIN_SPLIT_BYTES
        matvec.MIN_SPLIT_BYTES = 1 << 62
        try:
            return on.generate([prompt])[0][0].token_ids
        finally:
            matvec.MIN_SPLIT_BYTES = threshold

    def model_generate():
        return off.generate([prompt])[0][0].token_ids

    def static_compile():
        ids = torch.tensor([prompt])
        model.forward = compiled_forward  # only for this call: the other contenders run the plain forward
        try:
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=static)
        finally:
            del model.forward
        return _cut_at_eos(out[0, len(prompt):].tolist(), tokenizer.eos_token_id)

    runs = {"fast path": fast_path, "model.generate": model_generate, "static + compile": static_compile}
    if model.dtype == torch.float32:
        runs["fast path, plain products"] = plain_products
    return runs


def _cut_at_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def read_bandwidth(big: torch.Tensor) -> float:
    """Bytes/s of a streaming read: summing ``big`` (1 GiB, far larger than any cache), best of two."""
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        big.sum()
        seconds.append(time.perf_counter() - started)
    return big.numel() * big.element_size() / min(seconds)


def measure(case: str, build, dtype: torch.dtype, new_tokens: int, repeats: int, big) -> dict:
    model, tokenizer, prompt = build(dtype)
    runs = contenders(model, tokenizer, prompt, new_tokens)
    tokens, first_call_s = {}, {}
    for name, run in runs.items():  # warm-up: compiles the static + compile forward
        started = time.perf_counter()
        tokens[name] = run()
        first_call_s[name] = round(time.perf_counter() - started, 1)
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    bandwidths = []
    for round_ in range(repeats):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))  # alternate who goes first
        for name in order:
            if big is not None:
                bandwidths.append(read_bandwidth(big))
            started = time.perf_counter()
            tokens[name] = runs[name]()
            speeds[name].append(len(tokens[name]) / (time.perf_counter() - started))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: counted once
    row = {"case": case, "dtype": str(dtype).replace("torch.", ""), "batch": 1, "prompt_tokens": len(prompt),
           "new_tokens": len(tokens["model.generate"]), "first_call_s": first_call_s,
           "tok_s": {name: statistics.median(v) for name, v in speeds.items()},
           "tok_s_all": speeds,
           "same_tokens_as_generate": {name: ids == tokens["model.generate"] for name, ids in tokens.items()}}
    if bandwidths:
        row["read_bandwidth_GBps"] = statistics.median(bandwidths) / 1e9
        row["bound_tok_s"] = statistics.median(bandwidths) / weight_bytes
    return row


NAMES = ["fast path", "fast path, plain products", "model.generate", "static + compile"]


def print_table(rows: list[dict]) -> None:
    print("\n| case | dtype | new tokens | " + " | ".join(f"{n} tok/s" for n in NAMES)
          + " | fast / generate | fast / static+compile | bound tok/s | same tokens as generate |")
    print("|---|---|---:|" + "---:|" * (len(NAMES) + 3) + "---|")
    for row in rows:
        speed = row["tok_s"]
        cells = [f"{speed[n]:.1f}" if n in speed else "–" for n in NAMES]
        same = ", ".join(n for n, ok in row["same_tokens_as_generate"].items() if ok and n != "model.generate")
        bound = f"{row['bound_tok_s']:.1f}" if "bound_tok_s" in row else "–"
        print(f"| {row['case']} | {row['dtype']} | {row['new_tokens']} | " + " | ".join(cells)
              + f" | {speed['fast path'] / speed['model.generate']:.2f}x"
              + f" | {speed['fast path'] / speed['static + compile']:.2f}x | {bound} | {same or 'none'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 new tokens, 1 repeat: checks that it runs")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 5)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens for the tiny GPT-2 (default 128)")
    parser.add_argument("--bloom-tokens", type=int, default=32,
                        help="new tokens for the full-size shapes, GPT-2 small and BLOOM-560m (default 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--prompt-tokens", type=int, default=12,
                        help="prompt length for the full-size shapes (default 12)")
    parser.add_argument("--only", choices=["tiny-gpt2", "gpt2-small-shape", "bloom-560m-shape"], default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 5)
    tiny_tokens, bloom_tokens = (8, 8) if args.quick else (args.tokens, args.bloom_tokens)
    started, load_before = time.time(), os.getloadavg()
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        if args.only in (None, "tiny-gpt2"):
            rows.append(measure("tiny-gpt2", tiny_gpt2, dtype, tiny_tokens, repeats, None))
            print_table(rows[-1:])
    big = torch.ones(2**28, dtype=torch.float32)
    for case, shaped, new_tokens in (("gpt2-small-shape", gpt2_small_shaped, bloom_tokens),
                                     ("bloom-560m-shape", bloom_560m_shaped, bloom_tokens)):
        for dtype in (torch.float32, torch.bfloat16):
            if args.only in (None, case):
                build = functools.partial(shaped, prompt_tokens=args.prompt_tokens)
                rows.append(measure(case, build, dtype, new_tokens, repeats, big))
                print_table(rows[-1:])
    print_table(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"quick": args.quick, "repeats": repeats, "threads": torch.get_num_threads(),
            "machine": machine("float32 and bfloat16 (per row)"),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "wall_s": round(time.time() - started, 1)}
    print("\n" + describe(meta["machine"]))
    partial = RESULTS.with_name(RESULTS.name + ".partial")
    partial.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, RESULTS)
    print(f"\nwrote {RESULTS} ({meta['wall_s']} s, {meta['threads']} threads, "
          f"load average {load_before} before, {meta['load_average_after']} after)")


if __name__ == "__main__":
    main()
