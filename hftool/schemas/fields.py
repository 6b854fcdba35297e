"""How a schema field is declared: its default, its ``Bound`` and its one-line help, once.

A schema is a dataclass. A field made with :func:`setting` also carries its command-line flag, so the CLI builds
the option from it (``hftool.cli.setting_options``) and :func:`check_fields` holds recipe values and flags to
the same bound with the same words. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from hftool.errors import HftoolError

MixedPrecision = Literal["no", "fp16", "bf16", "auto"]  # train.mixed_precision and evaluate's --mixed-precision
MIXED_PRECISIONS: tuple[str, ...] = get_args(MixedPrecision)


@dataclass(frozen=True)
class Bound:
    """What values a setting accepts, and the words its error gives otherwise.

    ``low``/``high`` bound a number (``low_open``: ``low`` itself is refused); ``choices`` lists the accepted
    values; ``when`` names a boolean setting that must be on for the bound to apply (temperature only matters
    when sampling). ``None`` (left unset) always passes.
    """

    why: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    when: str | None = None

    def holds(self, value: Any) -> bool:
        if value is None:
            return True
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


def setting(default: Any = dataclasses.MISSING, *, flag: str, help: str, short: str | None = None,
            bound: Bound | None = None, param: str | None = None, parse: Callable[[str], Any] | None = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that also declares its command-line option: ``flag`` (``--top-p``, or a
    ``--on/--off`` pair), ``short`` alias, ``help``, ``bound``; ``param`` names the command's parameter when
    it differs from the field (``--model`` sets ``model.name``) and ``parse`` turns the text typed on the
    command line into the field's value when the field is not a plain str/int/float/bool/list
    (``--max-memory cpu=2GiB`` into a mapping)."""
    metadata = {"flag": flag, "short": short, "help": help, "bound": bound, "param": param, "parse": parse}
    return field(default=default, default_factory=default_factory, metadata=metadata)


class SettingError(HftoolError):
    """A setting outside its bound. ``str()`` names the command-line flag; ``field``, ``value`` and ``why`` let
    another front end (the server's request fields) word the same refusal in its own names."""

    def __init__(self, item: dataclasses.Field, value: Any, why: str):
        shown = value if not isinstance(value, list) else ",".join(map(repr, value))
        super().__init__(f"{item.metadata['flag']} {shown}: {why}")
        self.field, self.value, self.why = item.name, value, why


def check_fields(settings: Any) -> None:
    """Check every field of ``settings`` against its ``Bound``, and floats for finiteness, in field order."""
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            refuse(item, value, "must be a finite number")
    for item in dataclasses.fields(settings):
        bound = item.metadata.get("bound")
        if bound and (bound.when is None or getattr(settings, bound.when)) and not bound.holds(
                getattr(settings, item.name)):
            refuse(item, getattr(settings, item.name), bound.why)




def at_least(low: int) -> Bound:
    """The bound of a count: ``low`` or more, worded as every whole-number flag words it."""
    return Bound(f"must be at least {low}", low=low)


def one_of(choices: tuple) -> Bound:
    return Bound(f"is not one of: {', '.join(map(str, choices))}", choices=choices)


def field_named(settings: Any, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(settings) if f.name == name)


def default_of(settings: type, name: str) -> Any:
    """A field's default (its factory's value for a list or a mapping)."""
    item = field_named(settings, name)
    return item.default_factory() if item.default is dataclasses.MISSING else item.default


def refuse(item: dataclasses.Field, value, why: str):
    raise SettingError(item, value, why)
