"""A graceful stop on SIGTERM (what batch schedulers and ``ray job stop`` send first) and SIGINT.

The first signal only sets a flag: the driver stops submitting, waits up to ``grace_s`` for the
tasks in flight to land, writes them, and exits 143 (SIGTERM) or 130 (SIGINT). A second signal
stops at once (KeyboardInterrupt), still through the driver's ``finally`` blocks.

``ray.init`` installs its own SIGTERM handler (``sys.exit``); enter ``GracefulStop`` after it.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

DEFAULT_GRACE_S = 5.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """``with GracefulStop(grace_s) as stop:`` then ``if stop:`` in the submit loop, and
    ``stop.remaining()`` seconds of grace for the tasks in flight."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S, stream=None):
        if grace_s < 0:
            raise ValueError(f"grace: {grace_s} is negative; pass --grace SECONDS >= 0")
        self.grace_s = grace_s
        self.stream = stream or sys.stderr
        self.signum: int | None = None
        self.at: float | None = None  # time.monotonic() of the first signal
        self._old: dict = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by it (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum if self.signum else 0

    def remaining(self) -> float:
        return max(0.0, self.at + self.grace_s - time.monotonic()) if self.at is not None else self.grace_s

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.signum, self.at = signum, time.monotonic()
        print(f"\n{self.name} received: submitting no more tasks; waiting up to {self.grace_s:g} s for the "
              f"running ones to land (send it again to stop at once)", file=self.stream, flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
