"""Output folders: hftool deletes or replaces only files whose content it wrote, never writes into what a run
reads, and lets one run at a time write a folder (docs/outputs.md).

* Ownership by content. The manifest ``.hftool-outputs.json`` records every file hftool wrote in the folder, at
  any depth, by relative path, size and sha256, taken when the write completes (:func:`fingerprint`; files that
  libraries write are fingerprinted once they are complete). Before writing, hftool records the temporary name
  it writes to as *pending* (:func:`record`), so a crash leaves nothing unaccounted for; pending names are
  hftool's temporary files and folders, which a later ``--overwrite`` removes. ``--overwrite`` removes a file
  only if it still matches its fingerprint and refuses, naming them, when anything else is there.
* Never into the input: :func:`check_not_an_input` refuses an output folder that is, holds or lies inside a
  model, tokenizer or data path the run reads (symlinks resolved).
* One run per folder: :func:`claim_output_dir` holds an exclusive ``flock`` on ``.hftool-lock`` in the folder
  for the life of the command (the kernel drops it when the process dies, so a lock file left behind is stale
  and is taken over). A run that fails before it has a checkpoint or a model releases its claim: what it wrote
  is removed and the folder is left as it was found (:func:`releases_claims`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hftool.errors import HftoolError

MANIFEST = ".hftool-outputs.json"
LOCK = ".hftool-lock"
FORMAT = 2
BOOKKEEPING = (MANIFEST, f"{MANIFEST}.tmp", LOCK)  # hftool's own records, never listed as content
# Append-only logs: a run killed after their last fingerprint may have added lines or events to them, so they are
# accepted when their first recorded-size bytes still hash to the recorded sha256 (what hftool wrote is intact).
APPEND_ONLY = ("metrics.jsonl", "tensorboard/")
SHOWN = 5  # paths listed in a refusal


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


# ---- checks that write nothing ------------------------------------------------------------------------
def check_output_dir(path: str | Path, flag: str) -> Path:
    """Refuse an output folder that is a file or lies below one, the current directory or above it, the home
    directory or ``/``."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise HftoolError(f"{flag}={path} is an existing file, not a folder; choose a folder name")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise HftoolError(f"{flag}={path}: {parent} is a file, not a folder; choose a folder name")
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise HftoolError(f"{flag}={path} is the current directory or contains it; hftool writes into a "
                          "folder of its own, so pass a new subfolder such as runs/my-run")
    if resolved == Path.home().resolve() or resolved == Path(resolved.anchor):
        raise HftoolError(f"{flag}={path} is the home or root directory; pass a folder of its own, "
                          "such as runs/my-run")
    return out


def check_output_file(path: str | Path, flag: str, overwrite: bool) -> Path:
    """Refuse an output file that is a folder, or an existing file unless ``--overwrite`` was given."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise HftoolError(f"{flag} {path} is a folder; pass a file name")
    if file.exists() and not overwrite:
        raise HftoolError(f"{flag} {path} already exists; pass --overwrite to replace it or choose another name")
    return file


Inputs = dict[str, "str | Path | list | None"]


def check_not_an_input(out: Path, flag: str, inputs: Inputs | None) -> None:
    """Refuse an output folder that is, holds or lies inside a local model, tokenizer or data path the run reads
    (symlinks resolved on both sides), before anything is written."""
    target = Path(out).expanduser().resolve()
    for input_flag, values in (inputs or {}).items():
        for value in values if isinstance(values, list | tuple) else [values]:
            if not value or not Path(value).expanduser().exists():
                continue  # a Hub id or alias: nothing local to protect
            source = Path(value).expanduser().resolve()
            if source == target:
                how = "is"
            elif source in target.parents:
                how = "is inside"
            elif target in source.parents:
                how = "holds"
            else:
                continue
            raise HftoolError(f"{flag}={out} {how} {input_flag} {value}, which this run reads; hftool never "
                              "writes into its own input: choose another output folder")


# ---- the manifest ---------------------------------------------------------------------------------------
@dataclass
class Manifest:
    """What hftool wrote in a folder: ``files`` (path -> size, sha256) and ``pending`` temporary paths.

    ``legacy`` holds the names listed by a manifest of an earlier hftool, which recorded names, not contents.
    """

    files: dict[str, dict] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    legacy: list[str] | None = None


def read_manifest(out: Path) -> Manifest | None:
    """The folder's manifest, None when it has none."""
    path = out / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise HftoolError(f"{path}: unreadable ({exc}); delete the folder's files by hand or choose another "
                          "folder") from None
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return Manifest(legacy=data)
    files = data.get("files") if isinstance(data, dict) else None
    pending = data.get("pending", []) if isinstance(data, dict) else None
    if (data.get("format") != FORMAT or not isinstance(files, dict) or not isinstance(pending, list)
            or not all(isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
                       for e in files.values())):
        raise HftoolError(f"{path}: not an hftool output manifest; choose another folder")
    return Manifest(files=files, pending=set(pending))


