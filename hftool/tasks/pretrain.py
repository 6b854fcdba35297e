"""``hftool pretrain``: the recipe schema and the run, from text to a Hugging Face model folder."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hftool import config as cfgmod
from hftool.data.bert_examples import BertExamplesConfig
from hftool.data.text import DataConfig
from hftool.engine.config import TrainConfig
from hftool.errors import HftoolError
from hftool.models import Architecture, check_config_keys

RECIPE_FILE = "hftool_recipe.yaml"
Objective = Literal["causal-lm", "mlm", "mlm-nsp"]
OBJECTIVE_ARCHITECTURES = {"causal-lm": {"gpt2", "bloom"}, "mlm": {"bert"}, "mlm-nsp": {"bert"}}


@dataclass
class ModelConfig:
    """The network: a fresh one from ``architecture`` + ``config``, or a checkpoint to continue from."""

    architecture: Architecture = "gpt2"
    init_from: str | None = None  # folder, Hub id or alias (gpt2, bloom-560m, ...) to continue pretraining
    config: dict = field(default_factory=dict)  # fields of the transformers config (n_layer, hidden_size, ...)
    trust_remote_code: bool = False


@dataclass
class TokenizerConfig:
    """An existing tokenizer (``path``), the checkpoint's own, or one trained on the training split."""

    path: str | None = None
    kind: Literal["byte-bpe", "wordpiece"] | None = None  # default: byte-bpe for GPT-2/BLOOM, wordpiece for BERT
    vocab_size: int | None = None  # default: 30,522 for WordPiece (BERT's), 8,000 for byte-level BPE
    lowercase: bool = False
    min_frequency: int = 2
    resize_embeddings: bool = False  # grow the model when the tokenizer has more tokens than it has rows


@dataclass
class PretrainRecipe:
    """A pretraining run: objective, model, tokenizer, data and training settings."""

    objective: Objective = "causal-lm"
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    bert: BertExamplesConfig = field(default_factory=BertExamplesConfig)  # objectives mlm and mlm-nsp
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/pretrain"))

    def validate(self) -> None:
        allowed = OBJECTIVE_ARCHITECTURES[self.objective]
        if self.model.architecture not in allowed:
            raise HftoolError(f"objective={self.objective} needs model.architecture in {sorted(allowed)}, "
                              f"got {self.model.architecture}")
        if self.model.init_from is None:
            check_config_keys(self.model.architecture, self.model.config)
        elif self.model.config:
            raise HftoolError("model.config sets a fresh model's shape; it cannot be combined with "
                              "model.init_from (the checkpoint has its own config)")
        self.data.validate()
        if self.objective != "causal-lm":
            self.bert.validate()
            shortest = 5 if self.objective == "mlm-nsp" else 4  # [CLS] A [SEP] B [SEP] with one token each
            if self.data.block_size < shortest:
                raise HftoolError(f"data.block_size={self.data.block_size} is too short for "
                                  f"objective={self.objective}; use at least {shortest}")
        self.train.validate()

    @property
    def tokenizer_kind(self) -> str:
        return self.tokenizer.kind or ("wordpiece" if self.model.architecture == "bert" else "byte-bpe")

    @property
    def tokenizer_vocab_size(self) -> int:
        if self.tokenizer.vocab_size is not None:
            return self.tokenizer.vocab_size
        return 30522 if self.tokenizer_kind == "wordpiece" else 8000


# What a training run writes into its folder besides the model files (named in its manifest up front).
RUN_FILES = (RECIPE_FILE, f"{RECIPE_FILE}.tmp", "checkpoints", "metrics.jsonl", "tensorboard", "loss_curve.png",
             "loss_curve.tmp.png", ".final-tmp", ".tokenizer-tmp", "metrics.json", "predictions.json",
             ".predictions.json.tmp")
# Recipe sections that decide the model's shape: a checkpoint cannot be resumed when they change.
SHAPE_FIELDS = ("objective", "model.", "tokenizer.")


def prepare_output_dir(out: Path, recipe_yaml: str, resume: bool, overwrite: bool,
                       shape_fields: tuple[str, ...] = SHAPE_FIELDS) -> None:
    """Refuse to mix runs in one folder; ``--resume`` continues, ``--overwrite`` replaces hftool's files.

    A resume whose recipe changes the model's shape is refused before anything is written.
    """
    from hftool.outputs import check_output_dir, claim_output_dir

    flag = "train.output_dir"
    out = check_output_dir(out, flag)
    saved = out / RECIPE_FILE
    changed: list[str] = []
    if resume and saved.is_file() and saved.read_text(encoding="utf-8") != recipe_yaml:
        changed = _changed_fields(cfgmod.read_yaml(saved), _yaml_dict(recipe_yaml))
        shape = [c for c in changed if c.startswith(shape_fields) or c.split(":")[0] in shape_fields]
        if shape:
            raise HftoolError(f"--resume {out}: the recipe changes the model's shape ({'; '.join(shape)}); "
                              "its checkpoints cannot be loaded into that model. Resume with the saved "
                              f"recipe ({saved}) or start a new train.output_dir")
    what = ("a run with a different recipe" if saved.is_file()
            and saved.read_text(encoding="utf-8") != recipe_yaml else "an earlier run")
    claim_output_dir(out, flag, overwrite, resume=resume and out.is_dir() and any(out.iterdir()),
                     names=RUN_FILES, what=what, hint="pass --resume to continue it, ")
    if changed:
        print(f"warning: resuming {out} with a changed recipe: {', '.join(changed)}")
    tmp = saved.with_suffix(".yaml.tmp")
    tmp.write_text(recipe_yaml, encoding="utf-8")
    os.replace(tmp, saved)


