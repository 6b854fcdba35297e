"""``hftool finetune classify``, ``hftool evaluate classify`` and ``hftool classify``: prepare the output
folder, load model and tokenizer, build the task, train with the engine, write the artifacts."""

from __future__ import annotations

import sys
from pathlib import Path

from hftool import config as cfgmod
from hftool.data.classification import (
    FLAG_COLUMNS,
    ClassifyDataConfig,
    TextExample,
    apply_label_names,
    label_ids,
    label_list,
    read_classification_file,
    read_hub_classification,
    warn_main,
)
from hftool.data.splits import SPLIT_FLAGS
from hftool.errors import HftoolError
from hftool.loading import load_tokenizer
from hftool.outputs import releases_claims
from hftool.runs.artifacts import (
    FINE_TUNE_SHAPE_FIELDS,
    MODEL_FLAG,
    FineTuneFolder,
    fine_tune_summary,
    model_card,
    training_fact,
)
from hftool.runs.labelled import (
    OFFSETS_FOR,
    check_positions,
    evaluate_output_dir,
    new_head_model,
    score_and_write,
    trained_head_model,
)
from hftool.schemas.finetune import ClassifyRecipe
from hftool.tasks.classify import ClassifyTask, encode_texts, with_labels

COMMAND = "finetune classify"
HEAD = "sequence-classification"


def load_split(data: ClassifyDataConfig, split: str) -> tuple[list[TextExample], list[str] | None]:
    """A split's examples (a local file when given, else the Hub split), capped, with integer labels renamed
    to ``data.label_names`` (or a Hub ``ClassLabel``'s names); returns those names too."""
    names = data.label_names
    if data.file(split):
        examples = read_classification_file(data.file(split), SPLIT_FLAGS[split], data)
    elif data.hub_dataset:
        examples, hub_names = read_hub_classification(data, data.hub_split(split))
        names = names or hub_names
    elif split == "train":
        raise HftoolError("no training data: pass --train-file (data.train_file) or set data.hub_dataset")
    else:
        return [], names
    examples = examples[:data.limit(split)] if data.limit(split) else examples
    return apply_label_names(examples, names, f"data.{split}"), names


def warn_truncated(count: int, total: int, source: str, setting: str, max_length: int) -> None:
    if count:
        warn_main(f"{source}: truncated {count} of {total} text(s) longer than {setting}={max_length} tokens")


@releases_claims
def run_finetune_classify(recipe: ClassifyRecipe, resume: bool = False, overwrite: bool = False,
                          strict_resume: bool = False) -> dict:
    """Fine-tune a sequence classifier, evaluate at the end, save a text-classification model folder with
    ``predictions.json`` and ``metrics.json``; returns the final metrics."""
    recipe.validate()
    data = recipe.data
    folder = FineTuneFolder.check(recipe, COMMAND, resume, overwrite,
                                  FINE_TUNE_SHAPE_FIELDS + ("data.label_names",))
    train_examples, names = load_split(data, "train")
    eval_examples, _ = load_split(data, "validation")
    labels = label_list(train_examples, names)
    label2id = {label: i for i, label in enumerate(labels)}
    if len(labels) < 2:
        raise HftoolError(f"the training data holds a single label ('{labels[0]}'); a classifier needs two or more")
    eval_ids = label_ids(eval_examples, label2id, "the validation data")

    from accelerate.utils import set_seed
    from transformers import AutoModelForSequenceClassification

    from hftool.adapters import apply_adapter
    from hftool.engine.trainer import Engine
    from hftool.loading import resolve_model

    ref = resolve_model(recipe.model.name_or_path, MODEL_FLAG)
    tokenizer = load_tokenizer(ref, ref.name_or_path, MODEL_FLAG, recipe.model.trust_remote_code,
                               offsets_for=OFFSETS_FOR, pad=True)
    engine = Engine(recipe.train, folder.out)
    folder.claim(engine)
    train_items, cut = encode_texts(tokenizer, train_examples, data.max_length)
    warn_truncated(cut, len(train_items), "training data", "data.max_length", data.max_length)
    with_labels(train_items, label_ids(train_examples, label2id, "the training data"))
    eval_items, cut = encode_texts(tokenizer, eval_examples, data.max_length)
    warn_truncated(cut, len(eval_items), "validation data", "data.max_length", data.max_length)
    with_labels(eval_items, eval_ids)
    engine.print(f"{len(train_items):,} training and {len(eval_items):,} validation texts; "
                 f"labels: {', '.join(labels)}")

    set_seed(recipe.train.seed)
    model = new_head_model(AutoModelForSequenceClassification, ref, labels, MODEL_FLAG,
                           recipe.model.trust_remote_code, tokenizer, {"hftool_integer_labels": bool(names)})
    model = apply_adapter(model, recipe.adapter, HEAD)
    check_positions(model.config, data.max_length, "data.max_length", MODEL_FLAG, recipe.model.name_or_path)
    task = ClassifyTask(tokenizer.pad_token_id, len(labels), data.max_length, eval_items,
                        data.pad_to_max_length, data.matthews)
    result = engine.fit(model, train_items, task, resume=resume, strict_resume=strict_resume,
                        tracker_config=cfgmod.to_dict(recipe),
                        lengths=[len(i["input_ids"]) for i in train_items] if recipe.group_by_length else None)

    summary = fine_tune_summary(result, engine, task.eval_seconds, {"train_examples": len(train_items)})
    return folder.finish(engine, model, tokenizer, summary, result.interrupted,
                         lambda: [labels[p] for p in task.last_predictions.values()],
                         lambda: classify_card(recipe, summary, labels, engine.batch_size),
                         "sequence classification")


