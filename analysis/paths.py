"""Where the notebooks find their results, whatever directory they are run from."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RESULTS = "results/widths"


def repo_root() -> Path:
    """The checkout this ``analysis`` package belongs to (found from the package, not the working
    directory: a notebook may be executed from anywhere, or to another path)."""
    return Path(__file__).resolve().parents[1]


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$SOBOLEV_RESULTS``, else ``results/widths``; a relative path is taken from the
    repository root (``analysis.load_results`` says, in one line, when there are no results there)."""
    chosen = Path(path or os.environ.get("SOBOLEV_RESULTS") or DEFAULT_RESULTS).expanduser()
    return chosen if chosen.is_absolute() else repo_root() / chosen
