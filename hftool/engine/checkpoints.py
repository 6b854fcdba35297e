"""Training checkpoints that cannot run code, are verified before use, and fail cleanly when the disk is full.

A checkpoint folder ``step-NNNNNNNN`` holds only safetensors and JSON, never a pickle:

* ``model.safetensors``: the weights (tied weights stored once, as transformers does);
* ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors, and its param groups and scalars;
* ``scheduler.json``: the LR scheduler's state (plain numbers; its schedule functions are rebuilt by the run);
* ``rng-R.safetensors`` + ``rng-R.json``: process ``R``'s torch, CUDA, Python and NumPy random states;
* ``scaler.json`` (fp16 only), ``trainer_state.json`` (step, epoch, batch settings);
* ``manifest.json``: size and sha256 of every other file, written before ``COMPLETE``, the marker written last.

Resuming verifies the newest complete checkpoint against its manifest and checks that each file parses;
one that fails is skipped, with the reason, and moved aside (``rejected-step-...``) so rotation never keeps it
in place of a good one. Sharded engines (FSDP, DeepSpeed) keep their model and optimizer shards in their
libraries' own formats, written and read by Accelerate; those formats hold pickles, so before loading one every
raw pickle in it (DCP's ``.metadata``) is checked against :data:`DCP_METADATA_GLOBALS`, and every ``torch.load``
during the load is forced to ``weights_only`` (see :func:`check_pickles`, :func:`weights_only_loads`).

:class:`Checkpointer` saves and resumes a run across all its processes. The file is one cohesive thing, the
checkpoint from its format to its use, hence its length.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import safe_open

from hftool.errors import HftoolError

CHECKPOINT_PREFIX = "step-"
TMP_PREFIX = f".tmp-{CHECKPOINT_PREFIX}"
REJECTED_PREFIX = f"rejected-{CHECKPOINT_PREFIX}"
COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "storagefull", "quota exceeded")
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


class CheckpointError(HftoolError):
    """A checkpoint file is missing, altered or not what hftool wrote; the message names it."""


class DiskFullError(HftoolError):
    """The disk filled up while hftool wrote a file; the message names the device and the file."""


# ---- finding checkpoints ------------------------------------------------------------------------------
def checkpoint_step(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Checkpoints whose marker was written, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.iterdir()
             if checkpoint_step(p) is not None and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=checkpoint_step)


def remove_partial_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Delete the temporary folders of checkpoints whose writing never finished (a crash or a full disk)."""
    if not checkpoint_dir.is_dir():
        return []
    partial = sorted(p for p in checkpoint_dir.iterdir() if p.is_dir() and p.name.startswith(TMP_PREFIX))
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def choose_checkpoint(checkpoint_dir: Path, strict: bool, say) -> Path | None:
    """The newest complete checkpoint that verifies; each skipped one is reported through ``say``.

    With ``strict`` the first one that fails is refused instead. Returns None when there is none at all,
    and refuses when there are some but none verifies (starting afresh would discard them).
    """
    found = complete_checkpoints(checkpoint_dir)
    skipped: list[tuple[Path, CheckpointError]] = []
    for checkpoint in reversed(found):
        try:
            verify_checkpoint(checkpoint)
            return checkpoint
        except CheckpointError as exc:
            if strict:
                raise CheckpointError(f"{exc}; refusing to resume (--strict-resume); drop --strict-resume to fall "
                                      "back to the newest checkpoint that verifies") from None
            say(f"warning: skipped checkpoint {checkpoint.name}: {exc}")
            skipped.append((checkpoint, exc))
    if skipped:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir} verifies (newest: {skipped[0][1]}); "
                              "start afresh with --overwrite or another train.output_dir")
    return None


def set_aside(checkpoint: Path) -> Path:
    """Rename a checkpoint that failed verification so it is neither resumed from nor kept by rotation."""
    target = checkpoint.with_name(REJECTED_PREFIX + checkpoint.name[len(CHECKPOINT_PREFIX):])
    n = 1
    while target.exists():
        n += 1
        target = checkpoint.with_name(f"{REJECTED_PREFIX}{checkpoint.name[len(CHECKPOINT_PREFIX):]}-{n}")
    os.replace(checkpoint, target)
    return target


