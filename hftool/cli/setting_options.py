"""Command-line options built from schema fields, so a flag's default, bound and help are declared once.

A schema dataclass (:mod:`hftool.schemas`) declares each field with ``hftool.schemas.fields.setting`` (flag,
help, bound). :func:`option` makes one field a Typer option that shows its default and holds the typed value to
its bound while parsing (:class:`Checked`). :func:`options` makes recipe-overlay options instead: default None,
so only the flags a user typed override the recipe, whose ``validate`` then checks the merged values with the
same bound. Every option made here carries its field (``schema_field``), which tests/test_schemas.py follows.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

import typer

from hftool.errors import HftoolError
from hftool.schemas.fields import Bound, default_of, field_named

TYPE_WORDS = {int: ("integer", "is not a whole number"), float: ("float", "is not a number"), str: ("text", "")}


class Checked:
    """Typer's parser for one flag: the typed text as the field's type, held to ``bound``, or an
    ``HftoolError`` (``--batch-size=0 must be at least 1``) instead of click's usage box."""

    def __init__(self, flag: str, bound: Bound, kind: type):
        self.flag, self.bound, self.kind = flag, bound, kind
        self.__name__, self.not_a_value = TYPE_WORDS[kind]  # __name__: what Typer calls the type

    def __call__(self, value: Any) -> Any:
        try:
            typed = self.kind(value)
        except (TypeError, ValueError):
            raise HftoolError(f"{self.flag}={value} {self.not_a_value}") from None
        if not self.bound.holds(typed):
            raise HftoolError(f"{self.flag}={typed} {self.bound.why}")
        return typed


def option(settings: type, name: str) -> Any:
    """The Typer option of the field ``name`` of ``settings``: its default shown, its bound held while parsing."""
    item = field_named(settings, name)
    default = default_of(settings, name)
    return _option(item, typing.get_type_hints(settings)[name], default, shown=default is not None,
                   help=item.metadata["help"], checked=True)


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
        item = fields[name]
        shown = name in show
        info = _option(item, hints[name], getattr(defaults, name) if shown else None, shown=shown,
                       help=help.get(name, item.metadata["help"]), checked=False)
        cli_type = str if item.metadata["parse"] else _cli_type(hints[name])
        parameters.append(inspect.Parameter(item.metadata["param"] or name, inspect.Parameter.KEYWORD_ONLY,
                                            default=info, annotation=cli_type))
    return parameters


def _option(item: dataclasses.Field, hint: Any, default: Any, *, shown: bool, help: str, checked: bool) -> Any:
    """The Typer option of ``item``; ``checked`` parses it with its bound (ints also show it: ``[x>=1]``)."""
    meta = item.metadata
    flags = [*meta["flag"].split(" "), *([meta["short"]] if meta["short"] else [])]
    extra: dict[str, Any] = {}
    bound, kind = meta["bound"], _item_type(hint)
    if checked and bound is not None and kind in TYPE_WORDS:
        extra["parser"] = Checked(flags[0], bound, kind)
        if kind is int:
            extra.update(min=bound.low, max=bound.high)
    info = typer.Option(default, *flags, show_default=shown, help=help, **extra)
    info.schema_field = item  # where the option came from: tests/test_schemas.py checks the two agree
    return info


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


def _item_type(hint: Any) -> Any:
    """The type of one typed value: a repeatable option's item type, else the option's."""
    hint = _cli_type(hint)
    return typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
