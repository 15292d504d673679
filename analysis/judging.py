"""What every success criterion needs before it judges: which runs can be judged at a tolerance
``eps'`` at all (a run stopped at a training ``eps`` above ``eps'`` never showed whether it would
reach ``eps'``), which runs failed outright (diverged), and the runs' checkpoints."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from .columns import require_columns
from .defaults import FAILED_STATUSES, STOPPED_AT_EPS


class UnjudgeableToleranceError(ValueError):
    """``eps'`` is below the training ``eps`` of runs that stopped at ``eps``: whether they would
    have gone on to ``eps'`` was never observed."""


def check_judgeable(runs: pd.DataFrame, eps: float) -> None:
    """Raise :class:`UnjudgeableToleranceError` if some run stopped on reaching its training
    ``eps`` (status 'converged') before reaching ``eps'``.  Columns: ``status, eps, min_rel_loss``.

    Counting these runs as failures would make thresholds at small ``eps'`` an artefact of the
    stopping rule.
    """
    require_columns(runs, ["status", "eps", "min_rel_loss"], "runs")
    stopped = (runs["status"] == STOPPED_AT_EPS) & (runs["eps"] > eps) & ~(runs["min_rel_loss"] <= eps)
    if stopped.any():
        train_eps = sorted(runs.loc[stopped, "eps"].unique())
        raise UnjudgeableToleranceError(
            f"eps'={eps:g} is below the training eps {train_eps} of {int(stopped.sum())} converged run(s) "
            f"that stopped before reaching it; choose eps' >= the training eps or train with a smaller eps")


def not_failed(runs: pd.DataFrame) -> pd.Series:
    """Runs that did not diverge or fail: the only ones any criterion can count as a success."""
    return ~runs["status"].isin(FAILED_STATUSES)


def checkpoints(runs: pd.DataFrame, curves: pd.DataFrame, columns: Sequence[str], run_columns=()) -> pd.DataFrame:
    """The curves of ``runs`` (``columns``), sorted, with ``run_columns`` of the runs joined in;
    a run that is not diverged but has no checkpoints cannot be judged: raises."""
    require_columns(curves, ["run_id", "step", *columns], "curves")
    c = curves[["run_id", "step", *columns]].merge(runs[["run_id", *run_columns]], on="run_id", how="inner")
    unseen = not_failed(runs) & ~runs["run_id"].isin(c["run_id"])
    if unseen.any():
        raise ValueError(f"{int(unseen.sum())} run(s) have no checkpoints in curves, "
                         f"e.g. {runs.loc[unseen, 'run_id'].iloc[0]!r}")
    return c.sort_values(["run_id", "step"])