# ---- verification -------------------------------------------------------------------------------------
def _files(folder: Path) -> list[Path]:
    skip = {MANIFEST_FILE, COMPLETE_MARKER}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in skip)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record the size and sha256 of every file of the checkpoint (the marker and the manifest aside)."""
    entries = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
               for p in _files(folder)}
    write_json(folder / MANIFEST_FILE, {"files": entries})


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
    unlisted = [p for p in _files(folder) if p.relative_to(folder).as_posix() not in entries]
    if unlisted:
        raise CheckpointError(f"{unlisted[0]} is not in the checkpoint's manifest")
    for path in _files(folder):
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
    for path in _files(folder):
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
    for path in _files(folder):
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


# ---- the training state -------------------------------------------------------------------------------
def save_model(model: torch.nn.Module, folder: Path) -> None:
    path = folder / MODEL_FILE
    with writing(path):
        safetensors.torch.save_model(model, str(path))


def load_model(model: torch.nn.Module, folder: Path) -> None:
    path = folder / MODEL_FILE
    with reading(path):
        safetensors.torch.load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))


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


# ---- saving and resuming a run across its processes -----------------------------------------------------
class Checkpointer:
    """Saves and resumes a run's training state on every process, through the run's Accelerator.

    ``settings`` (processes, batch size, accumulation, seed) are stored in each checkpoint; resuming with other
    values warns, or refuses with ``strict``, because the data order and so the results differ.
    """

    def __init__(self, accelerator, folder: Path, keep: int, settings: dict[str, int], sharded: bool):
        self.accelerator, self.folder, self.keep = accelerator, folder, keep
        self.settings, self.sharded = settings, sharded
        self.is_main = accelerator.is_main_process
        self.say = accelerator.print

    def save(self, step: int, epoch: int, model, optimizer, scheduler) -> Path:
        """Write a checkpoint atomically: temporary folder, manifest, marker last, rename, then rotate old ones.

        A full disk (on any process) removes the temporary folder, keeps every earlier checkpoint and ends the
        run with one line naming the device and the file.
        """
        final = self.folder / f"{CHECKPOINT_PREFIX}{step:08d}"
        tmp = self.folder / f"{TMP_PREFIX}{step:08d}"
        error = None
        try:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                with writing(tmp):
                    tmp.mkdir(parents=True)
        except HftoolError as exc:
            error = exc
        self._raise_if_any_failed(error, tmp)
        try:
            self._write_training_state(tmp, model, optimizer, scheduler)
        except HftoolError as exc:
            error = exc
        self._raise_if_any_failed(error, tmp)
        try:
            if self.is_main:
                write_json(tmp / STATE_FILE, {"global_step": step, "epoch": epoch, **self.settings})
                write_manifest(tmp)
                write_synced(tmp / COMPLETE_MARKER, f"step {step}\n")
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                for old in complete_checkpoints(self.folder)[:-self.keep]:
                    shutil.rmtree(old, ignore_errors=True)
        except HftoolError as exc:
            error = exc
        self._raise_if_any_failed(error, tmp)
        return final

    def resume(self, model, optimizer, scheduler, strict: bool) -> int | None:
        """Load the newest checkpoint that verifies and return its step; None when there is none."""
        checkpoint = self._choose(strict)
        if checkpoint is None:
            self.say(f"no complete checkpoint in {self.folder}; starting from step 0")
            return None
        state = read_json(checkpoint / STATE_FILE)
        self._check_compatible(state, strict)
        self._load(checkpoint, model, optimizer, scheduler)
        self.say(f"resumed from {checkpoint} (step {state['global_step']})")
        return state["global_step"]

    def _write_training_state(self, folder: Path, model, optimizer, scheduler) -> None:
        """Model, optimizer and scheduler (main process), and every process's random states."""
        if self.sharded:  # the shards are the libraries' own format; Accelerate writes them
            self.accelerator.save_state(str(folder))
        elif self.is_main:
            save_model(self.accelerator.unwrap_model(model), folder)
            save_optimizer(optimizer, folder)
        if self.is_main:
            save_scheduler(scheduler, folder)
            if self.accelerator.scaler is not None:
                save_scaler(self.accelerator.scaler, folder)
        save_rng(folder, self.accelerator.process_index)

    def _raise_if_any_failed(self, error: HftoolError | None, tmp: Path) -> None:
        """Every process learns whether any failed, so none waits forever for one that stopped."""
        flag = torch.tensor(0.0 if error is None else 1.0).to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag.item() <= 0:
            return
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise error or HftoolError(f"checkpoint {tmp.name} not saved: another process failed writing it")

    def _choose(self, strict: bool) -> Path | None:
        """The newest checkpoint that verifies (see :func:`choose_checkpoint`); skipped ones are moved aside by
        the main process once every process has made the same choice."""
        if self.is_main:
            for partial in remove_partial_checkpoints(self.folder):
                self.say(f"removed {partial}, a checkpoint whose writing never finished")
        self.accelerator.wait_for_everyone()
        chosen = choose_checkpoint(self.folder, strict, self.say)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            newer = [p for p in complete_checkpoints(self.folder)
                     if chosen is None or checkpoint_step(p) > checkpoint_step(chosen)]
            for checkpoint in newer:
                self.say(f"moved the skipped checkpoint to {set_aside(checkpoint)}")
        self.accelerator.wait_for_everyone()
        return chosen

    def _load(self, folder: Path, model, optimizer, scheduler) -> None:
        if self.sharded:
            check_pickles(folder)
            with weights_only_loads(folder):
                self.accelerator.load_state(str(folder))
        else:
            load_model(self.accelerator.unwrap_model(model), folder)
            load_optimizer(optimizer, folder)
        load_scheduler(scheduler, folder)
        if self.accelerator.scaler is not None:
            load_scaler(self.accelerator.scaler, folder)
        load_rng(folder, self.accelerator.process_index)

    def _check_compatible(self, state: dict, strict: bool) -> None:
        changed = [f"{k}: {state.get(k)} -> {v}" for k, v in self.settings.items() if state.get(k) != v]
        if not changed:
            return
        message = "resuming with changed settings (" + "; ".join(changed) + "): data order and results differ"
        if strict:
            raise HftoolError(message + "; drop --strict-resume to accept, or restore the settings")
        self.say(f"warning: {message}")
