"""What a run leaves in its output folder: the claimed folder and saved recipe, the final model folder, the
model card, JSON result files, and the summary a fine-tuning run reports. Every write goes through a temporary
name recorded in the folder's manifest first, and each file is fingerprinted once written (:mod:`hftool.outputs`),
so nothing is half-written and ``--overwrite`` knows by content what is hftool's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from hftool import config as cfgmod
from hftool.engine.report import plot_loss_curve, print_summary
from hftool.errors import HftoolError
from hftool.outputs import (
    Inputs,
    check_claim,
    check_output_dir,
    claim_output_dir,
    fingerprint,
    move_into,
    record,
    write_text,
)

RECIPE_FILE = "hftool_recipe.yaml"
# Recipe sections that decide the model's shape: a checkpoint cannot be resumed when they change.
SHAPE_FIELDS = ("objective", "model.", "tokenizer.", "adapter.")
FINE_TUNE_SHAPE_FIELDS = ("model.", "adapter.")
MODEL_FLAG = "model.name_or_path"


def check_run_dir(out: Path, recipe_yaml: str, resume: bool, overwrite: bool,
                  shape_fields: tuple[str, ...] = SHAPE_FIELDS, inputs: Inputs | None = None) -> list[str]:
    """Every check of :func:`prepare_output_dir`, writing nothing (run it before reading data or loading models);
    returns the recipe fields a resume changes."""
    flag = "train.output_dir"
    out = check_output_dir(out, flag)
    saved = out / RECIPE_FILE
    changed: list[str] = []
    if resume and saved.is_file() and saved.read_text(encoding="utf-8") != recipe_yaml:
        changed = _changed_fields(cfgmod.read_yaml(saved), yaml.safe_load(recipe_yaml) or {})
        shape = [c for c in changed if c.startswith(shape_fields) or c.split(":")[0] in shape_fields]
        if shape:
            raise HftoolError(f"--resume {out}: the recipe changes the model's shape ({'; '.join(shape)}); "
                              "its checkpoints cannot be loaded into that model. Resume with the saved "
                              f"recipe ({saved}) or start a new train.output_dir")
    check_claim(out, flag, overwrite, resume=resume, inputs=inputs, **_claim_words(saved, recipe_yaml))
    return changed


def _claim_words(saved: Path, recipe_yaml: str) -> dict[str, str]:
    different = saved.is_file() and saved.read_text(encoding="utf-8") != recipe_yaml
    return {"what": "a run with a different recipe" if different else "an earlier run",
            "hint": "pass --resume to continue it, "}


def prepare_output_dir(out: Path, recipe_yaml: str, resume: bool, overwrite: bool,
                       shape_fields: tuple[str, ...] = SHAPE_FIELDS, inputs: Inputs | None = None) -> None:
    """Refuse to mix runs in one folder; ``--resume`` continues, ``--overwrite`` replaces hftool's files; then
    claim the folder (locked until the run ends) and save the recipe.

    ``inputs`` (flag -> path) are the model, tokenizer and data the run reads: the folder may not be, hold or lie
    inside any of them. A resume whose recipe changes the model's shape is refused before anything is written.
    """
    changed = check_run_dir(out, recipe_yaml, resume, overwrite, shape_fields, inputs)
    saved = out / RECIPE_FILE
    claim_output_dir(out, "train.output_dir", overwrite, resume=resume, inputs=inputs,
                     **_claim_words(saved, recipe_yaml))
    if changed:
        print(f"warning: resuming {out} with a changed recipe: {', '.join(changed)}")
    write_text(saved, recipe_yaml)


def _changed_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a} -> {b}")
    return changed


def write_final_artifacts(model, tokenizer, out: Path, summary: dict, card: str, state_dict=None) -> None:
    """Save the model folder; files are written to a temporary folder first, then moved into place.

    ``state_dict`` is the full (gathered) state when training was sharded (FSDP, DeepSpeed ZeRO-3). A LoRA run
    saves its adapter folder (:func:`hftool.adapters.save_adapter`) and says in the card how to load it.
    """
    from hftool.adapters import adapter_usage, is_adapter_model, save_adapter
    from hftool.engine.checkpoint_files import writing  # imports torch: not needed to claim a folder (fail fast)

    tmp = out / ".final-tmp"
    record(out, tmp.name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(tmp):
            tmp.mkdir(parents=True)
            if is_adapter_model(model):
                save_adapter(model, tmp, state_dict)
                card += "\n" + adapter_usage(model.peft_config["default"].task_type)
            else:
                model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
            (tmp / "README.md").write_text(card, encoding="utf-8")
    except HftoolError:  # a full disk: leave no half-written model folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into(tmp, out)


def save_tokenizer(tokenizer, out: Path) -> None:
    """Save a tokenizer trained by the run into ``out`` (through a temporary folder)."""
    tmp = out / ".tokenizer-tmp"
    record(out, tmp.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    move_into(tmp, out)


def write_json(path: Path, value) -> None:
    """A JSON result file (predictions, metrics), written atomically and fingerprinted in the folder's manifest."""
    write_text(path, json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def model_card(title: str, pipeline_tag: str, tags: list[str], facts: str, summary: dict, usage: str) -> str:
    """A short model card: what was trained on what (``facts``, a Markdown list), the metrics, and how to use
    the folder without hftool (``usage``, Markdown code blocks)."""
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in summary.items())
    return f"""---
library_name: transformers
pipeline_tag: {pipeline_tag}
tags: [{', '.join(tags)}]
---

# {title}

{facts}

| metric | value |
| --- | --- |
{rows}

{usage}"""


