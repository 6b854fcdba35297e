"""``hftool finetune ner``, ``hftool evaluate ner`` and ``hftool tag``: prepare the output folder, load
model and tokenizer, build the task, train with the engine, write the artifacts."""

from __future__ import annotations

import sys
from pathlib import Path

from hftool import config as cfgmod
from hftool.data.classification import warn_main
from hftool.data.conll import NerDataConfig, TaggedSentence, read_conll_file, read_hub_ner, tag_list
from hftool.data.splits import SPLIT_FLAGS
from hftool.errors import HftoolError
from hftool.loading import load_tokenizer
from hftool.outputs import releases_claims
from hftool.runs.artifacts import (
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
from hftool.schemas.finetune import NerRecipe
from hftool.tasks.ner import NerTask, encode_sentences, group_entities

COMMAND = "finetune ner"
HEAD = "token-classification"


def load_split(data: NerDataConfig, split: str) -> list[TaggedSentence]:
    if data.file(split):
        sentences = read_conll_file(data.file(split), SPLIT_FLAGS[split], data.tag_scheme)
    elif data.hub_dataset:
        sentences = read_hub_ner(data, data.hub_split(split))
    elif split == "train":
        raise HftoolError("no training data: pass --train-file (data.train_file) or set data.hub_dataset")
    else:
        return []
    return sentences[:data.limit(split)] if data.limit(split) else sentences


def check_known_tags(sentences: list[TaggedSentence], label2id: dict[str, int], source: str) -> None:
    """A tag the model was not trained on (a type absent from its training data) names its sentence."""
    for sentence in sentences:
        for tag in sentence.tags:
            if tag not in label2id:
                raise HftoolError(f"{sentence.where}: tag '{tag}' is not one the model was trained on "
                                  f"({', '.join(label2id)}); fix {source}")


def warn_truncated(count: int, total: int, source: str, setting: str, max_length: int) -> None:
    if count:
        warn_main(f"{source}: {count} of {total} sentence(s) longer than {setting}={max_length} tokens were "
                  "truncated (their cut-off words are predicted O)")


@releases_claims
def run_finetune_ner(recipe: NerRecipe, resume: bool = False, overwrite: bool = False,
                     strict_resume: bool = False) -> dict:
    """Fine-tune a token classifier, evaluate at the end, save a token-classification model folder with
    ``predictions.json`` (tags per validation sentence) and ``metrics.json``; returns the final metrics."""
    recipe.validate()
    data = recipe.data
    folder = FineTuneFolder.check(recipe, COMMAND, resume, overwrite)
    train_sentences = load_split(data, "train")
    eval_sentences = load_split(data, "validation")
    labels = tag_list(train_sentences)
    label2id = {label: i for i, label in enumerate(labels)}
    check_known_tags(eval_sentences, label2id, "the validation data")

    from accelerate.utils import set_seed
    from transformers import AutoModelForTokenClassification

    from hftool.adapters import apply_adapter
    from hftool.engine.trainer import Engine
    from hftool.loading import resolve_model

    ref = resolve_model(recipe.model.name_or_path, MODEL_FLAG)
    tokenizer = load_tokenizer(ref, ref.name_or_path, MODEL_FLAG, recipe.model.trust_remote_code, split_words=True,
                               offsets_for=OFFSETS_FOR, pad=True)
    engine = Engine(recipe.train, folder.out)
    folder.claim(engine)
    train_items, cut = encode_sentences(tokenizer, train_sentences, data.max_length, label2id,
                                        data.label_all_tokens)
    warn_truncated(cut, len(train_items), "training data", "data.max_length", data.max_length)
    eval_items, cut = encode_sentences(tokenizer, eval_sentences, data.max_length, label2id)
    warn_truncated(cut, len(eval_items), "validation data", "data.max_length", data.max_length)
    engine.print(f"{len(train_items):,} training and {len(eval_items):,} validation sentences; "
                 f"tags: {', '.join(labels)}")

    set_seed(recipe.train.seed)
    model = new_head_model(AutoModelForTokenClassification, ref, labels, MODEL_FLAG,
                           recipe.model.trust_remote_code, tokenizer)
    model = apply_adapter(model, recipe.adapter, HEAD)
    check_positions(model.config, data.max_length, "data.max_length", MODEL_FLAG, recipe.model.name_or_path)
    task = NerTask(tokenizer.pad_token_id, dict(enumerate(labels)), data.max_length, eval_sentences, eval_items)
    result = engine.fit(model, train_items, task, resume=resume, strict_resume=strict_resume,
                        tracker_config=cfgmod.to_dict(recipe),
                        lengths=[len(i["input_ids"]) for i in train_items] if recipe.group_by_length else None)

    summary = fine_tune_summary(result, engine, task.eval_seconds, {"train_examples": len(train_items)})
    return folder.finish(engine, model, tokenizer, summary, result.interrupted,
                         lambda: list(task.last_predictions.values()),
                         lambda: ner_card(recipe, summary, labels, engine.batch_size),
                         "named-entity recognition")


def ner_card(recipe: NerRecipe, summary: dict, labels: list[str], batch_size: int) -> str:
    """The model card of a NER run: data, tags, training, and how to use the folder."""
    data = recipe.data
    facts = (f"- Data: train {data.describe('train')}; validation {data.describe('validation')}; tags "
             f"{', '.join(labels)} (IOB2).\n"
             f"- Sentences of at most {data.max_length} tokens, tags on each word's first sub-token "
             f"(label_all_tokens={data.label_all_tokens}).\n"
             f"{training_fact(recipe, summary, batch_size)}\n"
             "- `metrics.json` holds entity-level precision / recall / F1 in percent, as seqeval computes them in "
             "strict IOB2 mode, overall and per type; the full recipe is in `hftool_recipe.yaml`.")
    usage = """```python
from transformers import pipeline
tagger = pipeline("token-classification", model="path/to/this/folder", aggregation_strategy="simple")
```

```bash
hftool tag --model path/to/this/folder "Angela Merkel visited Paris."
```
"""
    return model_card(f"{recipe.model.name_or_path} fine-tuned for named-entity recognition with hftool",
                      "token-classification", ["hftool", "token-classification", "ner"], facts, summary, usage)


def load_trained(model_name: str, split_words: bool):
    from transformers import AutoModelForTokenClassification

    from hftool.loading import resolve_model

    ref = resolve_model(model_name, "--model")
    tokenizer = load_tokenizer(ref, ref.name_or_path, "--model", split_words=split_words,
                               offsets_for=OFFSETS_FOR, pad=True)
    model = trained_head_model(AutoModelForTokenClassification, ref, HEAD, model_name, "--model", tokenizer)
    return tokenizer, model


@releases_claims
def run_evaluate_ner(model_name: str, file: str, output_dir: str | Path, data: NerDataConfig,
                     batch_size: int = 64, mixed_precision: str = "auto", overwrite: bool = False) -> dict:
    """Score a token-classification folder on a tagged file; writes ``predictions.json`` and ``metrics.json``."""
    inputs = {"--model": model_name, "--file": file}
    out = evaluate_output_dir(output_dir, batch_size, overwrite, inputs)
    sentences = read_conll_file(file, "--file", data.tag_scheme, scheme_setting="--tag-scheme")
    sentences = sentences[:data.max_eval_examples] if data.max_eval_examples else sentences
    tokenizer, model = load_trained(model_name, split_words=True)
    check_positions(model.config, data.max_length, "--max-length", "--model", model_name)
    label2id = {label: int(i) for label, i in model.config.label2id.items()}
    check_known_tags(sentences, label2id, file)
    items, cut = encode_sentences(tokenizer, sentences, data.max_length, label2id)
    warn_truncated(cut, len(items), file, "--max-length", data.max_length)
    id2label = {int(i): label for i, label in model.config.id2label.items()}
    task = NerTask(tokenizer.pad_token_id, id2label, data.max_length, sentences, items)
    return score_and_write(model, task, out, batch_size, mixed_precision, overwrite,
                           {"model": model_name, "file": str(file), "truncated": cut},
                           lambda task: list(task.last_predictions.values()), inputs)


def tag_texts(model_name: str, texts: list[str], max_length: int = 512) -> list[list[dict]]:
    """Each text's entities (type, character span, mean score, text), words merged as the transformers
    pipeline's ``aggregation_strategy="simple"`` merges them."""
    from accelerate import PartialState

    tokenizer, model = load_trained(model_name, split_words=False)
    model = model.to(PartialState().device).eval()
    results, cut, limit = tag_loaded(model, tokenizer, texts, max_length)
    if cut:
        print(f"warning: {cut} of {len(texts)} text(s) longer than {limit} tokens were truncated (no entities "
              "found past the cut)", file=sys.stderr)
    return results


def tag_loaded(model, tokenizer, texts: list[str], max_length: int = 512,
               batch_size: int = 32) -> tuple[list[list[dict]], int, int]:
    """:func:`tag_texts` on a loaded model (in eval mode, on its device), the one path of ``hftool tag`` and
    ``POST /v1/tag``, ``batch_size`` texts per forward pass; also returns how many texts were truncated, and to
    how many tokens."""
    import torch

    limit = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
    id2label = {int(i): label for i, label in model.config.id2label.items()}
    results, cut = [], 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            encoded = tokenizer(chunk, return_offsets_mapping=True, return_special_tokens_mask=True,
                                truncation=True, max_length=limit, padding=True)
            full = [text for text, ids in zip(chunk, encoded["input_ids"], strict=True) if len(ids) >= limit]
            cut += sum(len(ids) > limit for ids in tokenizer(full)["input_ids"]) if full else 0
            inputs = {k: torch.tensor(v, device=model.device) for k, v in encoded.items()
                      if k in ("input_ids", "attention_mask", "token_type_ids")}
            probabilities = model(**inputs).logits.float().softmax(-1).cpu().numpy()
            for text, rows, offsets, special, mask in zip(chunk, probabilities, encoded["offset_mapping"],
                                                         encoded["special_tokens_mask"], encoded["attention_mask"],
                                                         strict=True):
                tokens = [{"entity": id2label[int(p.argmax())], "score": float(p.max()), "start": begin, "end": end}
                          for p, (begin, end), is_special, real in zip(rows, offsets, special, mask, strict=True)
                          if real and not is_special]
                results.append([{**entity, "word": text[entity["start"]:entity["end"]]}
                                for entity in group_entities(tokens)])
    return results, cut, limit


def entity_record(text: str, entities: list[dict]) -> dict:
    """What ``hftool tag --json`` prints for a text, and ``POST /v1/tag`` answers: scores to 4 places."""
    return {"text": text, "entities": [{"type": e["entity_group"], "text": e["word"], "start": e["start"],
                                        "end": e["end"], "score": round(e["score"], 4)} for e in entities]}
