"""Input checks that a row of test_bad_input's table cannot express: every whole-number flag's declared bound,
the exact head each command needs, label names, runs without validation data and endless inputs."""

from __future__ import annotations

import json
import typing

import pytest
from helpers import run_cli

# Their decoding options overlay a recipe (hftool.cli.setting_options.options): None unless typed, then checked
# with the recipe by validate(), with the same field's Bound (tests/test_setting_options.py).
SETTINGS_COMMANDS = {"generate", "summarize", "translate"}


def _commands(command, path=()):
    """``(command path, click command)`` for every leaf command of the hftool app."""
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name, sub in sorted(subcommands.items()):
        yield from _commands(sub, (*path, name))


def _is_whole_number(param) -> bool:
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    return annotation is int


def _whole_number_options():
    import typer.main

    from hftool.cli import app

    for path, command in _commands(typer.main.get_command(app)):
        if path[0] in SETTINGS_COMMANDS:
            continue
        for param in command.params:
            if _is_whole_number(param):
                yield path, param


def test_whole_number_options_are_found():
    """The walk below sees the flags it is meant to guard (a Typer change would otherwise pass it vacuously)."""
    found = {(" ".join(path), param.opts[0]) for path, param in _whole_number_options()}
    assert {("classify", "--batch-size"), ("answer", "--batch-size"), ("evaluate classify", "--max-examples"),
            ("tag", "--max-length"), ("tokenizer train", "--vocab-size"), ("pretrain", "--num-processes"),
            ("estimate-memory", "--num-processes"), ("explain attention", "--layer"), ("serve", "--max-queue"),
            ("serve", "--port")} <= found


@pytest.mark.parametrize(("path", "param"), list(_whole_number_options()),
                         ids=lambda item: " ".join(item) if isinstance(item, tuple) else item.opts[0])
def test_every_whole_number_option_declares_its_bound(path, param):
    """A count flag without a declared lower bound (its schema field's ``Bound``) fails here; the value just
    below the bound is refused while parsing, in one line naming the flag and the bound's words."""
    assert param.min is not None, f"hftool {' '.join(path)} {param.opts[0]}: give its schema field a Bound"
    flag, below = param.opts[0], param.min - 1
    code, out, err = run_cli([*path, flag, str(below)])
    assert code == 2
    assert "Traceback" not in out + err
    why = param.type_descriptor.parameter_info.parser.bound.why  # "must be at least 1", "must be from 0 to 65535"
    assert err.strip().splitlines() == [f"error: {flag}={below} {why}"]


def test_not_a_number_is_one_line():
    code, _, err = run_cli(["classify", "-m", "x", "--batch-size", "many", "hi"])
    assert code == 2
    assert err.strip().splitlines() == ["error: --batch-size=many is not a whole number"]


TINY_CLASSIFY = ["train.max_steps=2", "train.batch_size=4", "train.warmup_steps=0", "train.log_every=1",
                 "train.save_every=0", "data.max_length=32", "train.mixed_precision=no", "train.report_to=none"]


def test_finetune_classify_without_validation_data_trains_without_evaluation(shared_data, minilm, tmp_path):
    """The recipe's quick line without --validation-file: training runs, no evaluation, a usable folder; the
    model-writing progress bar of transformers is not written into a captured stderr."""
    out = tmp_path / "run"
    code, stdout, err = run_cli(["finetune", "classify", "-r", "classify-sst2-minilm", "--train-file",
                                 str(shared_data / "sst2" / "train.tsv"), "data.max_train_examples=16",
                                 f"train.output_dir={out}", *TINY_CLASSIFY])
    assert code == 0, err[-2000:]
    assert "16 training and 0 validation texts" in stdout + err
    assert (out / "model.safetensors").is_file()
    assert "Writing model shards" not in err
    code, stdout, err = run_cli(["classify", "-m", str(out), "--json", "a charming film"])
    assert code == 0, err[-2000:]
    assert '"label": "' in stdout


def test_finetune_classify_takes_labels_named_as_the_recipe_names_them(minilm, tmp_path):
    """classify-sst2-minilm declares label_names [negative, positive]: a file may write those names, or the
    integers; a label that is neither names the line."""
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "a fine film\tpositive\na dull film\tnegative\n" * 4
                     + "a great film\t1\n")
    out = tmp_path / "run"
    code, _, err = run_cli(["finetune", "classify", "-r", "classify-sst2-minilm", "--train-file", str(train),
                            "--validation-file", str(train), f"train.output_dir={out}", *TINY_CLASSIFY])
    assert code == 0, err[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    train.write_text("sentence\tlabel\na fine film\tgood\n")
    code, _, err = run_cli(["finetune", "classify", "-r", "classify-sst2-minilm", "--train-file", str(train),
                            f"train.output_dir={tmp_path / 'other'}", *TINY_CLASSIFY])
    assert code == 2
    assert err.strip().splitlines() == [f"error: {train}:2: label 'good' is neither one of data.label_names "
                                        "(negative, positive) nor an index into them, in data.train"]


def _endless_fifo(path):
    """A named pipe that a thread keeps writing lines into until its reader goes away."""
    import os
    import threading

    os.mkfifo(path)

    def write():
        try:
            with open(path, "w") as pipe:
                while True:
                    pipe.write("an endless stream of text\n" * 1000)
        except (BrokenPipeError, OSError):
            return

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_an_endless_stream_stops_at_the_input_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("HFTOOL_MAX_INPUT_BYTES", "100000")
    fifo = tmp_path / "texts.txt"
    writer = _endless_fifo(fifo)
    code, _, err = run_cli(["classify", "-m", "unused", "--input", str(fifo)])
    writer.join(timeout=10)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: --input {fifo}: larger than 100,000 bytes, more than hftool reads at once; split the file, "
        "stream it as JSON Lines (data.streaming=true), or raise HFTOOL_MAX_INPUT_BYTES"]


def test_a_file_over_the_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n" * 100)
    monkeypatch.setenv("HFTOOL_MAX_INPUT_BYTES", "500")
    code, _, err = run_cli(["tokenizer", "train", str(corpus), "-o", str(tmp_path / "tok")])
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"error: {corpus}: larger than 500 bytes")


def test_a_json_lines_record_longer_than_the_line_cap_is_one_line(tmp_path, monkeypatch):
    from hftool.data import files

    monkeypatch.setattr(files, "MAX_LINE_CHARS", 100)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "x" * 1000}) + "\n")
    code, _, err = run_cli(["tokenizer", "train", str(corpus), "-o", str(tmp_path / "tok")])
    assert code == 2
    assert err.strip().splitlines()[-1] == (f"error: {corpus}:2: a line longer than 100 characters; "
                                            "is this a text file?")


def test_an_override_error_blames_the_override_not_the_shipped_recipe():
    code, _, err = run_cli(["estimate-memory", "data.block_size=1e10"])
    assert code == 2
    assert err.strip().splitlines() == ["error: command-line override: data.block_size='1e10' should be of type int"]


@pytest.mark.parametrize("group", ["finetune", "evaluate", "explain", "recipes", "tokenizer"])
def test_group_help_pages_show_examples(group):
    code, out, _ = run_cli([group, "--help"])
    assert code == 0
    assert "Examples:" in out and f"hftool {group} " in out