def training_fact(recipe, summary: dict, batch_size: int) -> str:
    """The model card's line on how the model was trained; ``batch_size`` is the engine's per-process batch
    (resolved from ``train.global_batch_size`` when set)."""
    train = recipe.train
    return (f"- Training: {summary.get('steps')} optimizer steps, lr {train.lr}, batch {batch_size} x\n"
            f"  accumulation {train.grad_accum}, mixed precision `{train.mixed_precision}`.")


def finish_report(out: Path, summary: dict, title: str, curve_title: str) -> None:
    """The loss curve beside the model folder and the summary table on the terminal (main process)."""
    record(out, "loss_curve.tmp.png")
    if plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png", title=curve_title):
        fingerprint(out, "loss_curve.png", done=["loss_curve.tmp.png"])
    print_summary({**summary, "output": str(out)}, title=title)


def pretrain_card(recipe, summary: dict, pipeline_tag: str, batch_size: int) -> str:
    """The model card of a pretraining run: objective, shape, data, training and how to load it."""
    arch, objective = recipe.model.architecture, recipe.objective
    shape = recipe.model.init_from or ", ".join(f"{k}={v}" for k, v in recipe.model.config.items()) or "defaults"
    facts = (f"- Objective: `{objective}`; architecture `{arch}` ({shape}).\n"
             f"- Data: {recipe.data.describe()}; block size {recipe.data.block_size}.\n"
             f"{training_fact(recipe, summary, batch_size)}\n"
             "- The full recipe is in `hftool_recipe.yaml`; per-step metrics in `metrics.jsonl`.")
    usage = f"""```python
from transformers import pipeline
pipe = pipeline("{pipeline_tag}", model="path/to/this/folder")
```
"""
    return model_card(f"{arch} ({objective}) trained with hftool", pipeline_tag, ["hftool", arch, objective],
                      facts, summary, usage)


def fine_tune_summary(result, engine, eval_seconds: list[float], counts: dict[str, int],
                      unit: str = "examples") -> dict:
    """The summary of a fine-tuning run (``counts``: what it trained on, e.g. ``{"train_examples": n}``);
    ``train_<unit>_per_s`` leaves out the time spent evaluating inside the loop (the final evaluation runs after
    it)."""
    trained_steps = result.steps - (result.resumed_from or 0)
    train_seconds = result.wall_s - sum(eval_seconds if result.interrupted else eval_seconds[:-1])
    return {
        "steps": result.steps, "train_loss": result.last_loss, **counts,
        f"train_{unit}_per_s": round(trained_steps * engine.examples_per_step / max(train_seconds, 1e-9), 2),
        "wall_s": round(result.wall_s, 1), **{f"eval_{k}": v for k, v in result.eval_metrics.items()},
    }


@dataclass
class FineTuneFolder:
    """The output folder of a ``finetune`` run, the same for every task: checked before any data or model is read,
    claimed by the main process once the engine exists, and given the final artifacts when training ends."""

    out: Path
    command: str
    recipe_yaml: str
    inputs: Inputs
    shape_fields: tuple[str, ...]
    resume: bool
    overwrite: bool

    @classmethod
    def check(cls, recipe, command: str, resume: bool, overwrite: bool,
              shape_fields: tuple[str, ...] = FINE_TUNE_SHAPE_FIELDS) -> FineTuneFolder:
        """Every check :func:`check_run_dir` makes, writing nothing (``shape_fields``: the recipe fields a
        resume may not change)."""
        data = recipe.data
        inputs = {MODEL_FLAG: recipe.model.name_or_path, "--train-file": data.train_file,
                  "--validation-file": data.validation_file}
        folder = cls(Path(recipe.train.output_dir).expanduser(), command, cfgmod.dump_yaml(recipe, command),
                     inputs, shape_fields, resume, overwrite)
        check_run_dir(folder.out, folder.recipe_yaml, resume, overwrite, shape_fields, inputs)
        return folder

    def claim(self, engine) -> None:
        if engine.is_main:
            prepare_output_dir(self.out, self.recipe_yaml, self.resume, self.overwrite, self.shape_fields,
                               self.inputs)
        engine.wait()

    def finish(self, engine, model, tokenizer, summary: dict, interrupted: bool,
               predictions: Callable[[], object] | None, card: Callable[[], str], curve_title: str) -> dict:
        """Write ``predictions()`` as ``predictions.json`` (unless it returns None), the model (or adapter) folder
        with ``card()``, the loss curve and the summary table; an interrupted run keeps its checkpoint and says
        how to resume."""
        if interrupted:
            engine.print(f"checkpoint saved in {self.out / 'checkpoints'}; continue with --resume")
            return summary
        state_dict = engine.accelerator.get_state_dict(model)  # every rank: gathers FSDP / ZeRO-3 shards
        if engine.is_main:
            written = predictions() if predictions else None
            if written is not None:
                write_json(self.out / "predictions.json", written)
            write_final_artifacts(engine.unwrap(model), tokenizer, self.out, summary, card(), state_dict)
            finish_report(self.out, summary, title=f"hftool {self.command}", curve_title=curve_title)
        engine.wait()
        return summary
