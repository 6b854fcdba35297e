"""Benchmark: `hftool pretrain` against a plain Hugging Face Trainer script (run_clm style), back to back.

Same model (GPT-2, 4 layers, 256 hidden, 4 heads), same BPE tokenizer (vocab 8000, trained by hftool on the
same text), same data (WikiText-2 raw validation from ../shared/data), batch 16 x 128 tokens, same learning
rate schedule, bf16 where the CPU/GPU supports it. Each run is its own process. Reports the median tokens/s
over steps 20-120, their ratio, peak memory and the loss at equal steps.

Usage: python benchmarks/bench_pretrain.py [--steps 120] [--repeats 1] [--quick] [--trainer-compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import (
    REPO,
    RESULTS,
    WIKITEXT_VALID,
    child_env,
    describe,
    hftool_steps,
    machine,
    require,
    run,
    trainer_steps,
    window_median,
)

DATA = WIKITEXT_VALID
HELD_OUT = DATA.with_name("wiki.test.nonblank.raw")
MODEL = "{n_layer: 4, n_embd: 256, n_head: 4, n_positions: 256}"


def run_hftool(work: Path, tokenizer: Path, steps: int, precision: str, env: dict, tag: str) -> dict:
    out = work / f"hftool-{tag}"
    peak = work / f"hftool-{tag}.rss"
    run([sys.executable, str(REPO / "benchmarks" / "peak_rss.py"), str(peak), "hftool", "pretrain",
         f"data.files=[{DATA}]", f"tokenizer.path={tokenizer}", f"model.config={MODEL}", "data.block_size=128",
         "data.validation_fraction=0", "train.batch_size=16", f"train.max_steps={steps}", "train.lr=1e-3",
         "train.warmup_steps=10", "train.scheduler=cosine", "train.log_every=1", "train.eval_every=0",
         "train.save_every=0", f"train.mixed_precision={precision}", "train.report_to=none",
         f"train.output_dir={out}", "--overwrite"], env)
    tokens_per_s, losses = hftool_steps(out)
    return {"tokens_per_s": tokens_per_s, "losses": losses, "peak_rss_mb": float(peak.read_text()),
            "held_out_loss": held_out_loss(out, tokenizer)}


def run_trainer(work: Path, tokenizer: Path, steps: int, precision: str, env: dict, tag: str,
                compile: bool = False) -> dict:
    out = work / f"trainer-{tag}.json"
    model_dir = work / f"trainer-{tag}-model"
    cmd = [sys.executable, str(REPO / "benchmarks" / "baselines" / "run_clm_trainer.py"), "--train-file", str(DATA),
           "--tokenizer", str(tokenizer), "--output", str(out), "--steps", str(steps), "--save-model", str(model_dir)]
    run(cmd + (["--bf16"] if precision == "bf16" else []) + (["--compile"] if compile else []), env)
    tokens_per_s, losses, peak_rss_mb = trainer_steps(out)
    return {"tokens_per_s": tokens_per_s, "losses": losses, "peak_rss_mb": peak_rss_mb,
            "held_out_loss": held_out_loss(model_dir, tokenizer)}


def held_out_loss(model_dir: Path, tokenizer_dir: Path, block_size: int = 128, max_blocks: int = 200) -> float:
    """Both trained models scored by the same code on the same blocks of WikiText-2 test text (not trained on):
    the fair 'same loss' check, since each pipeline cuts its own training blocks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(HELD_OUT.read_text(encoding="utf-8"))["input_ids"][: block_size * max_blocks]
    blocks = torch.tensor(ids[: len(ids) // block_size * block_size]).view(-1, block_size)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        losses = [model(input_ids=batch, labels=batch).loss for batch in blocks.split(16)]
    return float(torch.stack(losses).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=1, help="alternating hftool/Trainer pairs")
    parser.add_argument("--quick", action="store_true", help="40 steps, for checking the script")
    parser.add_argument("--trainer-compile", action="store_true",
                        help="also run the Trainer with torch_compile=True; the faster Trainer is the baseline")
    args = parser.parse_args()
    steps = 40 if args.quick else args.steps
    first = 10 if args.quick else 20
    require(DATA)

    sys.path.insert(0, str(REPO))
    from hftool.environment import bf16_supported

    precision = "bf16" if bf16_supported() else "no"
    env = child_env()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = work / "tokenizer"
        run([sys.executable, "-m", "hftool", "tokenizer", "train", str(DATA), "-o", str(tokenizer),
             "--vocab-size", "8000"], env)
        runs = {"hftool": [], "trainer": []} | ({"trainer+compile": []} if args.trainer_compile else {})
        for repeat in range(args.repeats):
            runs["trainer"].append(run_trainer(work, tokenizer, steps, precision, env, str(repeat)))
            if args.trainer_compile:
                runs["trainer+compile"].append(run_trainer(work, tokenizer, steps, precision, env,
                                                           f"{repeat}-compile", compile=True))
            runs["hftool"].append(run_hftool(work, tokenizer, steps, precision, env, str(repeat)))

    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "tokens_per_s": statistics.median(window_median(r["tokens_per_s"], first, steps) for r in results),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "losses": results[0]["losses"],
            "mean_loss_last_20": statistics.mean(results[0]["losses"][s] for s in range(steps - 19, steps + 1)),
            "held_out_loss": statistics.median(r["held_out_loss"] for r in results),
        }
    baseline = max((name for name in summary if name != "hftool"), key=lambda name: summary[name]["tokens_per_s"])
    ratio = summary["hftool"]["tokens_per_s"] / summary[baseline]["tokens_per_s"]
    checkpoints = [s for s in range(10, steps + 1, 10)]
    print(describe(machine(precision)))
    print(f"precision {precision}, batch 16 x 128, steps {first}-{steps}, repeats {args.repeats}")
    print(f"{'':16s} {'tokens/s':>9s} {'peak MB':>8s} {'held-out loss':>13s} {'train loss, last 20':>19s}   "
          f"train loss at steps {checkpoints}")
    for name, s in summary.items():
        losses = " ".join(f"{s['losses'].get(step, float('nan')):.3f}" for step in checkpoints)
        print(f"{name:16s} {s['tokens_per_s']:9.0f} {s['peak_rss_mb']:8.0f} {s['held_out_loss']:13.3f} "
              f"{s['mean_loss_last_20']:19.3f}   {losses}")
    print(f"ratio hftool / {baseline}: {ratio:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pretrain.json").write_text(json.dumps({"machine": machine(precision), "steps": steps, "ratio": ratio,
                                                        "baseline": baseline, **summary}, indent=2))


if __name__ == "__main__":
    main()
