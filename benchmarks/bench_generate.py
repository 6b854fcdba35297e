"""Benchmark ``hftool generate`` decoding on the CPU: greedy, 128 new tokens, two cases back to back.

1. A tiny GPT-2 (4 layers, 256 wide, the gpt2-tiny recipe's shape, random weights, an 8k byte-level BPE
   trained on the embedded corpus): hftool's decoder against ``pipeline("text-generation")`` and plain
   ``model.generate``, batch 1 and batch 8. The outputs are checked to be the same tokens.
2. A model with BLOOM-560m's exact shape (24 layers, hidden 1024, 16 heads, vocab 250,880) and random
   weights built from the config (no download), in bfloat16 and float32, batch 1: tokens/s against the
   memory-bandwidth bound = DRAM read bandwidth (a streaming sum over a 1 GiB tensor, measured right before
   each timed run, with the same threads) ÷ bytes of weights read per token (every parameter once; the tied
   250,880 x 1024 embedding is read as the LM head on every token).

Medians over repeats. Prints a table and writes benchmarks/results/generate.json.

    python benchmarks/bench_generate.py            # full run (a few minutes)
    python benchmarks/bench_generate.py --quick    # a smoke run: fewer tokens and repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import (  # noqa: E402
    BloomConfig,
    BloomForCausalLM,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    pipeline,
)

from hftool.generation.batching import run_prompts  # noqa: E402
from hftool.generation.decoding import Generator  # noqa: E402
from hftool.generation.settings import DecodingSettings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe, machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
PROMPTS = [
    "The Python interpreter",
    "A list comprehension",
    "Return the number of items in a container, and",
    "Exceptions",
    "The with statement is used to wrap the execution of a block",
    "Dictionaries map",
    "If the object is a module object, the",
    "This function",
]


def median_seconds(runs: dict, repeats: int) -> dict[str, tuple[float, object]]:
    """Median wall time of each ``run()`` over ``repeats`` rounds after one warm-up, with its last result.

    The contenders take turns within each round, so a busy spell on a shared machine hits them alike.
    """
    results = {name: run() for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - started)
    return {name: (statistics.median(times[name]), results[name]) for name in runs}


def tiny_gpt2_case(new_tokens: int, repeats: int) -> list[dict]:
    from hftool.data.builtin_corpus import python_docs_documents
    from hftool.data.tokenizer_training import train_tokenizer

    tokenizer = train_tokenizer(python_docs_documents()[:2000], "byte-bpe", vocab_size=8000)
    tokenizer.padding_side = "left"
    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=256, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    generator = Generator(model, tokenizer, DecodingSettings(max_new_tokens=new_tokens))
    assert generator.uses_lean_loop
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    greedy = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    rows = []
    for batch in (1, 8):
        prompts = PROMPTS[:batch]
        runs = _tiny_runs(pipe, generator, model, tokenizer, greedy, prompts)
        timed = median_seconds(runs, repeats)
        (t_pipe, pipe_texts), (t_hf, sequences) = timed["pipeline"], timed["hftool"]
        tokens = sum(s.tokens for s in sequences)
        rows.append({"case": "tiny-gpt2", "batch": batch, "dtype": "float32", "new_tokens": tokens,
                     "pipeline_tok_s": tokens / t_pipe, "model_generate_tok_s": tokens / timed["generate"][0],
                     "hftool_tok_s": tokens / t_hf, "speedup_vs_pipeline": t_pipe / t_hf,
                     "same_text_as_pipeline": [s.text for s in sequences] == pipe_texts,
                     "prompt_tokens": [len(generator.encode(p)) for p in prompts]})
    return rows


def _tiny_runs(pipe, generator, model, tokenizer, greedy, prompts: list[str]) -> dict:
    """The contenders on the same prompts in one batch: the pipeline, hftool and plain model.generate."""
    batch = len(prompts)

    def run_pipeline():
        out = pipe(prompts, batch_size=batch, generation_config=greedy, return_full_text=False)
        return [o[0]["generated_text"] for o in out]

    def run_hftool():
        return [r.sequences[0] for r in run_prompts(generator, prompts, batch, context=256)]

    def run_generate():
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            return model.generate(**encoded, generation_config=greedy)

    return {"pipeline": run_pipeline, "hftool": run_hftool, "generate": run_generate}


def bloom_560m_shaped(dtype: torch.dtype) -> BloomForCausalLM:
    """BLOOM-560m's architecture with random N(0, 0.02) weights, built without any download."""
    config = BloomConfig(vocab_size=250_880, hidden_size=1024, n_layer=24, n_head=16, bos_token_id=1,
                         eos_token_id=2, pad_token_id=3)
    with torch.device("meta"):
        model = BloomForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name or "ln_f" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.tie_weights()
    return model.eval()


