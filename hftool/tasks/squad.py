"""Extractive question answering on SQuAD v1.1: ``finetune squad``, ``evaluate squad`` and ``answer``.

The model reads question + context windows and scores every token as the answer's start and end; the
loss is the mean of the two cross-entropies (as in BERT). Windows are padded only to the longest in their
batch (or to ``max_length`` for static-shape accelerators) and the padding is masked out of the loss and
the answer search, so the padding strategy does not change results. Evaluation scores windows sorted by
length, keeps each window's best spans, merges them per question across processes, and scores the
predictions with the SQuAD v1.1 metric shipped in ``hftool/metrics/squad``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hftool import config as cfgmod
from hftool.data.squad import (
    PAD_TO_MULTIPLE_OF,
    QAExample,
    SquadDataConfig,
    Windows,
    WindowSettings,
    cached_windows,
    check_fast_tokenizer,
    check_windows_fit,
    read_hub_split,
    read_squad_file,
)
from hftool.engine.config import TrainConfig
from hftool.errors import HftoolError
from hftool.tasks.squad_postprocess import Answer, Candidate, rank_answers, span_candidates

COMMAND = "finetune squad"
METRIC_DIR = Path(__file__).resolve().parent.parent / "metrics" / "squad"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MASKED_LOGIT = -1e9


@dataclass
class SquadModelConfig:
    """The pretrained encoder to fine-tune; a fresh question-answering head is put on top."""

    name_or_path: str = "bert-base-uncased"  # folder, Hub id, alias, or package:<module> (a model on PyPI)
    trust_remote_code: bool = False


@dataclass
class SquadRecipe:
    """A SQuAD fine-tuning run: model, data and training settings."""

    model: SquadModelConfig = field(default_factory=SquadModelConfig)
    data: SquadDataConfig = field(default_factory=SquadDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        output_dir="runs/squad", lr=3e-5, batch_size=12, epochs=2, scheduler="linear", weight_decay=0.0,
        eval_batch_size=64))
    eval_each_epoch: bool = True  # evaluate at every epoch end (when train.eval_every is 0)

    def validate(self) -> None:
        self.data.validate()
        self.train.validate()


def warn_once(message: str) -> None:
    """Data warnings from the main process only (every process reads the data)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def load_split(data: SquadDataConfig, split: str) -> list[QAExample]:
    """The training or validation questions: a local file when given, else the Hub split; capped."""
    file = data.train_file if split == "train" else data.validation_file
    if file:
        flag = "--train-file" if split == "train" else "--validation-file"
        examples = read_squad_file(file, flag, strict=data.strict, warn=warn_once)
    else:
        hub_split = data.hub_train_split if split == "train" else data.hub_validation_split
        examples = read_hub_split(data.hub_dataset, data.hub_config, hub_split, strict=data.strict,
                                  warn=warn_once)
    cap = data.max_train_examples if split == "train" else data.max_eval_examples
    return examples[:cap] if cap else examples


def load_metric():
    """The SQuAD v1.1 metric shipped in the package, loaded by path (works offline)."""
    import evaluate

    return evaluate.load(str(METRIC_DIR), keep_in_memory=True)


class Ordered(Sequence):
    """``items`` seen through an index order, without copying them."""

    def __init__(self, items: Sequence, order: np.ndarray):
        self.items, self.order = items, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int):
        return self.items[int(self.order[index])]


def balanced_length_order(lengths: np.ndarray, num_processes: int) -> np.ndarray:
    """Longest first, dealt round-robin into one contiguous block per process: every block is sorted (little
    padding per batch) and the blocks hold similar amounts of work."""
    by_length = np.argsort(-lengths, kind="stable")
    return np.concatenate([by_length[rank::num_processes] for rank in range(num_processes)])