def classify_card(recipe: ClassifyRecipe, summary: dict, labels: list[str], batch_size: int) -> str:
    """The model card of a classification run: data, labels, training, and how to use the folder."""
    data = recipe.data
    facts = (f"- Data: train {data.describe('train')}; validation {data.describe('validation')}; labels "
             f"{', '.join(labels)}; texts of at most {data.max_length} tokens.\n"
             f"{training_fact(recipe, summary, batch_size)}\n"
             "- `predictions.json` holds the validation predictions in file order, `metrics.json` the scores "
             "(accuracy and macro-F1 in percent); the full recipe is in `hftool_recipe.yaml`.")
    usage = """```python
from transformers import pipeline
classifier = pipeline("text-classification", model="path/to/this/folder")
```

```bash
hftool classify --model path/to/this/folder "a text to classify"
```
"""
    return model_card(f"{recipe.model.name_or_path} fine-tuned for sequence classification with hftool",
                      "text-classification", ["hftool", "text-classification"], facts, summary, usage)


def load_trained(model_name: str):
    """Tokenizer and trained classifier of ``model_name``."""
    from transformers import AutoModelForSequenceClassification

    from hftool.loading import resolve_model

    ref = resolve_model(model_name, "--model")
    tokenizer = load_tokenizer(ref, ref.name_or_path, "--model", offsets_for=OFFSETS_FOR, pad=True)
    model = trained_head_model(AutoModelForSequenceClassification, ref, HEAD, model_name, "--model", tokenizer)
    return tokenizer, model


@releases_claims
def run_evaluate_classify(model_name: str, file: str, output_dir: str | Path, data: ClassifyDataConfig,
                          batch_size: int = 64, mixed_precision: str = "auto", overwrite: bool = False) -> dict:
    """Score a classifier folder on a labelled file; writes ``predictions.json`` and ``metrics.json``."""
    inputs = {"--model": model_name, "--file": file}
    out = evaluate_output_dir(output_dir, batch_size, overwrite, inputs)
    examples = read_classification_file(file, "--file", data, settings=FLAG_COLUMNS)
    examples = examples[:data.max_eval_examples] if data.max_eval_examples else examples
    tokenizer, model = load_trained(model_name)
    check_positions(model.config, data.max_length, "--max-length", "--model", model_name)
    label2id = {label: int(i) for label, i in model.config.label2id.items()}
    ids = label_ids(examples, label2id, file, getattr(model.config, "hftool_integer_labels", False),
                    label_names_setting=None)
    items, cut = encode_texts(tokenizer, examples, data.max_length)
    warn_truncated(cut, len(items), file, "--max-length", data.max_length)
    with_labels(items, ids)
    id2label = {int(i): label for i, label in model.config.id2label.items()}
    task = ClassifyTask(tokenizer.pad_token_id, len(label2id), data.max_length, items, matthews=data.matthews)
    return score_and_write(model, task, out, batch_size, mixed_precision, overwrite,
                           {"model": model_name, "file": str(file), "truncated": cut},
                           lambda task: [id2label[p] for p in task.last_predictions.values()], inputs)


def classify_texts(model_name: str, texts: list[str], max_length: int = 512, batch_size: int = 32,
                   pairs: list[str] | None = None) -> list[dict]:
    """Each text's label and the probability of every label (highest first)."""
    from accelerate import PartialState

    tokenizer, model = load_trained(model_name)
    model = model.to(PartialState().device).eval()
    results, cut, limit = classify_loaded(model, tokenizer, texts, max_length, batch_size, pairs)
    if cut:
        print(f"warning: truncated {cut} of {len(texts)} text(s) longer than {limit} tokens", file=sys.stderr)
    return results


def classify_loaded(model, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 32,
                    pairs: list[str] | None = None) -> tuple[list[dict], int, int]:
    """:func:`classify_texts` on a loaded model (in eval mode, on its device), the one path of ``hftool classify``
    and ``POST /v1/classify``; also returns how many texts were truncated, and to how many tokens."""
    import torch

    device = model.device
    limit = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
    examples = [TextExample(t, None, f"text {i + 1}", pairs[i] if pairs else None) for i, t in enumerate(texts)]
    items, cut = encode_texts(tokenizer, examples, limit)
    id2label = {int(i): label for i, label in model.config.id2label.items()}
    task = ClassifyTask(tokenizer.pad_token_id, len(id2label), limit)
    results = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = {k: v.to(device) for k, v in task.collate(items[start:start + batch_size], 0).items()}
            for row in task.logits(model, batch).softmax(-1).tolist():
                ranked = sorted(((id2label[i], p) for i, p in enumerate(row)), key=lambda x: -x[1])
                results.append({"label": ranked[0][0], "score": ranked[0][1],
                                "probabilities": dict(ranked)})
    return results, cut, limit


def label_record(text: str, result: dict) -> dict:
    """What ``hftool classify --json`` prints for a text, and ``POST /v1/classify`` answers: scores to 4 places."""
    return {"text": text, "label": result["label"], "score": round(result["score"], 4),
            "probabilities": {k: round(v, 4) for k, v in result["probabilities"].items()}}