def _yaml_dict(text: str) -> dict:
    import yaml

    return yaml.safe_load(text) or {}


def _changed_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a} -> {b}")
    return changed


def run_pretrain(recipe: PretrainRecipe, resume: bool = False, overwrite: bool = False,
                 strict_resume: bool = False) -> dict:
    """Run a pretraining recipe end to end and return the final metrics (also written to metrics.json)."""
    recipe.validate()
    from hftool.engine.trainer import Engine

    out = Path(recipe.train.output_dir).expanduser()
    recipe_yaml = cfgmod.dump_yaml(recipe, "pretrain")
    engine = Engine(recipe.train, out)
    if engine.is_main:
        prepare_output_dir(out, recipe_yaml, resume, overwrite)
    engine.wait()

    if recipe.objective == "causal-lm":
        from hftool.tasks.causal_lm import setup_causal_lm as setup
    else:
        from hftool.tasks.bert_pretraining import setup_bert_pretraining as setup
    job = setup(recipe, engine, out, resume)

    result = engine.fit(job.model, job.train_data, job.task, resume=resume, strict_resume=strict_resume,
                        tracker_config=cfgmod.to_dict(recipe))
    summary = {"steps": result.steps, "train_loss": result.last_loss, "tokens_per_s": result.tokens_per_s,
               "wall_s": round(result.wall_s, 1), **{f"eval_{k}": v for k, v in result.eval_metrics.items()},
               **job.data_stats}
    if result.interrupted:
        engine.print(f"checkpoint saved in {out / 'checkpoints'}; continue with --resume")
        return summary
    state_dict = engine.accelerator.get_state_dict(job.model)  # every rank: gathers FSDP / ZeRO-3 shards
    if engine.is_main:
        from hftool.engine.report import plot_loss_curve, print_summary

        job.finish(engine.unwrap(job.model), out, summary, state_dict)
        plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png", title=f"{recipe.objective} pretraining")
        print_summary({**summary, "output": str(out)}, title=f"hftool pretrain ({recipe.objective})")
    engine.wait()
    return summary


def write_final_artifacts(model, tokenizer, out: Path, summary: dict, card: str, state_dict=None) -> None:
    """Save the model folder; files are written to a temporary folder first, then moved into place.

    ``state_dict`` is the full (gathered) state when training was sharded (FSDP, DeepSpeed ZeRO-3).
    """
    from hftool.engine.checkpoints import writing
    from hftool.outputs import move_into, record

    tmp = out / ".final-tmp"
    record(out, tmp.name)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(tmp):
            tmp.mkdir(parents=True)
            model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
            (tmp / "README.md").write_text(card, encoding="utf-8")
    except HftoolError:  # a full disk: leave no half-written model folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into(tmp, out)


@dataclass
class PretrainJob:
    """What an objective's setup hands to the engine, and how it saves the result."""

    model: object
    train_data: object
    task: object
    data_stats: dict
    finish: object  # callable(model, out, summary, state_dict): writes the model folder and reports on it


def obtain_tokenizer(recipe: PretrainRecipe, engine, out: Path, resume: bool, train_docs):
    """The run's tokenizer: the one saved by the run being resumed, a given one, the checkpoint's, or new.

    A new tokenizer is trained on the training documents by the main process and saved in the output
    folder; the other processes then load that folder, so every process uses the same vocabulary.
    """
    from transformers import AutoTokenizer

    from hftool.hub import resolve_model

    tok_cfg = recipe.tokenizer
    if resume and (out / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(out)
    source = tok_cfg.path or recipe.model.init_from
    if source is not None:
        if tok_cfg.path:
            ref = resolve_model(source, "tokenizer.path", marker="tokenizer_config.json")
        else:
            ref = resolve_model(source, "model.init_from")
        tokenizer = AutoTokenizer.from_pretrained(ref.name_or_path, trust_remote_code=recipe.model.trust_remote_code,
                                                  **ref.load_kwargs())
        if not getattr(tokenizer, "is_fast", False):
            raise HftoolError(f"{source}: a fast (Rust) tokenizer is needed; this one is slow")
        return tokenizer
    if engine.is_main:
        from hftool.data.tokenizer_training import train_tokenizer

        if isinstance(train_docs, list):
            docs = train_docs
        else:
            raise HftoolError("streaming data needs an existing tokenizer: set tokenizer.path (or train one "
                              "first with 'hftool tokenizer train')")
        engine.print(f"training a {recipe.tokenizer_kind} tokenizer (vocab {recipe.tokenizer_vocab_size}) "
                     f"on {len(docs):,} documents")
        tokenizer = train_tokenizer(docs, recipe.tokenizer_kind, recipe.tokenizer_vocab_size, tok_cfg.lowercase,
                                    tok_cfg.min_frequency)
        from hftool.outputs import move_into, record

        tmp = out / ".tokenizer-tmp"
        record(out, tmp.name)
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        move_into(tmp, out)
    engine.wait()
    return AutoTokenizer.from_pretrained(out)


def load_pretrained_model(recipe: PretrainRecipe, auto_class, engine):
    """Continue from ``model.init_from``: a folder, Hub id or alias."""
    from hftool.hub import resolve_model

    ref = resolve_model(recipe.model.init_from, "model.init_from")
    engine.print(f"continuing from {ref.name_or_path}")
    return auto_class.from_pretrained(ref.name_or_path, trust_remote_code=recipe.model.trust_remote_code,
                                      **ref.load_kwargs())
