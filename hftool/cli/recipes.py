"""``hftool recipes``: list, show and validate the YAML recipes."""

from __future__ import annotations

from pathlib import Path

import typer

from hftool import config as cfg

app = typer.Typer(help="List, show, copy and validate recipes (YAML configs shipped in the package).\n\n"
                       "Examples:\n\n  hftool recipes ls\n\n"
                       "  hftool recipes cp gpt2-small my-gpt2.yaml && hftool pretrain -r my-gpt2.yaml",
                  no_args_is_help=True)


@app.command("ls")
def ls() -> None:
    """List every shipped recipe with its command, then the shipped accelerate configs.

    Example: hftool recipes ls
    """
    for path in cfg.list_recipes():
        name = path.relative_to(cfg.RECIPES_DIR).with_suffix("")
        typer.echo(f"{str(name):40s} hftool {cfg.recipe_command(path)} --recipe {name}")
    for path in cfg.list_accelerate_configs():
        name = path.relative_to(cfg.RECIPES_DIR).with_suffix("")
        typer.echo(f"{str(name):40s} accelerate launch --config_file {path} -m hftool ...")


@app.command("show")
def show(name: str = typer.Argument(..., help="Recipe name (gpt2-tiny, pretrain/gpt2-tiny) or a YAML path.")) -> None:
    """Print a recipe file as written.

    Example: hftool recipes show gpt2-tiny
    """
    typer.echo(cfg.find_recipe(name).read_text(encoding="utf-8"), nl=False)


@app.command("cp")
def cp(
    name: str = typer.Argument(..., help="Recipe name (gpt2-tiny, pretrain/gpt2-tiny, accelerate/fsdp)."),
    dest: Path = typer.Argument(..., help="File to write, or an existing folder to write NAME.yaml into."),
) -> None:
    """Copy a shipped recipe out for editing; an existing file is never overwritten.

    Example: hftool recipes cp gpt2-small my-gpt2.yaml && hftool pretrain -r my-gpt2.yaml
    """
    source = cfg.find_recipe(name)
    target = dest / source.name if dest.is_dir() else dest
    cfg.copy_new_file(source, target)
    typer.echo(f"wrote {target}")


@app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="YAML recipe to check."),
    overrides: list[str] = typer.Argument(None, help="Overrides to check with it, as section.key=value."),
) -> None:
    """Check a recipe against its command's schema and print the resolved config.

    Example: hftool recipes validate recipes/pretrain/gpt2-tiny.yaml train.max_steps=10
    """
    from hftool.recipes import validate_recipe

    resolved = validate_recipe(cfg.find_recipe(str(path)), overrides or [])
    typer.echo(resolved, nl=False)
    typer.echo(f"ok: {path}", err=True)