class SquadTask:
    """Batches of windows, the start/end loss, and SQuAD evaluation (exact match and F1)."""

    def __init__(self, settings: WindowSettings, pad_token_id: int, eval_examples: list[QAExample] = (),
                 eval_windows: Windows | None = None, metric=None, pad_to_max_length: bool = False,
                 pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF):
        self.settings = settings
        self.pad_token_id = pad_token_id
        self.pad_to = settings.max_length if pad_to_max_length else None
        self.pad_to_multiple_of = pad_to_multiple_of
        self.eval_examples = list(eval_examples)
        self.eval_windows = eval_windows
        self.metric = metric
        self.last_predictions: dict[str, str] = {}
        self.eval_seconds: list[float] = []

    # ---- the engine's interface ---------------------------------------------------------------------------
    def collate(self, items: list[dict], epoch: int):
        import torch

        longest = max(len(item["input_ids"]) for item in items)
        rounded = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        length = self.pad_to or max(longest, min(rounded, self.settings.max_length))
        input_ids = np.full((len(items), length), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(items), length), dtype=np.int64)
        with_types = "token_type_ids" in items[0]
        token_type_ids = np.zeros((len(items), length), dtype=np.int64) if with_types else None
        for row, item in enumerate(items):
            size = len(item["input_ids"])
            input_ids[row, :size] = item["input_ids"]
            attention_mask[row, :size] = 1
            if with_types:
                token_type_ids[row, :size] = item["token_type_ids"]
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "start_positions": torch.tensor([item["start_positions"] for item in items]),
            "end_positions": torch.tensor([item["end_positions"] for item in items]),
            "window_index": torch.tensor([item["window_index"] for item in items]),
        }
        if with_types:
            batch["token_type_ids"] = torch.from_numpy(token_type_ids)
        return batch

    def count_targets(self, batch) -> int:
        return int(batch["input_ids"].shape[0])

    def loss_sum(self, model, batch):
        import torch.nn.functional as F

        start_logits, end_logits = self.logits(model, batch)
        return (F.cross_entropy(start_logits, batch["start_positions"], reduction="sum")
                + F.cross_entropy(end_logits, batch["end_positions"], reduction="sum")) / 2

    def evaluate(self, model, engine) -> dict[str, float]:
        if self.eval_windows is None or len(self.eval_windows) == 0:
            return {}
        started = time.perf_counter()
        order = balanced_length_order(self.eval_windows.lengths, engine.num_processes)
        batches = engine.eval_batches(Ordered(self.eval_windows, order), self)
        candidates = self.window_candidates(model, batches)
        if engine.num_processes > 1:
            from accelerate.utils import gather_object

            candidates = merge_candidates(gather_object(list(candidates.items())))
        self.last_predictions = {self.eval_examples[i].id: best_text(self.eval_examples[i], found,
                                                                     self.settings.n_best)
                                 for i, found in sorted(candidates.items())}
        metrics: dict[str, float] = {}
        if engine.is_main:
            scored = [self.eval_examples[i] for i in sorted(candidates)]
            metrics = self.metric.compute(
                predictions=[{"id": e.id, "prediction_text": self.last_predictions[e.id]} for e in scored],
                references=[e.reference() for e in scored])
            seconds = time.perf_counter() - started
            metrics.update(examples=len(scored), examples_per_s=len(scored) / max(seconds, 1e-9))
        if engine.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            metrics = broadcast_object_list([metrics])[0]
        self.eval_seconds.append(time.perf_counter() - started)
        return metrics

    # ---- shared by evaluation and `hftool answer` ---------------------------------------------------------
    def logits(self, model, batch):
        """Start and end logits in float32, padding masked out."""
        inputs = {name: batch[name] for name in MODEL_INPUTS if name in batch}
        output = model(**inputs)
        padding = batch["attention_mask"] == 0
        return (output.start_logits.float().masked_fill(padding, MASKED_LOGIT),
                output.end_logits.float().masked_fill(padding, MASKED_LOGIT))

    def window_candidates(self, model, batches: Iterable[dict], windows: Windows | None = None
                          ) -> dict[int, list[Candidate]]:
        """Each example's candidate spans from the windows in ``batches`` (keyed by example index)."""
        windows = windows if windows is not None else self.eval_windows
        found: dict[int, list[Candidate]] = {}
        for batch in batches:
            start_logits, end_logits = self.logits(model, batch)
            k = min(self.settings.n_best, start_logits.shape[1])
            start_values, start_indices = (t.cpu().numpy() for t in start_logits.topk(k, dim=1))
            end_values, end_indices = (t.cpu().numpy() for t in end_logits.topk(k, dim=1))
            for row, window in enumerate(batch["window_index"].tolist()):
                spans = span_candidates(start_values[row], start_indices[row], end_values[row],
                                        end_indices[row], windows.window_offsets(window),
                                        self.settings.max_answer_length, self.settings.n_best)
                found.setdefault(int(windows.example_index[window]), []).extend(spans)
        return found


