"""``hftool finetune squad``, ``hftool evaluate squad`` and ``hftool answer``: the runs around the SQuAD task.

Each run reads and checks its questions, loads the tokenizer and checks the windows fit before the model loads,
then trains or scores with :class:`~hftool.tasks.squad.SquadTask` and writes its files
(:mod:`hftool.runs.artifacts`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from hftool import config as cfgmod
from hftool.adapters import apply_adapter
from hftool.data.squad import (
    QAExample,
    SquadDataConfig,
    WindowSettings,
    cached_windows,
    check_windows_fit,
    encode_windows,
    read_hub_split,
    read_squad_file,
)
from hftool.engine.config import TrainConfig
from hftool.errors import HftoolError
from hftool.loading import cache_dir, load_config, load_model, load_tokenizer, resolve_model
from hftool.outputs import check_claim, claim_output_dir, releases_claims
from hftool.runs.artifacts import (
    MODEL_FLAG,
    FineTuneFolder,
    fine_tune_summary,
    model_card,
    training_fact,
    write_json,
)
from hftool.schemas.finetune import SquadRecipe
from hftool.tasks.squad import SquadTask, load_metric, local_batches
from hftool.tasks.squad_postprocess import Answer, rank_answers

COMMAND = "finetune squad"
HEAD = "question-answering"
OFFSETS_FOR = "question answering"  # windows map answers back to the context through character offsets


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


# ---- hftool finetune squad --------------------------------------------------------------------------------

@releases_claims
def run_finetune_squad(recipe: SquadRecipe, resume: bool = False, overwrite: bool = False,
                       strict_resume: bool = False) -> dict:
    """Fine-tune on SQuAD, evaluate each epoch and at the end, and save a question-answering model folder
    with ``predictions.json`` (id -> answer text) and ``metrics.json``; returns the final metrics."""
    recipe.validate()
    data, settings = recipe.data, recipe.data.windows
    folder = FineTuneFolder.check(recipe, COMMAND, resume, overwrite)
    train_examples = load_split(data, "train")
    eval_examples = load_split(data, "validation")

    # torch, transformers and accelerate load only once the recipe and the data are known to be good.
    from accelerate.utils import set_seed
    from transformers import AutoModelForQuestionAnswering

    from hftool.engine.trainer import Engine

    ref = resolve_model(recipe.model.name_or_path, MODEL_FLAG)
    tokenizer = load_tokenizer(ref, ref.name_or_path, MODEL_FLAG, recipe.model.trust_remote_code,
                               offsets_for=OFFSETS_FOR)
    settings.check_positions(load_config(ref, ref.name_or_path, MODEL_FLAG, recipe.model.trust_remote_code),
                             f"{MODEL_FLAG} {ref.name_or_path}")
    check_windows_fit(train_examples + eval_examples, tokenizer, settings)

    engine = Engine(recipe.train, folder.out)
    folder.claim(engine)
    with engine.accelerator.main_process_first():
        train_windows = cached_windows(train_examples, tokenizer, settings, cache_dir() / "squad")
        eval_windows = cached_windows(eval_examples, tokenizer, settings, cache_dir() / "squad")
        metric = load_metric()
    engine.print(f"{len(train_examples):,} training questions -> {len(train_windows):,} windows "
                 f"(mean {train_windows.lengths.mean():.0f} tokens); {len(eval_examples):,} validation "
                 f"questions -> {len(eval_windows):,} windows")

    set_seed(recipe.train.seed)
    model = load_model(AutoModelForQuestionAnswering, ref, recipe.model.name_or_path, MODEL_FLAG,
                       trust_remote_code=recipe.model.trust_remote_code)  # a fresh head on an encoder
    model = apply_adapter(model, recipe.adapter, "question-answering")
    task = SquadTask(settings, train_windows.pad_token_id, eval_examples, eval_windows, metric,
                     data.pad_to_max_length, data.pad_to_multiple_of)
    each_epoch = recipe.eval_each_epoch and recipe.train.eval_every == 0
    result = engine.fit(model, train_windows, task, resume=resume, strict_resume=strict_resume,
                        tracker_config=cfgmod.to_dict(recipe),
                        lengths=train_windows.lengths if data.group_by_length else None,
                        eval_every=engine.steps_per_epoch(len(train_windows)) if each_epoch else None)

    summary = fine_tune_summary(result, engine, task.eval_seconds,
                                {"train_questions": len(train_examples), "train_windows": len(train_windows)},
                                unit="windows")
    return folder.finish(engine, model, tokenizer, summary, result.interrupted, lambda: task.last_predictions,
                         lambda: squad_card(recipe, summary, engine.batch_size), "SQuAD fine-tuning")


def squad_card(recipe: SquadRecipe, summary: dict, batch_size: int) -> str:
    """What was fine-tuned on what, the scores, and how to use the folder without hftool."""
    data = recipe.data
    facts = (f"- Data: train {data.describe('train')}; validation {data.describe('validation')}.\n"
             f"- Windows of {data.max_length} tokens, stride {data.doc_stride}; answers of at most "
             f"{data.max_answer_length}\n  tokens from the {data.n_best} best starts and ends.\n"
             f"{training_fact(recipe, summary, batch_size)}\n"
             "- `predictions.json` holds the validation predictions (id -> answer), `metrics.json` the scores "
             "(exact match\n  and F1 as in the official SQuAD v1.1 script); the full recipe is in "
             "`hftool_recipe.yaml`.")
    usage = """```python
from transformers import AutoModelForQuestionAnswering, AutoTokenizer
model = AutoModelForQuestionAnswering.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```

