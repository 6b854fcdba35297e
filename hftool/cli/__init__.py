"""The ``hftool`` command line: a thin Typer layer over the library.

Each command lives in its own module here and only parses arguments, then calls into the library.
Heavy imports (torch, transformers) happen inside the commands so ``hftool --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from hftool.errors import HftoolError

app = typer.Typer(
    name="hftool",
    help="One CLI for the life of a transformer: pretrain, fine-tune, generate and explain.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", "-v",
                                          help="Show the libraries' own warnings and load reports too.")) -> None:
    """hftool shows its own progress and summaries; transformers', datasets' and accelerate's chatter only
    with --verbose."""
    from hftool.verbosity import configure

    configure(verbose)


def _register() -> None:
    from hftool.cli import (
        adapters,
        answer,
        classify,
        env,
        evaluate,
        explain,
        finetune,
        generate,
        memory,
        pretrain,
        recipes,
        serve,
        tag,
        tokenizer,
    )

    app.command("env", help=env.env.__doc__)(env.env)
    app.add_typer(recipes.app, name="recipes")
    app.add_typer(tokenizer.app, name="tokenizer")
    app.command("pretrain", help=pretrain.pretrain.__doc__)(pretrain.pretrain)
    app.add_typer(finetune.app, name="finetune")
    app.add_typer(evaluate.app, name="evaluate")
    app.add_typer(adapters.app, name="adapters")
    app.command("answer", help=answer.answer.__doc__)(answer.answer)
    app.command("classify", help=classify.classify.__doc__)(classify.classify)
    app.command("tag", help=tag.tag.__doc__)(tag.tag)
    app.add_typer(explain.app, name="explain")
    app.command("estimate-memory", help=memory.estimate_memory.__doc__)(memory.estimate_memory)
    app.command("generate", help=generate.generate.__doc__)(generate.generate)
    app.command("summarize", help=generate.summarize.__doc__)(generate.summarize)
    app.command("translate", help=generate.translate.__doc__)(generate.translate)
    app.command("serve", help=serve.serve.__doc__)(serve.serve)


_register()


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        app()
    except HftoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