def merge_candidates(pairs: Iterable[tuple[int, list[Candidate]]]) -> dict[int, list[Candidate]]:
    merged: dict[int, list[Candidate]] = {}
    for example, spans in pairs:
        merged.setdefault(example, []).extend(spans)
    return merged


def best_text(example: QAExample, candidates: list[Candidate], n_best: int) -> str:
    """The top answer's text; empty when no window had a valid span."""
    ranked = rank_answers(candidates, example.context, n_best)
    return ranked[0].text if ranked else ""


def local_batches(task: SquadTask, windows: Windows, batch_size: int, device) -> Iterator[dict]:
    """Batches of all windows, longest first, on ``device`` (one process, no engine)."""
    order = np.argsort(-windows.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        batch = task.collate([windows[int(i)] for i in order[start:start + batch_size]], 0)
        yield {name: tensor.to(device) for name, tensor in batch.items()}


# ---- model and tokenizer ----------------------------------------------------------------------------------

def load_tokenizer(ref, flag: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.name_or_path, trust_remote_code=trust_remote_code,
                                                  **ref.load_kwargs())
    except (OSError, ValueError) as exc:
        raise HftoolError(f"{flag} {ref.name_or_path}: could not load a tokenizer "
                          f"({str(exc).splitlines()[0][:200]})") from None
    check_fast_tokenizer(tokenizer, f"{flag} {ref.name_or_path}")
    return tokenizer


def check_positions(ref, settings: WindowSettings, flag: str, trust_remote_code: bool = False) -> None:
    """A window longer than the model's position table would index past it."""
    from transformers import AutoConfig

    from hftool.model_loading import load_pretrained

    config = load_pretrained(lambda: AutoConfig.from_pretrained(
        ref.name_or_path, trust_remote_code=trust_remote_code, **ref.load_kwargs()), ref.name_or_path, flag,
        "its config")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and settings.max_length > positions:
        raise HftoolError(f"{settings.name('max_length')}={settings.max_length} is longer than the "
                          f"{positions} positions of {flag} {ref.name_or_path}; lower it")


def load_qa_model(ref, trust_remote_code: bool = False, name: str | None = None, flag: str = "--model",
                  trained_head: bool = True):
    """The question-answering model; ``trained_head`` refuses a checkpoint whose head would be random
    (evaluate, answer), while fine-tuning puts a fresh head on an encoder on purpose."""
    from transformers import AutoModelForQuestionAnswering

    from hftool.model_loading import load_pretrained, load_with_head

    name = name or ref.name_or_path
    options = {"trust_remote_code": trust_remote_code, **ref.load_kwargs()}
    if trained_head:
        return load_with_head(AutoModelForQuestionAnswering, ref.name_or_path, "question-answering", name, flag,
                              **options)
    return load_pretrained(lambda: AutoModelForQuestionAnswering.from_pretrained(ref.name_or_path, **options),
                           name, flag)


# ---- hftool finetune squad --------------------------------------------------------------------------------

def run_finetune_squad(recipe: SquadRecipe, resume: bool = False, overwrite: bool = False,
                       strict_resume: bool = False) -> dict:
    """Fine-tune on SQuAD, evaluate each epoch and at the end, and save a question-answering model folder
    with ``predictions.json`` (id -> answer text) and ``metrics.json``; returns the final metrics."""
    recipe.validate()
    data, settings = recipe.data, recipe.data.windows
    train_examples = load_split(data, "train")
    eval_examples = load_split(data, "validation")

    from accelerate.utils import set_seed

    from hftool.data.builtin_corpus import cache_dir
    from hftool.engine.trainer import Engine
    from hftool.hub import resolve_model
    from hftool.tasks.pretrain import prepare_output_dir

    flag = "model.name_or_path"
    ref = resolve_model(recipe.model.name_or_path, flag)
    tokenizer = load_tokenizer(ref, flag, recipe.model.trust_remote_code)
    check_positions(ref, settings, flag, recipe.model.trust_remote_code)
    check_windows_fit(train_examples + eval_examples, tokenizer, settings)

    out = Path(recipe.train.output_dir).expanduser()
    engine = Engine(recipe.train, out)
    if engine.is_main:
        prepare_output_dir(out, cfgmod.dump_yaml(recipe, COMMAND), resume, overwrite, shape_fields=("model.",))
    engine.wait()
    with engine.accelerator.main_process_first():
        train_windows = cached_windows(train_examples, tokenizer, settings, cache_dir() / "squad")
        eval_windows = cached_windows(eval_examples, tokenizer, settings, cache_dir() / "squad")
        metric = load_metric()
    engine.print(f"{len(train_examples):,} training questions -> {len(train_windows):,} windows "
                 f"(mean {train_windows.lengths.mean():.0f} tokens); {len(eval_examples):,} validation "
                 f"questions -> {len(eval_windows):,} windows")

    set_seed(recipe.train.seed)
    model = load_qa_model(ref, recipe.model.trust_remote_code, recipe.model.name_or_path, flag,
                          trained_head=False)
    task = SquadTask(settings, train_windows.pad_token_id, eval_examples, eval_windows, metric,
                     data.pad_to_max_length, data.pad_to_multiple_of)
    each_epoch = recipe.eval_each_epoch and recipe.train.eval_every == 0
    result = engine.fit(model, train_windows, task, resume=resume, strict_resume=strict_resume,
                        tracker_config=cfgmod.to_dict(recipe),
                        lengths=train_windows.lengths if data.group_by_length else None,
                        eval_every=engine.steps_per_epoch(len(train_windows)) if each_epoch else None)

    trained_steps = result.steps - (result.resumed_from or 0)
    in_loop_evals = task.eval_seconds if result.interrupted else task.eval_seconds[:-1]
    train_seconds = result.wall_s - sum(in_loop_evals)
    summary = {
        "steps": result.steps, "train_loss": result.last_loss, "train_questions": len(train_examples),
        "train_windows": len(train_windows),
        "train_windows_per_s": round(trained_steps * engine.examples_per_step / max(train_seconds, 1e-9), 2),
        "wall_s": round(result.wall_s, 1), **{f"eval_{k}": v for k, v in result.eval_metrics.items()},
    }
    if result.interrupted:
        engine.print(f"checkpoint saved in {out / 'checkpoints'}; continue with --resume")
        return summary
    state_dict = engine.accelerator.get_state_dict(model)  # every rank: gathers FSDP / ZeRO-3 shards
    if engine.is_main:
        from hftool.engine.report import plot_loss_curve, print_summary
        from hftool.tasks.pretrain import write_final_artifacts

        write_json(out / "predictions.json", task.last_predictions)
        write_final_artifacts(engine.unwrap(model), tokenizer, out, summary, model_card(recipe, summary),
                              state_dict)
        plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png", title="SQuAD fine-tuning")
        print_summary({**summary, "output": str(out)}, title="hftool finetune squad")
    engine.wait()
    return summary


def write_json(path: Path, value) -> None:
    from hftool.outputs import record

    tmp = path.with_name(f".{path.name}.tmp")
    record(path.parent, path.name, tmp.name)
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def model_card(recipe: SquadRecipe, summary: dict) -> str:
    """What was fine-tuned on what, the scores, and how to use the folder without hftool."""
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in summary.items())
    data = recipe.data
    return f"""---
library_name: transformers
pipeline_tag: question-answering
tags: [hftool, squad, extractive-qa]
---

# {recipe.model.name_or_path} fine-tuned on SQuAD v1.1 with hftool

- Data: train {data.describe("train")}; validation {data.describe("validation")}.
- Windows of {data.max_length} tokens, stride {data.doc_stride}; answers of at most {data.max_answer_length}
  tokens from the {data.n_best} best starts and ends.
- Training: {summary.get('steps')} optimizer steps, lr {recipe.train.lr}, batch {recipe.train.batch_size} x
  accumulation {recipe.train.grad_accum}, mixed precision `{recipe.train.mixed_precision}`.
- `predictions.json` holds the validation predictions (id -> answer), `metrics.json` the scores (exact match
  and F1 as in the official SQuAD v1.1 script); the full recipe is in `hftool_recipe.yaml`.

| metric | value |
| --- | --- |
{rows}

```python
from transformers import AutoModelForQuestionAnswering, AutoTokenizer
model = AutoModelForQuestionAnswering.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```

```bash
hftool answer --model path/to/this/folder --question "..." --context "..."
```
"""


