"""``python -m pipeline notebooks``: execute the analysis notebooks, from any working directory.

The notebooks (``notebooks/<name>.py``, jupytext ``py:percent`` paired with ``.ipynb``) are found
from this checkout (the installed package's directory), not from the working directory, and run
in ``notebooks/`` as Jupyter would. Each is executed by ``jupytext --to notebook --execute`` into
its ``.ipynb`` (or into ``into/<name>.ipynb``). The results directory is ``results`` (a path
given here is taken from the working directory), else ``SOBOLEV_RESULTS``, else the notebooks'
default (``analysis.paths``: relative paths from the repository root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from analysis.paths import repo_root

from .errors import SetupError

NOTEBOOKS = repo_root() / "notebooks"
NAMES = ("analyze", "dynamics")


def notebook_path(name: str) -> Path:
    """``analyze``, ``analyze.py`` or ``notebooks/analyze.py`` -> this checkout's ``notebooks/analyze.py``."""
    stem = Path(name).name.removesuffix(".py").removesuffix(".ipynb")
    path = NOTEBOOKS / f"{stem}.py"
    if not path.is_file():
        known = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))
        raise SetupError(f"notebooks: no notebook {name!r} in {NOTEBOOKS}; name one of {known}")
    return path


def execute_notebooks(names: list[str] | tuple[str, ...] = NAMES, results: str | Path | None = None,
                      into: str | Path | None = None) -> list[Path]:
    """Execute ``names`` in place (or into ``into``); returns the ``.ipynb`` files written."""
    paths = [notebook_path(n) for n in names]
    try:
        import jupytext  # noqa: F401 - a development dependency: only this command needs it
    except ImportError:
        raise SetupError("notebooks: jupytext is not installed; pip install -e '.[dev]'") from None
    env = dict(os.environ)
    if results is not None:
        env["SOBOLEV_RESULTS"] = str(Path(results).expanduser().resolve())
    written = []
    for path in paths:
        dest = Path(into).resolve() / f"{path.stem}.ipynb" if into else path.with_suffix(".ipynb")
        dest.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "jupytext", "--to", "notebook", "--execute", "--output",
                               str(dest), str(path)], env=env, cwd=NOTEBOOKS)
        if proc.returncode != 0:
            raise RuntimeError(f"notebooks: {path.name} failed (exit {proc.returncode}); its error is above")
        written.append(dest)
    return written
