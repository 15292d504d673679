"""How the pipeline states an exception in one line (task failures, MLflow errors, the summary)."""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """``exc`` in one line: its type and the last line of its message, cut at 200 characters."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"