# ---- hftool evaluate squad --------------------------------------------------------------------------------

def run_evaluate_squad(model_name: str, file: str | None, output_dir: str | Path, settings: WindowSettings,
                       batch_size: int = 64, mixed_precision: str = "auto", strict: bool = False,
                       max_examples: int | None = None, overwrite: bool = False) -> dict:
    """Score a question-answering model on a SQuAD file (or the Hub validation split); writes
    ``predictions.json`` and ``metrics.json`` to ``output_dir`` and returns the metrics."""
    from hftool.outputs import check_output_dir, claim_output_dir

    settings.validate()
    if batch_size < 1:
        raise HftoolError(f"--batch-size={batch_size} must be at least 1")
    out = check_output_dir(output_dir, "--output-dir")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HftoolError(f"--output-dir={out} already holds files; pass --overwrite to replace hftool's "
                          "own files there, or choose another folder")
    if file:
        examples = read_squad_file(file, "--file", strict=strict, warn=warn_once)
    else:
        data = SquadDataConfig(strict=strict)
        examples = read_hub_split(data.hub_dataset, data.hub_config, data.hub_validation_split, strict=strict,
                                  warn=warn_once)
    examples = examples[:max_examples] if max_examples else examples

    import torch

    from hftool.data.builtin_corpus import cache_dir
    from hftool.engine.trainer import Engine
    from hftool.hub import resolve_model

    ref = resolve_model(model_name, "--model")
    tokenizer = load_tokenizer(ref, "--model")
    check_positions(ref, settings, "--model")
    model = load_qa_model(ref, name=model_name)
    check_windows_fit(examples, tokenizer, settings)
    engine = Engine(TrainConfig(output_dir=str(out), mixed_precision=mixed_precision,
                                eval_batch_size=batch_size, report_to="none"), out)
    with engine.accelerator.main_process_first():
        windows = cached_windows(examples, tokenizer, settings, cache_dir() / "squad")
        metric = load_metric()
    model = model.to(engine.device)
    model.eval()
    task = SquadTask(settings, windows.pad_token_id, examples, windows, metric)
    with torch.no_grad(), engine.autocast():
        metrics = task.evaluate(model, engine)
    summary = {"model": str(ref.name_or_path), "file": file or "the Hub squad validation split",
               **metrics, "windows": len(windows)}
    if engine.is_main:
        claim_output_dir(out, "--output-dir", overwrite, names=("predictions.json", "metrics.json"))
        write_json(out / "predictions.json", task.last_predictions)
        write_json(out / "metrics.json", summary)
    engine.wait()
    return summary


