"""Every command-line default and bound comes from one schema field (hftool.schemas).

The walk builds the click commands of the Typer app and reads each option of each command, the field it was
made from (``schema_field``, set by hftool.cli.setting_options) and compares the two. No model is loaded.
"""

from __future__ import annotations

import dataclasses

import pytest
import typer.main
from typer.core import TyperOption

from hftool.cli import app
from hftool.cli.setting_options import Checked
from hftool.schemas import explain, fields, finetune, generate, inference, pretrain, serve

# Options that are no setting, so no schema field holds them, and why.
GENERIC = {
    "--help": "click's help page",
    "--install-completion": "Typer's shell completion",
    "--show-completion": "Typer's shell completion",
    "--verbose": "hftool's own output switch, for every command",
    "--recipe": "names the recipe file the schema is read from; its default is the command's shipped recipe",
    "--resume": "run control: continue from a checkpoint",
    "--strict-resume": "run control: how strictly to resume",
    "--overwrite": "run control: replace hftool's own earlier output",
    "--output": "a file or folder path to write",
    "--output-dir": "a folder path to write",
    "--input": "a file path to read",
    "--file": "a file path to read",
    "--train-file": "a file path, the same as the recipe key data.train_file",
    "--validation-file": "a file path, the same as the recipe key data.validation_file",
    "--reference": "a file path to read",
    "--pairs": "a file path to read",
    "--model": "names the model to load, a path or a Hub id",
    "--prompt": "the input text itself",
    "--question": "the input text itself",
    "--context": "the input text itself",
    "--text": "the input text itself",
    "--word": "the input text itself",
    "--sentence": "the input text itself",
    "--api-key": "a secret, read from HFTOOL_API_KEY as well",
    "--strict": "finetune squad: the same as the recipe key data.strict",
}
# The recipe-overlay options of the generation commands: None unless typed, then checked with the recipe by
# the same field's bound (schemas.fields.check_fields), so that a flag and a recipe value meet one check.
CHECKED_WITH_THE_RECIPE = (generate.DecodingSettings, generate.ModelSettings, generate.GenerateRecipe)


def _commands(command, path=()):
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    yield path, command  # a group's own options (the app's --verbose)
    for name, sub in sorted(subcommands.items()):
        yield from _commands(sub, (*path, name))


def _options():
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            if isinstance(param, TyperOption):
                declared = param.type_descriptor.parameter_info  # the typer.Option the command declared
                yield " ".join(path) or "hftool", param, getattr(declared, "schema_field", None)


OPTIONS = list(_options())


def _owner(item: dataclasses.Field) -> type:
    modules = (explain, finetune, generate, inference, pretrain, serve)
    schemas = [c for m in modules for c in vars(m).values() if dataclasses.is_dataclass(c) and isinstance(c, type)]
    return next(c for c in schemas if any(f is item for f in dataclasses.fields(c)))


def test_the_walk_sees_every_command():
    commands = {command for command, _, _ in OPTIONS}
    assert {"pretrain", "finetune squad", "finetune ner", "evaluate classify", "answer", "classify", "tag",
            "generate", "summarize", "translate", "serve", "explain attention", "tokenizer train",
            "estimate-memory"} <= commands
    assert sum(item is not None for _, _, item in OPTIONS) > 100


@pytest.mark.parametrize(("command", "param", "item"), OPTIONS,
                         ids=[f"{command} {param.opts[0]}" for command, param, _ in OPTIONS])
def test_every_option_comes_from_a_schema_field_with_its_default_and_bound(command, param, item):
    flag = param.opts[0]
    if item is None:
        assert flag in GENERIC, f"hftool {command} {flag}: declare it as a schema field (hftool.schemas) and " \
                                "make the option with hftool.cli.setting_options.option"
        return
    owner = _owner(item)
    assert flag == item.metadata["flag"].split("/")[0]
    bound = item.metadata["bound"]
    parser = param.type_descriptor.parameter_info.parser
    if owner in CHECKED_WITH_THE_RECIPE and not isinstance(parser, Checked):
        assert param.default is None or param.show_default, flag  # hidden None, or the task default it shows
        return
    assert param.default == fields.default_of(owner, item.name) or param.default == () == (
        fields.default_of(owner, item.name) or ()), flag  # a repeatable option's None reads as ()
    if bound is None:
        assert parser is None
        return
    assert isinstance(parser, Checked) and parser.bound is bound, f"{flag}: not held to its field's bound"


def test_one_default_per_setting_across_commands():
    """The duplicates issue 25 counted are one field each now: evaluate's batch, inference's batch,
    mixed precision, serve's limits and SQuAD windows."""
    by_flag: dict[tuple[str, str], set] = {}
    for command, param, item in OPTIONS:
        if item is not None:
            by_flag.setdefault((command.split()[0], param.opts[0]), set()).add(id(item))
    assert len(by_flag[("evaluate", "--batch-size")]) == 1
    assert len(by_flag[("evaluate", "--mixed-precision")]) == 1
    answer = {id(i) for c, p, i in OPTIONS if c in ("answer", "classify") and p.opts[0] == "--batch-size"}
    assert len(answer) == 1
    windows = {(c, p.opts[0]): i for c, p, i in OPTIONS if p.opts[0] in ("--max-length", "--doc-stride")}
    assert windows[("answer", "--max-length")] is windows[("serve", "--max-length")] \
        is windows[("evaluate squad", "--max-length")]


def test_serve_limits_and_windows_are_the_schema_defaults():
    from hftool.data.squad import SquadDataConfig

    options = serve.ServeOptions()
    data = SquadDataConfig()
    assert options.qa_window == (data.max_length, data.doc_stride, data.max_answer_length)
    assert fields.MIXED_PRECISIONS == ("no", "fp16", "bf16", "auto")


def test_a_serve_limit_is_refused_from_the_flag_and_from_the_options(capsys):
    from helpers import run_cli

    from hftool.errors import HftoolError

    code, _, err = run_cli(["serve", "--model", "x", "--max-queue", "0"])
    assert (code, err.strip().splitlines()) == (2, ["error: --max-queue=0 must be at least 1"])
    with pytest.raises(HftoolError, match=r"^--max-queue 0: must be at least 1$"):
        serve.ServeOptions(max_queue=0).validate()


def test_a_bad_choice_is_one_line_from_the_schema():
    from helpers import run_cli

    code, _, err = run_cli(["evaluate", "classify", "-m", "x", "-f", "y", "--mixed-precision", "fp8"])
    assert (code, err.strip().splitlines()) == (2, ["error: --mixed-precision=fp8 is not one of: no, fp16, bf16, "
                                                    "auto"])
    code, _, err = run_cli(["evaluate", "ner", "-m", "x", "-f", "y", "--tag-scheme", "bio"])
    assert (code, err.strip().splitlines()) == (2, ["error: --tag-scheme=bio must be iob2 or iob1"])


def test_saved_model_decoding_is_a_checked_decoding_setting():
    saved = generate.SAVED_MODEL_DECODING
    saved.validate()
    assert saved.max_new_tokens == generate.DecodingSettings().max_new_tokens
