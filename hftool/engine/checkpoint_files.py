"""The files of a training checkpoint: what each holds, how it is written and read, and its manifest.

A checkpoint folder holds only safetensors and JSON, never a pickle:

* ``model.safetensors``: the weights (tied weights stored once, as transformers does);
* ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors, and its param groups and scalars;
* ``scheduler.json``: the LR scheduler's state (plain numbers; its schedule functions are rebuilt by the run);
* ``rng-R.safetensors`` + ``rng-R.json``: process ``R``'s torch, CUDA, Python and NumPy random states;
* ``scaler.json`` (fp16 only), ``trainer_state.json`` (step, epoch, batch settings);
* ``manifest.json``: size and sha256 of every other file, written before ``COMPLETE``, the marker written last.

Every write turns a full disk into one line naming the device and the file (:func:`writing`); every read turns
a bad file into one line naming it (:func:`reading`). Choosing, saving and resuming checkpoints is
:mod:`hftool.engine.checkpoints`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import safe_open

from hftool.errors import HftoolError

COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "storagefull", "quota exceeded")


class CheckpointError(HftoolError):
    """A checkpoint file is missing, altered or not what hftool wrote; the message names it."""


class DiskFullError(HftoolError):
    """The disk filled up while hftool wrote a file; the message names the device and the file."""


# ---- verification -------------------------------------------------------------------------------------
def content_files(folder: Path) -> list[Path]:
    """Every file of the checkpoint but its manifest and marker, in a stable order."""
    skip = {MANIFEST_FILE, COMPLETE_MARKER}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in skip)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> dict[str, dict]:
    """Record the size and sha256 of every file of the checkpoint (the marker and the manifest aside); returns
    them by path inside ``folder``."""
    entries = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
               for p in content_files(folder)}
    write_json(folder / MANIFEST_FILE, {"files": entries})
    return entries


def verify_checkpoint(folder: Path) -> None:
    """Check every file against the manifest and that each safetensors and JSON file parses."""
    if not (folder / MANIFEST_FILE).is_file():
        raise CheckpointError(f"{folder / MANIFEST_FILE} is missing (written before hftool kept manifests, "
                              "or altered)")
    manifest = read_json(folder / MANIFEST_FILE)
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise CheckpointError(f"{folder / MANIFEST_FILE} lists no files")
    for name, entry in entries.items():
        path = folder / name
        if not isinstance(entry, dict) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{folder / MANIFEST_FILE} has an invalid entry {name!r}")
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise CheckpointError(f"{path} is {size} bytes, the manifest says {entry.get('size')} (truncated?)")
        if _sha256(path) != entry.get("sha256"):
            raise CheckpointError(f"{path} does not match the sha256 in its manifest (altered or corrupted)")
    unlisted = [p for p in content_files(folder) if p.relative_to(folder).as_posix() not in entries]
    if unlisted:
        raise CheckpointError(f"{unlisted[0]} is not in the checkpoint's manifest")
    for path in content_files(folder):
        if path.suffix == ".safetensors":
            _tensor_names(path)
        elif path.suffix == ".json":
            read_json(path)


# ---- writing ------------------------------------------------------------------------------------------
def device_of(path: Path) -> str:
    """The device (or, failing that, the mount point) holding ``path``: what a user frees space on."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    while not os.path.ismount(probe) and probe != probe.parent:
        probe = probe.parent
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == str(probe):
                return fields[0] if fields[0].startswith("/") else f"{probe} ({fields[0]})"
    return str(probe)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(exc).lower()  # safetensors and torch wrap the OS error in their own exceptions
    return any(marker in text for marker in _DISK_FULL_TEXT)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into one line naming the device and the file."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        target = Path(getattr(exc, "filename", None) or path)
        raise DiskFullError(f"no space left on {device_of(target)} writing {target}") from None


def write_json(path: Path, value: Any) -> None:
    with writing(path), path.open("w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with writing(path):
        safetensors.torch.save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))
        with path.open("rb") as fh:
            os.fsync(fh.fileno())


def write_synced(path: Path, text: str) -> None:
    with writing(path), path.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# ---- reading ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Any failure to read or apply ``path`` becomes one line that names it."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path} is not a valid hftool checkpoint file: {reason[:300]}") from None


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    with reading(path):
        return json.loads(path.read_text(encoding="utf-8"))