def _write_manifest(out: Path, manifest: Manifest) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{MANIFEST}.tmp"
    data = {"format": FORMAT, "files": dict(sorted(manifest.files.items())), "pending": sorted(manifest.pending)}
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


def _manifest(out: Path) -> Manifest:
    manifest = read_manifest(out)
    if manifest is None:
        return Manifest()
    if manifest.legacy is not None:
        raise HftoolError(_legacy_message(out))
    return manifest


def is_claimed(out: Path) -> bool:
    """Whether ``out`` was claimed by a command (it holds a manifest); the engine records its files only there."""
    return (out / MANIFEST).is_file()


def _sha256(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    left = limit
    with path.open("rb") as fh:
        while left is None or left > 0:
            block = fh.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            left = None if left is None else left - len(block)
    return digest.hexdigest()


def _files_under(out: Path, rel: str) -> Iterator[str]:
    """The files at or below ``rel`` (relative paths); symlinks are never followed."""
    path = out / rel
    if path.is_symlink() or path.is_file():
        yield rel
        return
    for root, dirs, files in os.walk(path):
        base = Path(root).relative_to(out)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            yield (base / name).as_posix()


def record(out: Path, *paths: str) -> None:
    """Record ``paths`` (relative to ``out``: hftool's temporary files and folders) as pending, before they are
    written, so a crash leaves nothing unaccounted for."""
    manifest = _manifest(out)
    if set(paths) <= manifest.pending:
        return
    manifest.pending |= set(paths)
    _write_manifest(out, manifest)


def fingerprint(out: Path, *paths: str, done: Iterable[str] = (), known: dict[str, dict] | None = None) -> None:
    """Record the size and sha256 of every file at or below ``paths`` (just written, complete), and drop the
    pending temporary paths ``done``. ``known`` holds fingerprints already computed (path -> size, sha256)."""
    manifest = _manifest(out)
    for rel in paths:
        for name in _files_under(out, rel):
            file = out / name
            if file.is_symlink():
                continue
            size = file.stat().st_size
            entry = (known or {}).get(name)
            if entry is None or entry.get("size") != size:
                entry = {"size": size, "sha256": _sha256(file)}
            manifest.files[name] = {"size": size, "sha256": entry["sha256"]}
    manifest.pending -= set(done)
    _write_manifest(out, manifest)


def rename_recorded(out: Path, old: str, new: str) -> None:
    """Follow a move of hftool's folder ``old`` to ``new`` (both relative) in the manifest."""
    manifest = _manifest(out)
    moved = {f"{new}{name[len(old):]}": entry for name, entry in manifest.files.items()
             if name == old or name.startswith(f"{old}/")}
    manifest.files = {n: e for n, e in manifest.files.items() if not (n == old or n.startswith(f"{old}/"))}
    manifest.files.update(moved)
    _write_manifest(out, manifest)


def _matches(path: Path, name: str, entry: dict) -> bool:
    """Whether ``path`` still holds what hftool wrote (an append-only log may have grown since)."""
    if path.is_symlink() or not path.is_file():
        return False
    size = path.stat().st_size
    if size == entry["size"]:
        return _sha256(path) == entry["sha256"]
    grows = name == APPEND_ONLY[0] or name.startswith(APPEND_ONLY[1:])
    return grows and size > entry["size"] and _sha256(path, entry["size"]) == entry["sha256"]


def _under(name: str, folders: Iterable[str]) -> bool:
    return any(name == f or name.startswith(f"{f}/") for f in folders)


def not_owned(out: Path, below: str = "") -> list[str]:
    """Paths (at or below ``below``) that hftool may not delete: files it did not write, named as is, and files
    that changed since it wrote them, named with ``(changed)``; hftool's pending temporary paths are its own."""
    manifest = _manifest(out)
    found = []
    for name in sorted(_files_under(out, below) if below else _files_under(out, ".")):
        name = Path(name).as_posix()
        if name in BOOKKEEPING or _under(name, manifest.pending):
            continue
        entry = manifest.files.get(name)
        if entry is None:
            found.append(name)
        elif not _matches(out / name, name, entry):
            found.append(f"{name} (changed)")
    return found


def changed_files(out: Path) -> list[str]:
    """Recorded files whose content changed since hftool wrote them (a file that is gone is not listed)."""
    manifest = _manifest(out)
    return sorted(name for name, entry in manifest.files.items()
                  if (out / name).exists() and not _matches(out / name, name, entry))


def remove_owned(out: Path, below: str = "") -> list[str]:
    """Delete what hftool owns at or below ``below`` (all of ``out`` when empty): recorded files that still match
    and pending temporary paths; folders that end up empty go too. Returns what was left (see :func:`not_owned`)."""
    manifest = _manifest(out)
    kept = not_owned(out, below)
    removed = set()
    for name in sorted(manifest.pending):
        if not below or _under(name, [below]):
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            manifest.pending.discard(name)
            removed.add(name)
    kept_names = {k.removesuffix(" (changed)") for k in kept}
    for name in sorted(manifest.files):
        if below and not _under(name, [below]):
            continue
        if name not in kept_names:
            (out / name).unlink(missing_ok=True)
            del manifest.files[name]
            removed.add(name)
    for name in sorted(removed, key=lambda n: -n.count("/")):  # emptied folders, deepest first
        parent = (out / name).parent
        while parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    _write_manifest(out, manifest)
    return kept


def _legacy_message(out: Path) -> str:
    return (f"{out / MANIFEST} was written by an earlier hftool that recorded file names, not contents, so hftool "
            "cannot tell whether those files are still the ones it wrote; move what you want to keep and delete "
            "the folder by hand, or choose another folder")


def _adopt_legacy(out: Path, manifest: Manifest) -> None:
    """Resume a folder of an earlier hftool: its listed files are taken as hftool's as they are now."""
    print(f"note: {out / MANIFEST} lists file names only (an earlier hftool); resuming takes the files it lists "
          "as hftool's, as they are now", file=sys.stderr)
    _write_manifest(out, Manifest())
    for name in manifest.legacy or []:
        if "/" not in name and (out / name).exists() and name not in BOOKKEEPING:
            fingerprint(out, name)


def entries(out: Path) -> list[str]:
    """The names in ``out`` besides hftool's bookkeeping (manifest, lock)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name not in BOOKKEEPING)


# ---- claiming a folder ----------------------------------------------------------------------------------
def check_claim(out: str | Path, flag: str, overwrite: bool, resume: bool = False, inputs: Inputs | None = None,
                what: str = "files from an earlier run", hint: str = "") -> Path:
    """Everything :func:`claim_output_dir` checks, without writing: run it before expensive work."""
    out = check_output_dir(out, flag)
    check_not_an_input(out, flag, inputs)
    names = entries(out)
    if not names:
        return out
    manifest = read_manifest(out)
    if resume:
        if manifest is not None and manifest.legacy is None:
            # the files a resume replaces sit at the top; checkpoints are verified against their own manifests
            changed = [name for name in changed_files(out) if "/" not in name]
            if changed:
                raise HftoolError(f"{flag}={out}: {_shown(changed)} changed since hftool wrote them, and --resume "
                                  "would replace them; move them away or choose another folder")
        return out
    if manifest is None:
        raise HftoolError(f"{flag}={out} already holds files hftool did not write ({_shown(names)}); hftool "
                          "writes into an empty or new folder, or one it wrote: choose another folder")
    if not overwrite:
        raise HftoolError(f"{flag}={out} already holds {what}; {hint}pass --overwrite to replace them, or choose "
                          "another folder")
    if manifest.legacy is not None:
        raise HftoolError(_legacy_message(out))
    kept = not_owned(out)
    if kept:
        raise HftoolError(f"{flag}={out} holds files hftool did not write or that changed since it wrote them "
                          f"({_shown(kept)}); --overwrite only removes hftool's own unchanged files: move those "
                          "away or choose another folder")
    return out


@dataclass
class _Claim:
    out: Path
    fd: int
    created: list[Path]  # folders the claim created, deepest first
    fresh: bool  # the run starts afresh (no earlier run continued): a failure removes what it wrote


_SCOPES: list[list[_Claim]] = []
_HELD: dict[Path, int] = {}  # folder -> lock file descriptor, for the claims of this process


def _lock(out: Path, flag: str) -> int:
    """Take the exclusive lock on ``out`` (created), refusing when a live process holds it."""
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise HftoolError(f"{flag}={out} is in use by another hftool run ({holder}); wait for it to end or "
                              "choose another folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file as we opened it: lock the new one
    stale = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    if stale:
        print(f"note: took over {path}, left by {stale}, which is no longer running", file=sys.stderr)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def _unlock(claim: _Claim) -> None:
    if _HELD.pop(claim.out.resolve(), None) is None:
        return
    (claim.out / LOCK).unlink(missing_ok=True)  # removed while still held: a waiting run re-locks the new file
    os.close(claim.fd)


def _has_lasting_output(out: Path) -> bool:
    """A complete checkpoint or a saved model: what a failed run keeps (continue it with --resume)."""
    manifest = read_manifest(out)
    return manifest is not None and manifest.legacy is None and any(
        name == "config.json" or (name.startswith("checkpoints/") and name.endswith("/COMPLETE"))
        for name in manifest.files)


def _release(claim: _Claim, failed: bool) -> None:
    """End a claim; a failed fresh run without lasting output first removes what it wrote, manifest included."""
    try:
        if failed and claim.fresh and claim.out.is_dir() and not _has_lasting_output(claim.out):
            if not remove_owned(claim.out):
                (claim.out / MANIFEST).unlink(missing_ok=True)
    finally:
        _unlock(claim)
    if failed and claim.fresh:
        for folder in claim.created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def claim_output_dir(out: str | Path, flag: str, overwrite: bool, resume: bool = False, inputs: Inputs | None = None,
                     what: str = "files from an earlier run", hint: str = "") -> Path:
    """Make ``out`` ready for a run: check it (:func:`check_claim`), lock it, and with ``--overwrite`` remove the
    earlier run's files. An empty or new folder is taken as is; one with content needs ``resume`` (continue it)
    or ``overwrite``. The lock is held until the enclosing :func:`releases_claims` ends (else the process)."""
    out = check_claim(out, flag, overwrite, resume, inputs, what, hint)
    created = [p for p in [out, *out.parents] if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    key = out.resolve()
    fd = _HELD.get(key)
    claim = _Claim(out, fd if fd is not None else _lock(out, flag), created, fresh=not (resume and entries(out)))
    _HELD[key] = claim.fd
    try:
        check_claim(out, flag, overwrite, resume, inputs, what, hint)  # again, now that no other run can write
        manifest = read_manifest(out)
        if resume and manifest is not None and manifest.legacy is not None:
            _adopt_legacy(out, manifest)
        elif entries(out) and not resume:
            remove_owned(out)
        elif manifest is None:
            _write_manifest(out, Manifest())
    except BaseException:
        _release(claim, failed=True)
        raise
    if _SCOPES:
        _SCOPES[-1].append(claim)
    return out


@contextlib.contextmanager
def claims_scope() -> Iterator[None]:
    """Claims taken inside are released on the way out; when it ends in an error, a fresh run's are undone."""
    claims: list[_Claim] = []
    _SCOPES.append(claims)
    try:
        yield
    except BaseException:
        for claim in reversed(claims):
            _release(claim, failed=True)
        raise
    else:
        for claim in reversed(claims):
            _release(claim, failed=False)
    finally:
        _SCOPES.pop()


def releases_claims(run):
    """Decorate a command's run function: the output folders it claims are released when it returns, and
    a failure before its first checkpoint leaves them as it found them (see :func:`claims_scope`)."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        with claims_scope():
            return run(*args, **kwargs)
    return wrapper


# ---- writing --------------------------------------------------------------------------------------------
def write_text(path: Path, text: str) -> None:
    """Write ``path`` (in an output folder) through a pending temporary name and fingerprint it."""
    out = path.parent
    tmp = path.with_name(f".{path.name}.tmp")
    record(out, tmp.name)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    fingerprint(out, path.name, done=[tmp.name])


def move_into(tmp: Path, out: Path) -> None:
    """Move everything in hftool's temporary folder ``tmp`` (pending) into ``out`` and fingerprint it; refused,
    before anything moves, when it would replace a file hftool did not write or that changed."""
    items = sorted(tmp.iterdir())
    blocked = [k for item in items if (out / item.name).exists() for k in not_owned(out, item.name)]
    if blocked:
        raise HftoolError(f"{out}: {_shown(blocked)} would be replaced but hftool did not write them or they "
                          f"changed since; the new files are in {tmp}: move them by hand")
    for item in items:
        target = out / item.name
        if target.is_dir() and not item.is_dir():
            remove_owned(out, item.name)
        os.replace(item, target)
    fingerprint(out, *(item.name for item in items), done=[tmp.name])
    tmp.rmdir()
