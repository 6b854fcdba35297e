"""What the labelling runs (classify, ner) share: a model with a fresh or a trained head (loaded through
:mod:`hftool.loading`), the pad token GPT-2 and BLOOM lack, and the output checks of the evaluate commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hftool.errors import HftoolError

# What the labelling tokenizer's offsets serve (NER's words, tag's character spans): a slow tokenizer is refused.
OFFSETS_FOR = "word alignment"

def set_pad_token(model, tokenizer) -> None:
    """GPT-2 and BLOOM have no pad token: the sequence-classification head finds each text's last token
    through ``config.pad_token_id``, so it is set to the tokenizer's (the end-of-text token)."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def new_head_model(auto_class, ref, labels: list[str], flag: str, trust_remote_code: bool, tokenizer,
                   extra_config: dict | None = None):
    """The pretrained body with a fresh head for ``labels``; ``id2label``/``label2id`` go into its config,
    so the saved folder loads in transformers' pipelines with the label names."""
    from hftool.loading import load_config, load_model

    name = ref.name_or_path
    config = load_config(ref, name, flag, trust_remote_code, num_labels=len(labels),
                         id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    for key, value in (extra_config or {}).items():
        setattr(config, key, value)
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    model = load_model(auto_class, ref, name, flag, config=config, trust_remote_code=trust_remote_code)
    set_pad_token(model, tokenizer)
    return model


def trained_head_model(auto_class, ref, head: str, name: str, flag: str, tokenizer):
    """A model whose head was trained (a random head is refused), with its label names."""
    from hftool.loading import load_model

    model = load_model(auto_class, ref, name, flag, head=head)
    set_pad_token(model, tokenizer)
    return model


def check_positions(model_config, max_length: int, setting: str, flag: str, name: str) -> None:
    positions = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if positions is not None and max_length > positions:
        raise HftoolError(f"{setting}={max_length} is longer than the {positions} positions of {flag} {name}; "
                          "lower it")


def write_jsonl_file(path: Path, records: list[dict]) -> None:
    """One JSON object per line, through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def evaluate_output_dir(output_dir: str | Path, batch_size: int, overwrite: bool, inputs: dict) -> Path:
    """The checked ``--output-dir`` of ``hftool evaluate``, refused before any model is loaded; ``inputs`` (flag
    -> path: the model and the file scored) may not be, hold or lie around it."""
    from hftool.outputs import check_claim

    if batch_size < 1:
        raise HftoolError(f"--batch-size={batch_size} must be at least 1")
    return check_claim(output_dir, "--output-dir", overwrite, inputs=inputs, what="files of an earlier evaluation")


def score_and_write(model, task, out: Path, batch_size: int, mixed_precision: str, overwrite: bool,
                    header: dict, predictions, inputs: dict) -> dict:
    """Evaluate ``model`` with ``task`` on the engine's processes; the main one claims ``out`` (``inputs`` as for
    :func:`evaluate_output_dir`) and writes ``metrics.json`` (the ``header`` and the scores) and
    ``predictions.json`` (``predictions(task)``)."""
    import torch

    from hftool.engine.config import TrainConfig
    from hftool.engine.trainer import Engine
    from hftool.outputs import claim_output_dir
    from hftool.runs.artifacts import write_json

    engine = Engine(TrainConfig(output_dir=str(out), mixed_precision=mixed_precision, eval_batch_size=batch_size,
                                report_to="none"), out)
    model = model.to(engine.device)
    model.eval()
    with torch.no_grad(), engine.autocast():
        summary = {**header, **task.evaluate(model, engine)}
    if engine.is_main:
        claim_output_dir(out, "--output-dir", overwrite, inputs=inputs, what="files of an earlier evaluation")
        write_json(out / "predictions.json", predictions(task))
        write_json(out / "metrics.json", summary)
    engine.wait()
    return summary


def texts_from(texts: list[str] | None, input_file: str | None, text_column: str) -> list[str]:
    """The texts given on the command line, or read from ``--input`` (not both)."""
    from hftool.data.classification import read_input_texts

    if input_file and texts:
        raise HftoolError("give texts as arguments or --input FILE, not both")
    if input_file:
        return read_input_texts(input_file, "--input", text_column)
    if not texts:
        raise HftoolError("give one or more texts, or --input FILE")
    if any(not t.strip() for t in texts):
        raise HftoolError("a text given on the command line is empty")
    return list(texts)
