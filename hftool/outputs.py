"""Output folders and files: hftool replaces only what it wrote, and never a folder a user lives in.

Every command that writes a folder claims it with :func:`claim_output_dir` and names each file before it
writes it (:func:`record`). The names go to a small manifest in the folder, so ``--overwrite`` deletes
exactly those and refuses, naming them, when the folder holds anything else.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hftool.errors import HftoolError

MANIFEST = ".hftool-outputs.json"
SHOWN = 5  # foreign names listed in a refusal


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def check_output_dir(path: str | Path, flag: str) -> Path:
    """Refuse an output folder that is a file, the current directory or above it, the home directory or ``/``."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise HftoolError(f"{flag}={path} is an existing file, not a folder; choose a folder name")
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


def written_names(out: Path) -> set[str]:
    """The names hftool recorded as its own in ``out`` (empty when it holds no manifest)."""
    try:
        names = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise HftoolError(f"{out / MANIFEST}: unreadable ({exc}); delete the folder's hftool files "
                          "by hand or choose another folder") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and "/" not in n for n in names):
        raise HftoolError(f"{out / MANIFEST}: not a list of file names; choose another folder")
    return set(names)


def record(out: Path, *names: str) -> None:
    """Add ``names`` (entries of ``out``) to its manifest before they are written, so a crash leaves
    nothing unaccounted for."""
    known = written_names(out)
    if set(names) <= known:
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(sorted(known | set(names)), indent=0) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


def foreign_names(out: Path) -> list[str]:
    """Entries of ``out`` hftool did not record as its own."""
    if not out.is_dir():
        return []
    own = written_names(out) | {MANIFEST, f"{MANIFEST}.tmp"}
    return sorted(entry.name for entry in out.iterdir() if entry.name not in own)


def move_into(tmp: Path, out: Path) -> None:
    """Move everything in the temporary folder ``tmp`` into ``out``, recording each name first."""
    items = sorted(tmp.iterdir())
    record(out, *(item.name for item in items))
    for item in items:
        target = out / item.name
        if target.is_dir() and not item.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp.rmdir()


def claim_output_dir(out: Path, flag: str, overwrite: bool, resume: bool = False, names: tuple[str, ...] = (),
                     what: str = "files from an earlier run", hint: str = "") -> None:
    """Make ``out`` ready for a run that writes ``names`` (and records more as it goes).

    An empty or new folder is taken as is. A folder with content needs ``resume`` (continue it) or
    ``overwrite``: then hftool deletes what its manifest names and refuses when anything else is there.
    """
    out = check_output_dir(out, flag)
    if out.is_dir() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise HftoolError(f"{flag}={out} already holds {what}; {hint or ''}pass --overwrite to replace "
                              "them, or choose another folder")
        foreign = foreign_names(out)
        if foreign:
            raise HftoolError(f"{flag}={out} holds files hftool did not write ({_shown(foreign)}); --overwrite "
                              "only replaces hftool's own files: move those away or choose another folder")
        for name in sorted(written_names(out)):
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        (out / MANIFEST).unlink()
    out.mkdir(parents=True, exist_ok=True)
    record(out, *names)
