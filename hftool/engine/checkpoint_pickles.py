"""Loading a sharded checkpoint (FSDP, DeepSpeed) without letting it run code.

Sharded engines keep their model and optimizer shards in their libraries' own formats, written and read by
Accelerate; those formats hold pickles, so before loading one every raw pickle in it (DCP's ``.metadata``) is
checked against :data:`DCP_METADATA_GLOBALS`, and every ``torch.load`` during the load is forced to
``weights_only`` (see :func:`check_pickles`, :func:`weights_only_loads`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hftool.engine.checkpoint_files import CheckpointError, content_files

_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
# What a torch.distributed.checkpoint ``.metadata`` pickle references (listed from a real one, torch 2.13);
# tensors are never pickled there, so nothing else is needed. torch dtypes are allowed by type, not by name.
DCP_METADATA_GLOBALS = frozenset({
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    *((module, name) for module in ("pathlib", "pathlib._local") for name in ("PosixPath", "WindowsPath")),
    ("collections", "OrderedDict"),
    *(("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "bytearray")),
})


class _DisallowedGlobal(pickle.UnpicklingError):
    """A pickle names a callable outside :data:`DCP_METADATA_GLOBALS`."""


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the names a DCP ``.metadata`` holds; any other raises before it is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in DCP_METADATA_GLOBALS or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise _DisallowedGlobal(f"it holds a pickle that calls {module}.{name}, which a checkpoint never needs")


def _is_zip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _is_plain_format(path: Path) -> bool:
    """Files no raw ``pickle.load`` reads: JSON, safetensors, and zip archives (torch.save's format, and DCP's
    ``.distcp`` shards, a row of them; torch.load in a sharded load is forced to weights_only)."""
    return path.suffix in (".json", ".safetensors") or _is_zip(path)


def check_pickles(folder: Path) -> None:
    """Refuse a checkpoint holding a raw pickle (DCP's ``.metadata``, read with ``pickle.load``) that names
    any callable outside :data:`DCP_METADATA_GLOBALS`.

    Each such file is unpickled with :class:`_MetadataUnpickler`, which stops at the first disallowed name, so
    nothing outside the list runs. A file that is not a pickle at all (a text file such as DeepSpeed's
    ``latest``) fails to parse before reaching any name and passes: ``pickle.load`` would fail on it the same way.
    """
    for path in content_files(folder):
        if _is_plain_format(path):
            continue
        with path.open("rb") as fh:
            try:
                while fh.tell() < path.stat().st_size:  # legacy torch.save files are several pickles in a row
                    _MetadataUnpickler(fh).load()
            except _DisallowedGlobal as exc:
                raise CheckpointError(f"{path} is not a valid hftool checkpoint file: {exc}") from None
            except Exception:  # noqa: BLE001 - not (or no longer) a pickle: no loader runs code from it either
                continue


def _file_with_global(folder: Path, name: str) -> Path:
    """The torch.save file in ``folder`` whose pickle names ``name`` (the folder itself if none does)."""
    for path in content_files(folder):
        if path.suffix in (".json", ".safetensors") or not _is_zip(path):
            continue
        with contextlib.suppress(Exception):
            if name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
                return path
    return folder


@contextlib.contextmanager
def weights_only_loads(folder: Path) -> Iterator[None]:
    """Force every ``torch.load`` in the block to ``weights_only`` (even one that asks for
    ``weights_only=False``, as Accelerate, DeepSpeed and DCP do), and turn a refused pickle into one line naming
    the file. The environment is restored afterwards."""
    saved = {key: os.environ.pop(key, None) for key in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    except pickle.UnpicklingError as exc:
        found = _UNSAFE_GLOBAL.search(str(exc))
        name = found.group(1) if found else None
        path = _file_with_global(folder, name) if name else folder
        reason = f"it holds a pickle that calls {name}" if name else "it holds a pickle that is not plain weights"
        raise CheckpointError(f"{path} is not a valid hftool checkpoint file: {reason}, which a checkpoint never "
                              "needs") from None
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
