"""The pipeline's errors, in one home, and how any exception is stated in one line.

Every error the pipeline raises on purpose says, in one line, what is wrong and the fix. The
CLI maps them to its exit codes: :data:`BAD_INPUT` (found before any work) to 2,
:class:`DiskFull` to :data:`DISK_FULL_EXIT`. ``records.tables.ResultsError`` stays with the
results it is about (``records`` is below ``pipeline``), and counts as bad input too.

Why one module: the five classes were spread over config, session, tracking, lock and
records, so the CLI had to import each module to catch them, and a reader could not see the
whole list of what a user can be told.
"""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path

from records.tables import ResultsError

DISK_FULL_EXIT = 4  # the CLI's exit code when the output or the MLflow store ran out of space


class PipelineError(Exception):
    """An error stated in one line: what is wrong, and the fix."""


class ConfigError(PipelineError, ValueError):
    """A configuration problem: the field, what is wrong, the fix."""


class SetupError(PipelineError, ValueError):
    """A problem found before any work: an option, the output directory, the tracking store."""


class TrackingError(PipelineError, RuntimeError):
    """The tracking server cannot be used."""


class LockHeld(PipelineError, RuntimeError):
    """Another live process holds the output: who, and the way out."""


class DiskFull(PipelineError):
    """No space left where the pipeline writes (``path``): the output or the MLflow store."""

    def __init__(self, path: str | Path, resume: str = ""):
        self.path, self.free = Path(path), free_bytes(path)
        self.resume = resume
        how = f"free space, then resume with: {resume}" if resume else "free space, then run the same command"
        self.detail = (f"no space left writing {self.path} ({human_bytes(self.free)} free there); every finished run "
                       f"is written whole; {how}")
        super().__init__(f"disk full: {self.detail}")

    def with_resume(self, resume: str) -> "DiskFull":
        return DiskFull(self.path, resume)


# bad input, found before any work: exit code 2
BAD_INPUT = (ConfigError, SetupError, TrackingError, LockHeld, ResultsError)


def one_line(exc: BaseException) -> str:
    """``exc`` in one line: a pipeline error as it is (it is written to be read), any other as
    its type and the last line of its message, cut at 200 characters."""
    if isinstance(exc, PipelineError):
        return " ".join(str(exc).split())
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"


def print_error(exc: BaseException, file=None) -> None:
    """The CLI's one line for an error: ``error: <one_line(exc)>`` on stderr."""
    print(f"error: {one_line(exc)}", file=file or sys.stderr)


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised from) is a write that ran out of space: ENOSPC or
    EDQUOT from the OS, as pyarrow words it, or SQLite's "database or disk is full"."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if ("No space left on device" in text or "database or disk is full" in text or "Disk quota exceeded" in text
                or f"[errno {errno.ENOSPC}]" in text):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def nearest_existing(path: str | Path) -> Path:
    """``path``, or its nearest parent that exists (where a directory to be made would go)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system of ``path`` (of its nearest existing parent)."""
    try:
        return shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return 0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
