"""Command-line options built from typed settings, so a flag's name, help and checks are declared once.

A settings dataclass declares each field with ``hftool.schemas.generate.setting`` (flag, help, bounds).
``options`` turns fields into Typer options and ``with_options`` appends them to a command's signature; the
command takes them as ``**flags``, keyed by parameter name, and overlays the ones the user typed on its recipe.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

import typer


def options(settings: type, names: Iterable[str] | None = None, *, defaults: Any = None, show: Iterable[str] = (),
            help: dict[str, str] | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``settings`` named in ``names`` (default: every field with a flag).

    Options default to None, hidden, so that only the flags a user typed override the recipe; a field in
    ``show`` instead shows its value in ``defaults`` (a ``settings`` instance: the command's own defaults).
    ``help`` replaces a field's help for one command.
    """
    fields = {f.name: f for f in dataclasses.fields(settings) if "flag" in f.metadata}
    hints = typing.get_type_hints(settings)
    show, help = set(show), help or {}
    parameters = []
    for name in fields if names is None else names:
        meta = fields[name].metadata
        shown = name in show
        option = typer.Option(getattr(defaults, name) if shown else None,
                              *meta["flag"].split(" "), *([meta["short"]] if meta["short"] else []),
                              show_default=shown, help=help.get(name, meta["help"]))
        cli_type = str if meta["parse"] else _cli_type(hints[name])
        parameters.append(inspect.Parameter(meta["param"] or name, inspect.Parameter.KEYWORD_ONLY,
                                            default=option, annotation=cli_type))
    return parameters


def with_options(*parameters: inspect.Parameter) -> Callable:
    """Give a ``def command(..., **flags)`` these options after its own parameters (Typer reads the signature)."""
    def add(command: Callable) -> Callable:
        own = inspect.signature(command, eval_str=True).parameters.values()
        own = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
        command.__signature__ = inspect.Signature([*own, *parameters])
        return command
    return add


def given(settings_fields: Iterable[dataclasses.Field], flags: dict) -> dict:
    """The flags the user typed (not None, not an empty repeatable), by field name and parsed to field values."""
    out = {}
    for item in settings_fields:
        value = flags.get(item.metadata["param"] or item.name)
        if value is None or value == []:
            continue
        parse = item.metadata["parse"]
        out[item.name] = parse(value) if parse else value
    return out


def _cli_type(hint: Any) -> Any:
    """The type Typer parses: the field's, without None, and a Literal as its values' type (the choices are
    checked by the field's bound, with hftool's one-line error)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    return hint
