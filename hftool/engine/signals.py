"""Stop signals: SIGTERM or SIGINT finish the current step, save a checkpoint and end the run cleanly."""

from __future__ import annotations

import signal


class StopSignals:
    """While entered, SIGTERM and SIGINT are recorded instead of ending the process; a second SIGINT aborts.

    The engine checks :attr:`received` after each step (agreed across processes), so every process stops at
    the same step. Outside the main thread signals cannot be caught, and they are left alone.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _request_stop(self, signum, _frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "a signal"

    def __enter__(self) -> StopSignals:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._request_stop)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
