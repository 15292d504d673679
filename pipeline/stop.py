"""A graceful stop on SIGTERM (what batch schedulers and ``ray job stop`` send first) and SIGINT.

The first signal only sets a flag: the driver stops submitting, waits up to ``grace_s`` for the
tasks in flight to land, writes them, and exits 143 (SIGTERM) or 130 (SIGINT). A second signal
stops at once (KeyboardInterrupt), still through the driver's ``finally`` blocks.

A watchdog covers a main thread that cannot see the flag: when a scheduler signals the whole
process group, the local Ray's own processes die too and ``ray.wait`` can block in C for good.
If the stop has not finished ``hard_exit_after_s`` (15 s) after the grace time, the process exits at
once with the same code: every finished task is already in Parquet (written as it lands), and
the next driver marks the MLflow parent KILLED and ``sync``s what MLflow lacks.

``ray.init`` installs its own SIGTERM handler (``sys.exit``); enter ``GracefulStop`` after it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

DEFAULT_GRACE_S = 5.0
HARD_EXIT_AFTER_S = 15.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """``with GracefulStop(grace_s) as stop:`` then ``if stop:`` in the submit loop, and
    ``stop.remaining()`` seconds of grace for the tasks in flight."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S, stream=None, hard_exit_after_s: float = HARD_EXIT_AFTER_S):
        if grace_s < 0:
            raise ValueError(f"grace: {grace_s} is negative; pass --grace SECONDS >= 0")
        self.grace_s, self.hard_exit_after_s = grace_s, hard_exit_after_s
        self.stream = stream or sys.stderr
        self.signum: int | None = None
        self.at: float | None = None  # time.monotonic() of the first signal
        self._old: dict = {}
        self._watchdog: threading.Timer | None = None

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
        self._watchdog = threading.Timer(self.grace_s + self.hard_exit_after_s, self._hard_exit)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _hard_exit(self) -> None:
        print(f"{self.name}: the driver did not stop within {self.grace_s + self.hard_exit_after_s:g} s (is Ray gone? "
              f"a signal to the whole process group stops it too); exiting now. Every finished run is in Parquet; "
              f"run the same command again to resume", file=self.stream, flush=True)
        os._exit(self.exit_code)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
