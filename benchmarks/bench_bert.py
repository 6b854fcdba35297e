"""Benchmark: `hftool pretrain` BERT MLM + NSP against a plain Trainer script (BertForPreTraining), back to back.

Same BERT (4 layers, 256 hidden, 4 heads), same lower-cased WordPiece tokenizer (vocab 8000, trained by hftool on
the same text), same sentence pairs (hftool's pair builder on WikiText-2 raw validation from ../shared/data: the
Trainer gets the pairs hftool draws for epoch 0), batch 16 x 128 tokens, same learning-rate schedule, bf16 where
the CPU/GPU supports it. Each run is its own process. Reports the median tokens/s (non-padding tokens) over
steps 20-120, their ratio, peak memory, and both models' MLM and NSP accuracy at equal steps, measured by one
evaluator (plain transformers, fp32) on the same held-out pairs with the same masks.

Usage: python benchmarks/bench_bert.py [--steps 120] [--repeats 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
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
MODEL = ("{num_hidden_layers: 4, hidden_size: 256, num_attention_heads: 4, intermediate_size: 1024, "
         "max_position_embeddings: 512}")
BLOCK, BATCH, SEED, LR, VALIDATION_FRACTION = 128, 16, 42, 5e-4, 0.2
EVAL_PAIRS = 512


def make_pairs(tokenizer_dir: Path, train_file: Path) -> tuple[int, list]:
    """Write hftool's epoch-0 training pairs (unmasked) as JSONL; return their count and the held-out examples."""
    from transformers import AutoTokenizer

    from hftool.data.bert_examples import VALIDATION_SALT, BertExamples, BertExamplesConfig
    from hftool.data.bert_sentences import prepare_corpus, tokenize_corpus
    from hftool.data.text import DataConfig, load_documents

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    docs = load_documents(DataConfig(files=[str(DATA)], validation_fraction=VALIDATION_FRACTION), SEED)
    settings = BertExamplesConfig()
    splits = [BertExamples(prepare_corpus(tokenize_corpus(split, tokenizer), BLOCK - 3, settings.min_document_tokens),
                           tokenizer, settings, BLOCK, SEED, next_sentence=True, salt=salt)
              for split, salt in ((docs.train, 0), (docs.validation, VALIDATION_SALT))]
    train, held_out = splits
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    with train_file.open("w", encoding="utf-8") as fh:
        for index in range(len(train)):
            a, b, label = train.segments(index, train.rng(index, 0))
            ids = [cls, *a.tolist(), sep, *b.tolist(), sep]
            fh.write(json.dumps({"input_ids": ids, "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                                 "next_sentence_label": label}) + "\n")
    return len(train), [held_out.example(i, 0) for i in range(min(EVAL_PAIRS, len(held_out)))]


def evaluate(model_dir: Path, examples: list, pad_id: int) -> dict:
    """MLM accuracy over the masked tokens and NSP accuracy over the pairs, with a full BertForPreTraining."""
    import torch
    from transformers import BertForPreTraining

    from hftool.data.bert_examples import collate_examples

    model = BertForPreTraining.from_pretrained(model_dir).eval()
    mlm_hits = masked = nsp_hits = 0
    with torch.inference_mode():
        for start in range(0, len(examples), 32):
            batch = {k: torch.from_numpy(v) for k, v in collate_examples(examples[start:start + 32], pad_id).items()}
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        token_type_ids=batch["token_type_ids"])
            predicted = out.prediction_logits.flatten(0, 1)[batch["masked_positions"]].argmax(-1)
            mlm_hits += int((predicted == batch["masked_labels"]).sum())
            masked += len(predicted)
            nsp_hits += int((out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).sum())
    return {"mlm_accuracy": mlm_hits / masked, "nsp_accuracy": nsp_hits / len(examples)}


def run_hftool(work: Path, tokenizer: Path, steps: int, precision: str, env: dict, tag: str) -> dict:
    out = work / f"hftool-{tag}"
    peak = work / f"hftool-{tag}.rss"
    run([sys.executable, str(REPO / "benchmarks" / "peak_rss.py"), str(peak), "hftool", "pretrain",
         "-r", "bert-tiny-mlm-nsp", f"data.files=[{DATA}]", f"tokenizer.path={tokenizer}", f"model.config={MODEL}",
         f"data.block_size={BLOCK}", f"data.validation_fraction={VALIDATION_FRACTION}", f"train.seed={SEED}",
         f"train.batch_size={BATCH}", f"train.max_steps={steps}", f"train.lr={LR}", "train.warmup_steps=10",
         "train.scheduler=linear", "train.log_every=1", "train.eval_every=0", "train.eval_max_batches=1",
         "train.save_every=0", f"train.mixed_precision={precision}", "train.report_to=none",
         f"train.output_dir={out}", "--overwrite"], env)
    tokens_per_s, losses = hftool_steps(out)
    return {"tokens_per_s": tokens_per_s, "losses": losses, "peak_rss_mb": float(peak.read_text()), "model_dir": out}


def run_trainer(work: Path, tokenizer: Path, pairs: Path, steps: int, precision: str, env: dict, tag: str) -> dict:
    out = work / f"trainer-{tag}.json"
    model_dir = work / f"trainer-{tag}"
    cmd = [sys.executable, str(REPO / "benchmarks" / "baselines" / "run_mlm_nsp_trainer.py"), "--pairs", str(pairs),
           "--tokenizer", str(tokenizer), "--output", str(out), "--model-dir", str(model_dir),
           "--steps", str(steps), "--batch-size", str(BATCH), "--lr", str(LR)]
    run(cmd + (["--bf16"] if precision == "bf16" else []), env)
    tokens_per_s, losses, peak_rss_mb = trainer_steps(out)
    return {"tokens_per_s": tokens_per_s, "losses": losses, "peak_rss_mb": peak_rss_mb, "model_dir": model_dir}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=1, help="alternating Trainer/hftool pairs")
    parser.add_argument("--quick", action="store_true", help="40 steps, for checking the script")
    args = parser.parse_args()
    steps = 40 if args.quick else args.steps
    first = 10 if args.quick else 20
    require(DATA)

    sys.path.insert(0, str(REPO))
    from hftool.environment import bf16_supported

    precision = "bf16" if bf16_supported() else "no"
    env = child_env()
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "TRANSFORMERS_VERBOSITY")})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = work / "tokenizer"
        run([sys.executable, "-m", "hftool", "tokenizer", "train", str(DATA), "-o", str(tokenizer), "--kind",
             "wordpiece", "--lowercase", "--vocab-size", "8000"], env)
        pairs = work / "pairs.jsonl"
        num_pairs, held_out = make_pairs(tokenizer, pairs)
        runs = {"hftool": [], "trainer": []}
        for repeat in range(args.repeats):
            runs["trainer"].append(run_trainer(work, tokenizer, pairs, steps, precision, env, str(repeat)))
            runs["hftool"].append(run_hftool(work, tokenizer, steps, precision, env, str(repeat)))
        from transformers import AutoTokenizer

        pad_id = AutoTokenizer.from_pretrained(tokenizer).pad_token_id
        accuracy = {name: evaluate(results[0]["model_dir"], held_out, pad_id) for name, results in runs.items()}

    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "tokens_per_s": statistics.median(window_median(r["tokens_per_s"], first, steps) for r in results),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "losses": results[0]["losses"],
            **accuracy[name],
        }
    ratio = summary["hftool"]["tokens_per_s"] / summary["trainer"]["tokens_per_s"]
    checkpoints = list(range(10, steps + 1, 10))
    print(describe(machine(precision)))
    print(f"precision {precision}, batch {BATCH} x {BLOCK}, {num_pairs} training pairs, steps {first}-{steps}, "
          f"repeats {args.repeats}; accuracy on {len(held_out)} held-out pairs after {steps} steps")
    print(f"{'':10s} {'tokens/s':>10s} {'peak MB':>9s} {'MLM acc':>8s} {'NSP acc':>8s}   loss at steps {checkpoints}")
    for name in ("trainer", "hftool"):
        s = summary[name]
        losses = " ".join(f"{s['losses'].get(step, float('nan')):.3f}" for step in checkpoints)
        print(f"{name:10s} {s['tokens_per_s']:10.0f} {s['peak_rss_mb']:9.0f} {s['mlm_accuracy']:8.3f} "
              f"{s['nsp_accuracy']:8.3f}   {losses}")
    print(f"ratio hftool / Trainer: {ratio:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bert.json").write_text(json.dumps({"machine": machine(precision), "steps": steps, "ratio": ratio,
                                                    "training_pairs": num_pairs, "held_out_pairs": len(held_out),
                                                    **summary}, indent=2))


if __name__ == "__main__":
    main()