def read_bandwidth(big: torch.Tensor, repeats: int = 3) -> float:
    """Bytes/s of a streaming read: the median time of summing ``big`` (1 GiB, far larger than any cache)."""
    seconds, _ = median_seconds({"sum": big.sum}, repeats)["sum"]
    return big.numel() * big.element_size() / seconds


class TokenizerStub:
    """The few tokenizer fields the decoder needs; the benchmark feeds token ids directly."""

    pad_token_id, bos_token_id, eos_token_id = 3, 1, 2

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def bloom_case(new_tokens: int, repeats: int) -> list[dict]:
    """The bandwidth a machine shared with other jobs gives varies by tens of percent from one second to the
    next (measured here: 29 to 48 GB/s within a minute), so it is measured right before every timed run and
    each run is set against its own bound; the medians of those fractions are reported."""
    rows = []
    prompt = list(range(1000, 1010))
    big = torch.ones(2**28, dtype=torch.float32)
    for dtype in (torch.bfloat16, torch.float32):
        model = bloom_560m_shaped(dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: counted once
        generator = Generator(model, TokenizerStub(), DecodingSettings(max_new_tokens=new_tokens))
        eos_free = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=3)

        def run_generate(model=model, eos_free=eos_free):
            ids = torch.tensor([prompt])
            with torch.inference_mode():
                return model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=eos_free)

        def run_hftool(generator=generator):
            return generator.generate([prompt])

        (sequences,), generated = run_hftool(), run_generate()  # warm-up, and the outputs to compare
        tokens = sequences[0].tokens
        same_tokens = sequences[0].token_ids == generated[0, len(prompt):len(prompt) + tokens].tolist()
        runs = {"hftool": (run_hftool, tokens), "generate": (run_generate, new_tokens)}
        speeds = {name: [] for name in runs}
        fractions = {name: [] for name in runs}
        bandwidths = []
        for _ in range(repeats):
            for name, (run, count) in runs.items():
                bandwidth = read_bandwidth(big)
                started = time.perf_counter()
                run()
                speed = count / (time.perf_counter() - started)
                bandwidths.append(bandwidth)
                speeds[name].append(speed)
                fractions[name].append(speed / (bandwidth / weight_bytes))
        bandwidth = statistics.median(bandwidths)
        rows.append({"case": "bloom-560m-shape", "batch": 1, "dtype": str(dtype).replace("torch.", ""),
                     "new_tokens": tokens, "weight_bytes": weight_bytes,
                     "read_bandwidth_GBps": bandwidth / 1e9, "read_bandwidth_range_GBps": [min(bandwidths) / 1e9,
                                                                                          max(bandwidths) / 1e9],
                     "bound_tok_s": bandwidth / weight_bytes,
                     "model_generate_tok_s": statistics.median(speeds["generate"]),
                     "hftool_tok_s": statistics.median(speeds["hftool"]),
                     "hftool_fraction_of_bound": statistics.median(fractions["hftool"]),
                     "model_generate_fraction_of_bound": statistics.median(fractions["generate"]),
                     "same_tokens_as_generate": same_tokens})
        del model, generator
    return rows


COLUMNS = [("pipeline tok/s", "pipeline_tok_s", "{:.1f}"),
           ("model.generate tok/s", "model_generate_tok_s", "{:.1f}"),
           ("hftool tok/s", "hftool_tok_s", "{:.1f}"),
           ("hftool vs pipeline", "speedup_vs_pipeline", "{:.2f}x"),
           ("bound tok/s", "bound_tok_s", "{:.1f}"), ("hftool / bound", "hftool_fraction_of_bound", "{:.2f}"),
           ("generate / bound", "model_generate_fraction_of_bound", "{:.2f}"),
           ("same text as pipeline", "same_text_as_pipeline", "{}"),
           ("same tokens as generate", "same_tokens_as_generate", "{}")]


def print_table(rows: list[dict]) -> None:
    print("\n| case | dtype | batch | " + " | ".join(title for title, _, _ in COLUMNS) + " |")
    print("|---|---|---:|" + "---:|" * len(COLUMNS))
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else "–" for _, key, fmt in COLUMNS]
        print(f"| {row['case']} | {row['dtype']} | {row['batch']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 new tokens, 1 repeat: checks that it runs")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    new_tokens = 16 if args.quick else 128
    repeats = args.repeats or (1 if args.quick else 3)
    started = time.time()
    rows = tiny_gpt2_case(new_tokens, repeats) + bloom_case(new_tokens, repeats)
    print_table(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"quick": args.quick, "new_tokens": new_tokens, "repeats": repeats,
            "machine": machine("bfloat16 and float32 (per row)"), "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(), "wall_s": round(time.time() - started, 1)}
    print("\n" + describe(meta["machine"]))
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS} ({meta['wall_s']} s, {meta['threads']} threads, "
          f"load average {meta['load_average']})")


if __name__ == "__main__":
    main()
