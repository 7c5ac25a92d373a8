"""Stopping a training run cleanly on SIGTERM or Ctrl-C: checkpoint first, then exit as shells expect."""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator

from vqgen.engine.errors import VQGenError


class Interrupted(VQGenError):
    """Stopped by a signal after saving a checkpoint; exits 128 + the signal number, as shells expect.
    Under torchrun the ranks agree on the stop, so every rank raises it."""

    shared = True

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """SIGTERM / Ctrl-C set a flag; the loop checkpoints, then stops (a second Ctrl-C stops at once)."""

    def __init__(self) -> None:
        self.received: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        try:
            previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread: leave signals alone
            yield self
            return
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
