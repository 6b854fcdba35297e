"""Typed recipes: YAML (``yaml.safe_load`` only) into nested dataclasses, with ``key.path=value`` overrides.

Every command that takes a recipe uses the same override style::

    hftool pretrain --recipe gpt2-tiny train.max_steps=50 model.n_layer=2

An unknown key is refused with the closest valid key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from hftool.errors import HftoolError

T = TypeVar("T")


def _packaged_recipes() -> Path:
    """The recipes shipped in the package (``hftool.recipe_files``, mapped onto the top-level ``recipes/`` folder).

    Found through ``importlib.resources`` so an editable install, ``pip install .`` and the wheel all read the
    same files; wheels install unzipped, so the resource folder is a real directory.
    """
    from importlib.resources import files

    return Path(str(files("hftool.recipe_files")))


RECIPES_DIR = Path(os.environ["HFTOOL_RECIPES"]) if os.environ.get("HFTOOL_RECIPES") else _packaged_recipes()
HOME = "~"  # an override value kept as text: the home directory for a path, null for any other key
ACCELERATE_FOLDER = "accelerate"  # accelerate launch configs ship beside the recipes but are not recipes
# command name -> "module:Class" of its recipe schema (imported by name, on use, by hftool.recipes.schema_for).
SCHEMAS: dict[str, str] = {
    "pretrain": "hftool.runs.pretrain_recipe:PretrainRecipe",
    "finetune squad": "hftool.runs.squad:SquadRecipe",
    "finetune classify": "hftool.tasks.classify:ClassifyRecipe",
    "finetune ner": "hftool.tasks.ner:NerRecipe",
    "finetune sft": "hftool.runs.sft_recipe:SftRecipe",
    "generate": "hftool.generation.settings:GenerateRecipe",
}


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (with the mild coercions YAML needs)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if (value is None or value == HOME) and type(None) in options and str not in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where, source)
            except HftoolError as exc:
                errors.append(str(exc))
        raise HftoolError(errors[0] if errors else f"{source}: {where} cannot be null")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads a bare no/yes/off/on as a boolean
            value = "yes" if value else "no"
        if value not in get_args(tp):
            choices = ", ".join(str(c) for c in get_args(tp))
            raise HftoolError(f"{source}: {where}={value!r} is not one of: {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            value = [value]
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise HftoolError(f"{source}: {where} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _from_mapping(tp, value, where, source)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)  # YAML reads 3e-4 as a string
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise HftoolError(f"{source}: {where}={value!r} must be a finite number")
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise HftoolError(f"{source}: {where}={value!r} should be of type {_describe(tp)}")


def _from_mapping(cls: type[T], data: Any, where: str, source: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HftoolError(f"{source}: {where or 'the recipe'} must be a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise HftoolError(f"{source}: unknown key '{full}'{_suggest(key, fields, where)}")
        kwargs[key] = _coerce(value, hints[key], full, source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise HftoolError(f"{source}: {where or 'recipe'}: {exc}") from None


def _suggest(key: str, fields: typing.Iterable[str], where: str) -> str:
    close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{where + '.' if where else ''}{close[0]}'?"
    return f"; valid keys here: {', '.join(fields)}"


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=1e-4", "model.n_layer=2"]`` → nested dict, values parsed as YAML scalars."""
    nested: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise HftoolError(f"override '{item}' must look like section.key=value, e.g. train.max_steps=100")
        try:
            # YAML reads a bare ~ as null; on a command line it is the home directory (null for non-path keys)
            value = HOME if raw.strip() == HOME else yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise HftoolError(f"override '{item}': '{part}' is a value, not a section")
        node[parts[-1]] = value
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def find_recipe(name_or_path: str, prefer: str | None = None) -> Path:
    """A path to a YAML file, or a recipe name such as ``gpt2-tiny`` or ``pretrain/gpt2-tiny``.

    A bare name found in several folders (``pretrain/bloom-560m``, ``generate/bloom-560m``) resolves to the
    one in the folder ``prefer`` (the command being run); without it, that is an error listing them.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    candidates = sorted(RECIPES_DIR.glob(f"**/{name_or_path}.yaml")) if RECIPES_DIR.is_dir() else []
    if not name_or_path.startswith(ACCELERATE_FOLDER + "/"):
        candidates = [c for c in candidates if c.relative_to(RECIPES_DIR).parts[0] != ACCELERATE_FOLDER]
    if len(candidates) > 1 and prefer:
        own = [c for c in candidates if c.relative_to(RECIPES_DIR).parts[0] == prefer]
        candidates = own if len(own) == 1 else candidates
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(str(c.relative_to(RECIPES_DIR).with_suffix("")) for c in candidates)
        raise HftoolError(f"--recipe {name_or_path} is ambiguous: {names}")
    known = [str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in list_recipes()]
    close = difflib.get_close_matches(name_or_path, known + [Path(k).name for k in known], n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "; see 'hftool recipes ls'"
    raise HftoolError(f"--recipe {name_or_path}: no such file or recipe{hint}")


def list_recipes() -> list[Path]:
    """Every recipe (not the accelerate configs), sorted."""
    return [p for p in list_files() if p.relative_to(RECIPES_DIR).parts[0] != ACCELERATE_FOLDER]


def list_accelerate_configs() -> list[Path]:
    return [p for p in list_files() if p.relative_to(RECIPES_DIR).parts[0] == ACCELERATE_FOLDER]


def list_files() -> list[Path]:
    return sorted(RECIPES_DIR.glob("**/*.yaml")) if RECIPES_DIR.is_dir() else []


def copy_new_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file and a link that fails if ``target`` exists."""
    if target.exists():
        raise HftoolError(f"{target}: already exists; choose another destination (nothing was overwritten)")
    if not target.parent.is_dir():
        raise HftoolError(f"{target}: folder {target.parent} does not exist; create it first")
    data = source.read_bytes()
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        temp.write_bytes(data)
        os.link(temp, target)  # atomic and refuses an existing file, unlike a rename
    except FileExistsError:
        raise HftoolError(f"{target}: already exists; choose another destination (nothing was overwritten)") from None
    except OSError:  # a file system without hard links: exclusive create, so still never an overwrite
        with open(target, "xb") as fh:
            fh.write(data)
    finally:
        temp.unlink(missing_ok=True)


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping with ``safe_load``: tags such as ``!!python/object`` are refused, never run."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise HftoolError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise HftoolError(f"{path}:{line}: YAML tag refused ({exc.problem}); recipes are plain data, "
                          "remove the tag") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else "?"
        raise HftoolError(f"{path}:{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HftoolError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def build_config(cls: type[T], data: dict, overrides: list[str] | None = None, source: str = "recipe") -> T:
    """Merge command-line overrides into ``data`` and check everything against ``cls``."""
    merged = _merge(data, parse_overrides(overrides or []))
    try:
        return _from_mapping(cls, merged, "", source)
    except HftoolError:
        if not overrides or not _holds(cls, data, source):
            raise
    return _from_mapping(cls, merged, "", "command-line override")  # raises, blaming the override, not the file


def _holds(cls: type, data: dict, source: str) -> bool:
    try:
        _from_mapping(cls, data, "", source)
    except HftoolError:
        return False
    return True


def load_recipe(cls: type[T], name_or_path: str | None, overrides: list[str] | None = None) -> T:
    """Load a recipe file (or the schema's defaults when ``name_or_path`` is None) with overrides."""
    if name_or_path is None:
        return build_config(cls, {}, overrides, source="overrides")
    path = find_recipe(name_or_path, prefer=_recipe_folder(cls))
    data = read_yaml(path)
    data.pop("command", None)
    return build_config(cls, data, overrides, source=str(path))


def _recipe_folder(schema: type) -> str | None:
    """The recipes/ folder of the command whose schema is ``schema`` (``PretrainRecipe`` → ``pretrain``)."""
    target = f"{schema.__module__}:{schema.__qualname__}"
    return next((command.split()[0] for command, path in SCHEMAS.items() if path == target), None)


def recipe_command(path: Path) -> str:
    command = read_yaml(path).get("command")
    if not isinstance(command, str):
        raise HftoolError(f"{path}: missing top-level 'command:' (e.g. command: pretrain)")
    return command


def dump_yaml(config: Any, command: str) -> str:
    return yaml.safe_dump({"command": command, **to_dict(config)}, sort_keys=False)
