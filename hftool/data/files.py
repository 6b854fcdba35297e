"""Reading a user's input file whole, within a documented cap.

Every reader of a corpus, labelled file, recipe, prompt / article / pairs / reference / question file and of
standard input goes through here, so an endless stream (``/dev/zero``, a FIFO fed by ``yes``) or a file larger
than memory ends in one line naming it, never in a MemoryError: a file over ``HFTOOL_MAX_INPUT_BYTES`` (default
1 GiB) is refused before it is read, a stream is read no further than that, and text holding NUL bytes (a binary
file, ``/dev/zero``) is refused at its first chunk. Corpora larger than the cap are read with
``data.streaming=true`` as JSON Lines, one bounded line at a time (:func:`bounded_lines`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from hftool.errors import HftoolError

ENV = "HFTOOL_MAX_INPUT_BYTES"
DEFAULT_MAX_INPUT_BYTES = 2**30
MAX_LINE_CHARS = 64 * 2**20  # one JSON Lines record, at most
CHUNK = 2**20
NUL = b"\0"


def max_input_bytes() -> int:
    value = os.environ.get(ENV, "")
    if not value:
        return DEFAULT_MAX_INPUT_BYTES
    if not value.isdigit() or int(value) < 1:
        raise HftoolError(f"{ENV}={value} must be a whole number of bytes, at least 1")
    return int(value)


def _too_large(where: str, limit: int) -> HftoolError:
    return HftoolError(f"{where}: larger than {limit:,} bytes, more than hftool reads at once; split the file, "
                       f"stream it as JSON Lines (data.streaming=true), or raise {ENV}")


def existing_input(path: str | Path, flag: str) -> Path:
    """``path`` expanded, refused in one line when nothing is there to read; a device or a FIFO is read as a
    file (and bounded like one)."""
    file = Path(path).expanduser()
    if not file.exists() or file.is_dir():
        raise HftoolError(f"{flag} {path}: no such file")
    return file


def read_input_bytes(path: Path, where: str) -> bytes:
    """The whole file, refused in one line past the cap or at a NUL byte. FileNotFoundError and
    IsADirectoryError pass through for the caller to word."""
    limit = max_input_bytes()
    if path.is_file() and path.stat().st_size > limit:
        raise _too_large(where, limit)
    with path.open("rb") as handle:
        return _read_bounded(handle, where, limit)


def _read_bounded(handle: IO[bytes], where: str, limit: int) -> bytes:
    """A binary stream to its end, refused at a NUL byte or once past ``limit`` bytes."""
    chunks, total = [], 0
    while chunk := handle.read(min(CHUNK, limit + 1 - total)):
        if NUL in chunk:
            raise HftoolError(f"{where}: holds NUL bytes at byte {total + chunk.index(NUL):,}: not a text "
                              "file (binary data, or a device such as /dev/zero)")
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise _too_large(where, limit)
    return b"".join(chunks)


def _decode(raw: bytes, where: str, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise HftoolError(f"{where}: not UTF-8 text (byte {exc.start})") from None


def read_input_text(path: Path, where: str, encoding: str = "utf-8") -> str:
    """``read_input_bytes`` decoded; an undecodable byte names its offset."""
    return _decode(read_input_bytes(path, where), where, encoding)


def read_stdin_text(where: str) -> str:
    """Standard input whole, within the same cap and NUL check as a file (``< /dev/zero`` ends in one line)."""
    import io
    import sys

    limit = max_input_bytes()
    binary = getattr(sys.stdin, "buffer", None)
    if binary is None:  # a text stream with no bytes beneath it (io.StringIO)
        binary = io.BytesIO(sys.stdin.read(limit + 1).encode())
    return _decode(_read_bounded(binary, where, limit), where, "utf-8")


def bounded_lines(handle: IO[str], where: str) -> Iterator[str]:
    """The lines of a text stream, each refused past ``MAX_LINE_CHARS`` instead of read whole."""
    number = 0
    while line := handle.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
            raise HftoolError(f"{where}:{number}: a line longer than {MAX_LINE_CHARS:,} characters; "
                              "is this a text file?")
        yield line
