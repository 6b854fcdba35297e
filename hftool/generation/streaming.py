"""Print tokens as they are generated, the same text the non-streaming path returns (stop strings trimmed)."""

from __future__ import annotations

import sys
from typing import TextIO

from transformers import TextStreamer

from hftool.generation.decoding import trim_at_stop


class StopTrimmingStreamer(TextStreamer):
    """A ``TextStreamer`` that writes to ``out`` and never prints a stop string or anything after it.

    Text that could still turn out to be the start of a stop string is held back until it cannot.
    """

    def __init__(self, tokenizer, stops: list[str], out: TextIO | None = None):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stops = list(stops)
        self.out = out or sys.stdout
        self.text = ""
        self.printed = 0
        self.stopped = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.stopped:
            self.text += text
            kept = trim_at_stop(self.text, self.stops)
            self.stopped = len(kept) < len(self.text)
            if self.stopped or stream_end:
                self._emit(kept)
            else:
                held_back = max((len(s) - 1 for s in self.stops), default=0)
                self._emit(self.text[: len(self.text) - held_back])
        if stream_end:
            self.out.write("\n")
            self.out.flush()

    def _emit(self, upto: str) -> None:
        if len(upto) > self.printed:
            self.out.write(upto[self.printed :])
            self.out.flush()
            self.printed = len(upto)
