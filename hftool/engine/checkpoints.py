"""Saving and resuming a run's training state: checkpoints that are verified before use and rotated safely.

A checkpoint folder ``step-NNNNNNNN`` holds only safetensors and JSON (the files are described in
:mod:`hftool.engine.checkpoint_files`); it is written to a temporary folder, given a manifest, marked
``COMPLETE`` last and renamed into place.

Resuming verifies the newest complete checkpoint against its manifest and checks that each file parses;
one that fails is skipped, with the reason, and moved aside (``rejected-step-...``) so rotation never keeps it
in place of a good one. In a claimed output folder every checkpoint file is fingerprinted in the folder's manifest
once the checkpoint is complete, and rotation removes only files that still match (:mod:`hftool.outputs`).
Sharded engines (FSDP, DeepSpeed) keep their model and optimizer shards in their libraries' own formats, written
and read by Accelerate, and loaded only after the checks of :mod:`hftool.engine.checkpoint_pickles`.

:class:`Checkpointer` saves and resumes a run across all its processes.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from hftool.engine.checkpoint_files import (
    COMPLETE_MARKER,
    STATE_FILE,
    CheckpointError,
    load_model,
    load_optimizer,
    load_rng,
    load_scaler,
    load_scheduler,
    read_json,
    save_model,
    save_optimizer,
    save_rng,
    save_scaler,
    save_scheduler,
    verify_checkpoint,
    write_json,
    write_manifest,
    write_synced,
    writing,
)
from hftool.engine.checkpoint_pickles import check_pickles, weights_only_loads
from hftool.errors import HftoolError
from hftool.outputs import fingerprint, is_claimed, record, remove_owned, rename_recorded

CHECKPOINT_PREFIX = "step-"
TMP_PREFIX = f".tmp-{CHECKPOINT_PREFIX}"
REJECTED_PREFIX = f"rejected-{CHECKPOINT_PREFIX}"
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


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
        self.out = folder.parent  # the run's output folder, whose manifest records the checkpoint files

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    def _tracked(self) -> bool:
        return self.is_main and is_claimed(self.out)

    def _remove(self, checkpoint: Path) -> list[str]:
        """Delete a checkpoint of this folder; in a claimed folder only the files hftool wrote and that still
        match, returning what was kept."""
        if not self._tracked():
            shutil.rmtree(checkpoint, ignore_errors=True)
            return []
        return remove_owned(self.out, self._rel(checkpoint))

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
                if self._tracked():
                    record(self.out, self._rel(tmp))
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
                known = write_manifest(tmp)
                write_synced(tmp / COMPLETE_MARKER, f"step {step}\n")
                kept = self._remove(final) if final.exists() else []
                if kept:
                    raise HftoolError(f"{final} holds files hftool did not write or that changed "
                                      f"({', '.join(kept[:5])}); move them away and resume")
                os.replace(tmp, final)
                if self._tracked():
                    name = self._rel(final)
                    fingerprint(self.out, name, done=[self._rel(tmp)],
                                known={f"{name}/{k}": v for k, v in known.items()})
                for old in complete_checkpoints(self.folder)[:-self.keep]:
                    kept = self._remove(old)
                    if kept:
                        self.say(f"warning: kept {old}: it holds files hftool did not write or that changed "
                                 f"({', '.join(kept[:5])})")
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
                moved = set_aside(checkpoint)
                if self._tracked():
                    rename_recorded(self.out, self._rel(checkpoint), self._rel(moved))
                self.say(f"moved the skipped checkpoint to {moved}")
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
