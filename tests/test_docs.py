"""Every ``hftool ...`` command line shown in README.md and docs/*.md parses: its subcommands, flags and
arguments exist in the CLI as it is now (nothing is run: no model is loaded, no file is read)."""

from __future__ import annotations

import shlex

import pytest
import typer
from helpers import REPO, run_cli

from hftool.errors import HftoolError

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console"}
CONNECTORS = {"&&", "||", "|", ";"}


def shell_blocks(text: str) -> list[str]:
    """The contents of a page's fenced blocks marked as shell, or not marked."""
    blocks, language, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                if language in SHELL:
                    blocks.append("\n".join(lines) + "\n")
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def documented_commands(text: str) -> list[str]:
    """The ``hftool`` command lines in a page's shell blocks, continuation lines joined, one per command."""
    found = []
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            command: list[str] = []
            for word in [*words, ";"]:
                if word not in CONNECTORS:
                    command.append(word)
                    continue
                if command and command[0] == "hftool":
                    found.append(shlex.join(command[1:]))
                elif "hftool" in command and command[command.index("hftool") - 1] == "-m":  # accelerate launch -m
                    found.append(shlex.join(command[command.index("hftool") + 1:]))
                command = []
    return found


def parse(args: list[str]):
    """Resolve ``args`` to its command and parse them as the CLI would, without running it."""
    from hftool.cli import app

    command = typer.main.get_command(app)
    path = ["hftool"]
    while hasattr(command, "commands") and args and not args[0].startswith("-"):  # a group (typer's own click)
        name = args.pop(0)
        assert name in command.commands, f"no command '{' '.join(path)} {name}'"
        command = command.commands[name]
        path.append(name)
    assert not hasattr(command, "commands"), f"'{' '.join(path)}' needs a subcommand"
    # raises on an unknown flag, a bad value or a missing argument
    return path[1], command.make_context(" ".join(path), args)


CASES = [(f"{page.name}: hftool {line}", line) for page in PAGES
         for line in documented_commands(page.read_text(encoding="utf-8"))]


def test_the_pages_show_commands_for_every_command_group():
    shown = {case.split(": hftool ")[1].split()[0] for case, _ in CASES}
    assert {"pretrain", "finetune", "evaluate", "answer", "classify", "tag", "generate", "serve", "explain",
            "recipes", "adapters"} <= shown


def check(line: str) -> None:
    """The flags parse, and a shipped recipe's ``section.key=value`` overrides pass ``hftool recipes validate``."""
    from hftool.config import find_recipe

    try:
        group, context = parse(shlex.split(line))
    except typer.Exit:  # --help
        return
    except typer.TyperException as exc:  # typer's click errors: unknown option, bad value, missing argument
        raise AssertionError(exc.format_message()) from None
    recipe, overrides = context.params.get("recipe"), context.params.get("overrides")
    if recipe and overrides and not recipe.endswith(".yaml"):  # a .yaml the page's reader wrote is not here
        code, _, err = run_cli(["recipes", "validate", str(find_recipe(recipe, prefer=group)), *overrides])
        assert code == 0, err


@pytest.mark.parametrize(("where", "line"), CASES, ids=[case for case, _ in CASES])
def test_documented_command_parses(where, line):
    check(line)


def test_a_wrong_flag_or_command_is_caught():
    """The check can fail: an unknown flag, an unknown subcommand and a bad value are each refused."""
    with pytest.raises(AssertionError, match="No such option: --no-such-flag"):
        check("answer -m x --no-such-flag")
    with pytest.raises(AssertionError, match="no command 'hftool finetune sft2'"):
        parse(["finetune", "sft2"])
    with pytest.raises(HftoolError, match="--top-k=0 must be at least 1"):
        check("answer -m x --top-k 0")
    with pytest.raises(AssertionError, match="train.max_stepz"):
        check("pretrain -r gpt2-tiny train.max_stepz=3")
    assert documented_commands("```bash\nhftool recipes cp gpt2-small my.yaml && hftool pretrain -r my.yaml \\\n"
                               "    train.max_steps=1  # a comment\n```") == [
        "recipes cp gpt2-small my.yaml", "pretrain -r my.yaml train.max_steps=1"]


def test_the_serve_page_names_every_endpoint_flag_and_metric_the_server_has():
    """docs/serve.md keeps up with the server: each route the app serves, each flag of ``hftool serve`` and each
    metric ``/metrics`` exports is named on the page."""
    from hftool.cli import app
    from hftool.serve.app import Served, create_app
    from hftool.serve.metrics import Metrics

    page = (REPO / "docs" / "serve.md").read_text(encoding="utf-8")
    routes = set(create_app(Served(name="x", metrics=Metrics())).openapi()["paths"])
    flags = {option for param in typer.main.get_command(app).commands["serve"].params
             for option in param.opts if option.startswith("--") and option != "--help"}
    metrics = {line.split()[2] for line in Metrics().render().splitlines() if line.startswith("# TYPE")}
    assert {"/v1/completions", "/v1/embeddings", "/metrics"} <= routes and "--prefill-chunk" in flags
    missing = sorted(name for name in routes | flags | metrics if f"`{name}" not in page and f" {name}" not in page)
    assert not missing, f"docs/serve.md does not name {missing}"