```bash
hftool answer --model path/to/this/folder --question "..." --context "..."
```
"""
    return model_card(f"{recipe.model.name_or_path} fine-tuned on SQuAD v1.1 with hftool", "question-answering",
                      ["hftool", "squad", "extractive-qa"], facts, summary, usage)


# ---- hftool evaluate squad --------------------------------------------------------------------------------

@releases_claims
def run_evaluate_squad(model_name: str, file: str | None, output_dir: str | Path, settings: WindowSettings,
                       batch_size: int = 64, mixed_precision: str = "auto", strict: bool = False,
                       max_examples: int | None = None, overwrite: bool = False) -> dict:
    """Score a question-answering model on a SQuAD file (or the Hub validation split); writes
    ``predictions.json`` and ``metrics.json`` to ``output_dir`` and returns the metrics."""
    settings.validate()
    if batch_size < 1:
        raise HftoolError(f"--batch-size={batch_size} must be at least 1")
    inputs = {"--model": model_name, "--file": file}
    out = check_claim(output_dir, "--output-dir", overwrite, inputs=inputs, what="files of an earlier evaluation")
    if file:
        examples = read_squad_file(file, "--file", strict=strict, warn=warn_once)
    else:
        data = SquadDataConfig(strict=strict)
        examples = read_hub_split(data.hub_dataset, data.hub_config, data.hub_validation_split, strict=strict,
                                  warn=warn_once)
    examples = examples[:max_examples] if max_examples else examples

    import torch  # torch, transformers and accelerate load only once the inputs are checked
    from transformers import AutoModelForQuestionAnswering

    from hftool.engine.trainer import Engine

    ref = resolve_model(model_name, "--model")
    tokenizer = load_tokenizer(ref, ref.name_or_path, "--model", offsets_for=OFFSETS_FOR)
    settings.check_positions(load_config(ref, ref.name_or_path, "--model"), f"--model {ref.name_or_path}")
    model = load_model(AutoModelForQuestionAnswering, ref, model_name, "--model", head=HEAD)
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
        claim_output_dir(out, "--output-dir", overwrite, inputs=inputs, what="files of an earlier evaluation")
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
    import torch  # torch, transformers and accelerate load only once the inputs are checked
    from accelerate import PartialState
    from transformers import AutoModelForQuestionAnswering
    from transformers.utils import logging as transformers_logging

    ref = resolve_model(model_name, "--model")
    tokenizer = load_tokenizer(ref, ref.name_or_path, "--model", offsets_for=OFFSETS_FOR)
    settings.check_positions(load_config(ref, ref.name_or_path, "--model"), f"--model {ref.name_or_path}")
    transformers_logging.disable_progress_bar()  # answers are the only output
    model = load_model(AutoModelForQuestionAnswering, ref, model_name, "--model", head=HEAD)
    check_windows_fit(examples, tokenizer, settings)
    windows = encode_windows(examples, tokenizer, settings)
    device = PartialState().device
    model = model.to(device)
    model.eval()
    task = SquadTask(replace(settings, n_best=max(settings.n_best, top_k)), windows.pad_token_id)
    with torch.no_grad():
        found = task.window_candidates(model, local_batches(task, windows, batch_size, device), windows)
    return [rank_answers(found.get(i, []), example.context, top_k) for i, example in enumerate(examples)]