def _tensor_names(path: Path) -> list[str]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    with reading(path), safe_open(str(path), framework="pt") as fh:
        return list(fh.keys())


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    with reading(path):
        return safetensors.torch.load_file(str(path))


# ---- the training state -------------------------------------------------------------------------------
def trained_weights(model: torch.nn.Module) -> dict[str, torch.nn.Parameter] | None:
    """The weights a run with frozen ones (LoRA) trains, by name; None when every weight trains. Only those go
    into its checkpoints: the frozen ones are the base model's, read again from it on resume (a BLOOM-560m LoRA
    checkpoint is megabytes, not 2 GB)."""
    weights = dict(model.named_parameters())
    if all(w.requires_grad for w in weights.values()):
        return None
    return {name: w for name, w in weights.items() if w.requires_grad}


def save_model(model: torch.nn.Module, folder: Path) -> None:
    path = folder / MODEL_FILE
    trained = trained_weights(model)
    with writing(path):
        if trained is None:
            safetensors.torch.save_model(model, str(path))
        else:
            safetensors.torch.save_file({k: w.detach().contiguous() for k, w in trained.items()}, str(path))


def load_model(model: torch.nn.Module, folder: Path) -> None:
    path = folder / MODEL_FILE
    device = str(next(model.parameters()).device)
    trained = trained_weights(model)
    with reading(path):
        if trained is None:
            safetensors.torch.load_model(model, str(path), strict=True, device=device)
            return
        saved = safetensors.torch.load_file(str(path), device=device)
        if saved.keys() != trained.keys():
            missing, extra = sorted(trained.keys() - saved.keys()), sorted(saved.keys() - trained.keys())
            raise RuntimeError(f"it holds other trained weights than the model's (missing {missing[:2]}, "
                               f"unexpected {extra[:2]})")
        with torch.no_grad():
            for name, weight in trained.items():
                weight.copy_(saved[name])


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Tensors to safetensors, everything else (param groups, plain numbers) to JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    write_tensors(folder / OPTIMIZER_TENSORS, tensors)
    write_json(folder / OPTIMIZER_JSON, {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    tensors = read_tensors(folder / OPTIMIZER_TENSORS)
    extra = read_json(folder / OPTIMIZER_JSON)
    with reading(folder / OPTIMIZER_JSON):
        state: dict[int, dict[str, Any]] = {}
        for name, value in [*tensors.items(), *extra["scalars"].items()]:
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = value
        optimizer.load_state_dict({"state": state, "param_groups": extra["param_groups"]})


def save_rng(folder: Path, rank: int) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    write_tensors(folder / f"rng-{rank}.safetensors", tensors)
    write_json(folder / f"rng-{rank}.json", {"python": [version, list(internal), gauss],
                                             "numpy": [name, keys.tolist(), pos, has_gauss, cached]})


def load_rng(folder: Path, rank: int) -> None:
    tensors = read_tensors(folder / f"rng-{rank}.safetensors")
    plain = read_json(folder / f"rng-{rank}.json")
    with reading(folder / f"rng-{rank}.safetensors"):
        torch.set_rng_state(tensors["torch"])
        cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
    with reading(folder / f"rng-{rank}.json"):
        version, internal, gauss = plain["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = plain["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_scheduler(scheduler, folder: Path) -> None:
    """The schedule's position; its functions are rebuilt from the recipe, so none is stored."""
    state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    write_json(folder / SCHEDULER_FILE, state)


def load_scheduler(scheduler, folder: Path) -> None:
    path = folder / SCHEDULER_FILE
    state, expected = read_json(path), scheduler.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected) - {"lr_lambdas"}:
        raise CheckpointError(f"{path} does not hold the state of a {type(scheduler).__name__}")
    if "lr_lambdas" in expected:
        state["lr_lambdas"] = [None] * len(expected["lr_lambdas"])
    with reading(path):
        scheduler.load_state_dict(state)


def save_scaler(scaler, folder: Path) -> None:
    write_json(folder / SCALER_FILE, scaler.state_dict())


def load_scaler(scaler, folder: Path) -> None:
    state = read_json(folder / SCALER_FILE)
    with reading(folder / SCALER_FILE):
        scaler.load_state_dict(state)
