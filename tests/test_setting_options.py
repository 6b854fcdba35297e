"""One source per setting: the settings dataclasses' field metadata make the CLI options and the checks.

No model is loaded: these read the Typer commands and run the checks that come before any load.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
import typer.main

from hftool.cli import app
from hftool.cli.generate import SUMMARIZE, TRANSLATE, _recipe
from hftool.config import load_recipe
from hftool.data.squad import SquadDataConfig, WindowSettings
from hftool.errors import HftoolError
from hftool.schemas.generate import DTYPES, DecodingSettings, GenerateRecipe, ModelSettings

COMMANDS = typer.main.get_command(app).commands
# The setting flags each command had before they were generated from the dataclasses (hand-written then).
SETTING_FLAGS_BEFORE = {
    "generate": {"--model", "--max-new-tokens", "--sample", "--temperature", "--top-k", "--top-p", "--num-beams",
                 "--num-return-sequences", "--repetition-penalty", "--no-repeat-ngram-size", "--stop", "--seed",
                 "--batch-size", "--dtype", "--device-map", "--offload-folder", "--max-memory",
                 "--trust-remote-code", "--fast-decode"},
    "summarize": {"--model", "--max-new-tokens", "--sample", "--temperature", "--top-k", "--top-p", "--num-beams",
                  "--repetition-penalty", "--no-repeat-ngram-size", "--seed", "--batch-size", "--dtype",
                  "--device-map", "--offload-folder", "--max-memory", "--trust-remote-code"},
}
SETTING_FLAGS_BEFORE["translate"] = SETTING_FLAGS_BEFORE["summarize"]
# Defaults --help showed before, and the help a task words its own way; every other setting flag is hidden None.
SHOWN = {"generate": {}, "summarize": {"max_new_tokens": 100, "do_sample": True, "top_k": 2},
         "translate": {"max_new_tokens": 64}}
OWN_HELP = {"summarize": {"max_new_tokens": "Tokens to generate per summary.",
                          "do_sample": "Sample (as in the GPT-2 paper) or greedy."},
            "translate": {"max_new_tokens": "Tokens to generate, at most."}}
SETTINGS = [*dataclasses.fields(ModelSettings), *dataclasses.fields(DecodingSettings),
            *(f for f in dataclasses.fields(GenerateRecipe) if f.name == "batch_size")]


def _options(command) -> dict:
    return {p.opts[0]: p for p in command.params if p.opts[0].startswith("--")}


@pytest.mark.parametrize("name", ["generate", "summarize", "translate"])
def test_each_setting_flag_comes_from_its_field_with_its_help_and_default(name):
    options = _options(COMMANDS[name])
    setting_options = {flag for flag in options if flag in {f.metadata["flag"].split("/")[0] for f in SETTINGS}}
    assert setting_options == SETTING_FLAGS_BEFORE[name]
    for item in SETTINGS:
        long_flag, _, negative = item.metadata["flag"].partition("/")
        if long_flag not in SETTING_FLAGS_BEFORE[name]:
            continue
        option = options[long_flag]
        assert option.secondary_opts == ([negative] if negative else [])
        assert option.opts == [long_flag] + ([item.metadata["short"]] if item.metadata["short"] else [])
        assert option.help == OWN_HELP.get(name, {}).get(item.name, item.metadata["help"])
        shown = SHOWN[name]
        assert (option.default, option.show_default) == ((shown[item.name], True) if item.name in shown
                                                         else (None, False)), item.name
    # The defaults --help shows are the task defaults the command's recipe starts from.
    task = {"summarize": SUMMARIZE, "translate": TRANSLATE}.get(name, DecodingSettings())
    assert all(getattr(task, field) == value for field, value in SHOWN[name].items())


def _outside(bound) -> float:
    """A value the bound refuses: at an open low end, below a closed one, or above the high end."""
    if bound.high is not None:
        return bound.high + 1
    return bound.low if bound.low_open else bound.low - 1


BOUNDED = [f for f in SETTINGS if f.metadata["bound"] and not f.metadata["bound"].choices]


@pytest.mark.parametrize("item", BOUNDED, ids=[f.name for f in BOUNDED])
def test_a_bound_gives_the_same_error_from_the_recipe_and_from_the_flag(item):
    bound = item.metadata["bound"]
    hint = typing.get_type_hints(GenerateRecipe if item.name == "batch_size" else DecodingSettings)[item.name]
    hint = next(arg for arg in typing.get_args(hint) if arg is not type(None)) if typing.get_args(hint) else hint
    bad = hint(_outside(bound))
    section = "" if item.name == "batch_size" else "decoding."
    # sampling: the bound's condition, or (continuations) greedy search's own limit of one per beam
    sampling = ["decoding.do_sample=true"] if bound.when or item.name == "num_return_sequences" else []
    expected = f"{item.metadata['flag']} {bad}: {bound.why}"
    with pytest.raises(HftoolError) as from_recipe:
        load_recipe(GenerateRecipe, None, [f"{section}{item.name}={bad}", *sampling]).validate()
    base = load_recipe(GenerateRecipe, None, sampling)
    with pytest.raises(HftoolError) as from_flag:
        _recipe(base, {item.name: bad})
    assert str(from_recipe.value) == str(from_flag.value) == expected
    edge = bound.high if bound.high is not None else bound.low + 1 if bound.low_open else bound.low
    accepted = _recipe(base, {item.name: hint(edge)})  # the edge inside the bound passes
    assert getattr(accepted.decoding if section else accepted, item.name) == edge


def test_dtype_choices_are_declared_once():
    assert typing.get_args(typing.get_type_hints(ModelSettings)["dtype"]) == DTYPES
    assert all(dtype in _options(COMMANDS["generate"])["--dtype"].help for dtype in DTYPES)
    for dtype in DTYPES:
        assert _recipe(GenerateRecipe(), {"dtype": dtype}).model.dtype == dtype
    with pytest.raises(HftoolError, match="--dtype float8: must be one of auto, float32, bfloat16, float16"):
        _recipe(GenerateRecipe(), {"dtype": "float8"})
    with pytest.raises(HftoolError, match="model.dtype='float8' is not one of: auto, float32, bfloat16, float16"):
        load_recipe(GenerateRecipe, None, ["model.dtype=float8"])


def test_squad_window_defaults_are_one_set():
    windows = WindowSettings()
    data = SquadDataConfig()
    assert (windows.max_length, windows.doc_stride) == (384, 128)
    assert data.windows == windows
    evaluate = _options(COMMANDS["evaluate"].commands["squad"])
    answer = _options(COMMANDS["answer"])
    for field in ("max_length", "doc_stride", "max_answer_length", "n_best"):
        flag = "--" + field.replace("_", "-")
        assert evaluate[flag].default == getattr(windows, field)
        if field != "n_best":
            assert answer[flag].default == getattr(windows, field)
            assert answer[flag].help == evaluate[flag].help


def test_every_serve_setting_is_a_flag_of_serve_that_reaches_its_options(monkeypatch):
    """Each ServeOptions field that declares a flag is an option of ``hftool serve`` and its value arrives in the
    options run_serve gets (a field left out of the command's signature would silently keep its default)."""
    from typer.testing import CliRunner

    from hftool.runs import serve as serve_run
    from hftool.schemas.serve import ServeOptions

    received = []
    monkeypatch.setattr(serve_run, "run_serve", received.append)
    options, args, want = _options(COMMANDS["serve"]), ["serve", "--model", "m"], {}
    for item in (f for f in dataclasses.fields(ServeOptions) if "flag" in f.metadata):
        long_flag, _, negative = item.metadata["flag"].partition("/")
        assert long_flag in options, long_flag
        if negative:
            args.append(negative)
            want[item.name] = not item.default
        else:
            value = "0.0.0.0" if item.type == "str" else 7
            args += [long_flag, str(value)]
            want[item.name] = value
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {name: getattr(received[0], name) for name in want} == want
