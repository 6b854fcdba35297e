"""The plain Hugging Face way to pretrain BERT with MLM + NSP: BertForPreTraining, the Trainer and its collator.

transformers 5 has no NSP data builder any more (TextDatasetForNextSentencePrediction was removed), so the
sentence pairs come ready-made from a JSONL file (``input_ids`` with [CLS]/[SEP], ``token_type_ids``,
``next_sentence_label``); masking is DataCollatorForLanguageModeling's (15 %, 80/10/10), applied per batch.
The model computes its vocabulary projection on every position, as BertForPreTraining does. Best flags on this
machine: bf16 where supported. Used by bench_bert.py as the baseline; it records every optimizer step's wall
time and real (non-padding) tokens, and saves the model for evaluation.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", required=True, help="JSONL of sentence pairs")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--output", required=True, help="JSON file for per-step times, tokens, losses, memory")
    parser.add_argument("--model-dir", required=True, help="where the trained model is saved")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from step_clock import StepClock
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForPreTraining,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    pairs = load_dataset("json", data_files={"train": args.pairs})["train"]
    config = BertConfig(vocab_size=len(tokenizer), num_hidden_layers=args.layers, hidden_size=args.hidden,
                        num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    model = BertForPreTraining(config)
    masking = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
    tokens_per_batch: list[int] = []

    def collate(examples):
        batch = masking(examples)
        tokens_per_batch.append(int(batch["attention_mask"].sum()))
        return batch

    clock = StepClock()
    training_args = TrainingArguments(
        output_dir=args.model_dir + ".trainer", per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=args.lr, warmup_steps=10, lr_scheduler_type="linear", weight_decay=0.01, bf16=args.bf16,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], max_grad_norm=1.0, seed=42,
        dataloader_num_workers=0, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=pairs, data_collator=collate,
                      callbacks=[clock])
    trainer.train()
    trainer.save_model(args.model_dir)
    tokenizer.save_pretrained(args.model_dir)
    clock.write(args.output, tokens_per_batch[:len(clock.times)])


if __name__ == "__main__":
    main()
