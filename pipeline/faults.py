"""Faults of long runs that a task cannot survive as it is: out of memory, past its time limit.

Such a task is retried once at half the replicas (:meth:`pipeline.grid.TaskSpec.halves`: a
smaller batch needs less memory and less time); if that fails too, its runs are recorded as
failed, with the reason, and the sweep goes on (:class:`pipeline.session.SweepSession`).

A task's time limit is ``--task-timeout`` (or ``resources.task_timeout_s``) when given, else
:data:`LIMIT_FACTOR` times its estimated time on this machine (``pipeline.estimate.task_seconds``,
an upper bound already), and never under :data:`LIMIT_FLOOR_S`. The task's own process
enforces it (:func:`time_limit`, a ``SIGALRM`` in the Ray worker's main thread): the limit
counts the task's own time, not the time it waited for a CPU. A task stuck inside one call
that never returns to Python (a hung GPU kernel) is not interrupted by it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading

from .config import SweepConfig
from .estimate import DEFAULT, calibration, task_seconds
from .grid import TaskSpec

OUT_OF_MEMORY = "out of memory"
TIME_LIMIT = "time limit"
LIMIT_FACTOR = 10.0
LIMIT_FLOOR_S = 600.0
# how the allocators say it: torch's CPU allocator, CUDA, and Ray's memory monitor
_OOM_WORDS = ("can't allocate memory", "out of memory", "outofmemoryerror", "cannot allocate memory")


class TaskTimeLimit(Exception):
    """Raised in a task that ran past its time limit."""


def task_fault(exc: BaseException) -> str | None:
    """:data:`OUT_OF_MEMORY`, :data:`TIME_LIMIT`, or None for any other failure (the cause may be
    wrapped, as Ray wraps a task's exception; Ray's memory monitor raises its own error)."""
    if isinstance(exc, TaskTimeLimit):
        return TIME_LIMIT
    if isinstance(exc, MemoryError):
        return OUT_OF_MEMORY
    text = f"{type(exc).__name__} {exc}".lower()
    if "tasktimelimit" in text:
        return TIME_LIMIT
    return OUT_OF_MEMORY if any(w in text for w in _OOM_WORDS) else None


def time_limit_s(cfg: SweepConfig, task: TaskSpec, override: float | None = None, cal: dict | None = None) -> float:
    """The task's time limit in seconds (``math.inf``: none): ``override``, else the config's
    ``resources.task_timeout_s``, else derived from the task's estimate (see the module) with the
    step costs ``cal`` (default: this machine's cached calibration, else the estimate's defaults)."""
    chosen = override if override is not None else cfg.resources.task_timeout_s
    if chosen is not None:
        return float(chosen)
    cal = cal or calibration(cfg, measure=False) or DEFAULT
    return max(LIMIT_FLOOR_S, LIMIT_FACTOR * task_seconds(cfg, task, cal))


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`TaskTimeLimit` in this (main) thread after ``seconds``; nothing outside the
    main thread, where signals are not delivered, or for an infinite limit."""
    if not math.isfinite(seconds) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TaskTimeLimit(f"past its time limit of {seconds:g} s (--task-timeout SECONDS raises it)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
