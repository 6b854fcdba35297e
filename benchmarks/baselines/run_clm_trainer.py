"""The plain Hugging Face way to pretrain a causal LM: run_clm's data pipeline and the Trainer.

Written in the style of transformers' examples/pytorch/language-modeling/run_clm.py (line-per-example text
dataset, tokenize, group_texts into blocks) with its best flags on this machine (bf16 where supported).
Used by bench_pretrain.py as the baseline; it records the wall time of every optimizer step.
"""

from __future__ import annotations

import argparse
from itertools import chain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--output", required=True, help="JSON file for per-step times, losses and peak memory")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true", help="TrainingArguments(torch_compile=True)")
    parser.add_argument("--save-model", help="folder to save the trained model in (for held-out scoring)")
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from step_clock import StepClock
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    raw = load_dataset("text", data_files={"train": args.train_file})["train"]
    tokenized = raw.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // args.block_size) * args.block_size
        result = {k: [t[i:i + args.block_size] for i in range(0, total, args.block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    train = tokenized.map(group_texts, batched=True)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=4, n_embd=256, n_head=4, n_positions=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)

    clock = StepClock()
    training_args = TrainingArguments(
        output_dir=args.output + ".trainer", per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=args.lr, warmup_steps=10, lr_scheduler_type="cosine", weight_decay=0.01, bf16=args.bf16,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], max_grad_norm=1.0, seed=42,
        dataloader_num_workers=0, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        torch_compile=args.compile,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=default_data_collator,
                      callbacks=[clock])
    trainer.train()
    if args.save_model:
        trainer.save_model(args.save_model)
    clock.write(args.output, args.batch_size * args.block_size)


if __name__ == "__main__":
    main()