# ---- hftool answer ----------------------------------------------------------------------------------------

def answer_questions(model_name: str, examples: list[QAExample], settings: WindowSettings, top_k: int = 3,
                     batch_size: int = 32) -> list[list[Answer]]:
    """The ``top_k`` best answers to each question, best first."""
    settings.validate()
    if top_k < 1:
        raise HftoolError(f"--top-k={top_k} must be at least 1")
    import torch
    from accelerate import PartialState
    from transformers.utils import logging as transformers_logging

    from hftool.data.squad import encode_windows
    from hftool.hub import resolve_model

    ref = resolve_model(model_name, "--model")
    tokenizer = load_tokenizer(ref, "--model")
    check_positions(ref, settings, "--model")
    transformers_logging.disable_progress_bar()  # answers are the only output
    model = load_qa_model(ref, name=model_name)
    check_windows_fit(examples, tokenizer, settings)
    windows = encode_windows(examples, tokenizer, settings)
    device = PartialState().device
    model = model.to(device)
    model.eval()
    task = SquadTask(replace(settings, n_best=max(settings.n_best, top_k)), windows.pad_token_id)
    with torch.no_grad():
        found = task.window_candidates(model, local_batches(task, windows, batch_size, device), windows)
    return [rank_answers(found.get(i, []), example.context, top_k) for i, example in enumerate(examples)]
