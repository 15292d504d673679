"""Success of each run under the two criteria of MATH.md, at tolerances ``eps'`` chosen after
the fact, and success rates per cell ``(n, k, delta, bias, m)`` with Wilson intervals.

(a) ``interpolation``: the relative loss ``L(t)/L(0)`` reached ``eps'`` within the time budget,
    read from ``min_rel_loss`` (the minimum over every step, so exact).
(b) ``regime``: at every checkpoint up to and including the first one with ``rel_loss <= eps'``
    (all checkpoints if none), the theorem's bound held (``bound_held``) and
    ``lambda_min >= lambda_star / 2``.  Whether ``eps'`` is reached does not matter here: a run
    that stays in the regime for its whole budget satisfies the theorem's conclusion there.

Under both, diverged and failed runs are failures.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .defaults import (CELL_KEYS, CONFIDENCE, CRITERIA, EPS_GRID, FAILED_STATUSES, HOMOGENEOUS_COLUMNS,
                       INTERPOLATION, REGIME, STOPPED_AT_EPS)
from .load import require_columns
from .stats import wilson_interval

# Per-run columns of the success table; every other column identifies the cell.
RUN_LEVEL = ("run_id", "seed", "success")
RATE_STATS = ("trials", "successes", "rate", "rate_lo", "rate_hi")


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


def _not_failed(runs: pd.DataFrame) -> pd.Series:
    return ~runs["status"].isin(FAILED_STATUSES)


def interpolation_success(runs: pd.DataFrame, eps: float) -> pd.Series:
    """Criterion (a) per run (indexed like ``runs``): ``min_rel_loss <= eps'`` and not diverged/failed.
    Columns: ``status, eps, min_rel_loss``."""
    check_judgeable(runs, eps)
    return _not_failed(runs) & (runs["min_rel_loss"] <= eps)


def regime_success(runs: pd.DataFrame, curves: pd.DataFrame, eps: float) -> pd.Series:
    """Criterion (b) per run (indexed like ``runs``).

    runs: ``run_id, status, eps, min_rel_loss, lambda_star``; curves: ``run_id, step, rel_loss,
    bound_held, lambda_min``.  A NaN ``lambda_min`` at a checkpoint is taken as not measured there
    (the spectrum may be computed on a sparser schedule than the loss), not as a violation.
    A run that is not diverged/failed but has no checkpoints cannot be judged: raises.
    """
    check_judgeable(runs, eps)
    require_columns(runs, ["run_id", "lambda_star"], "runs")
    require_columns(curves, ["run_id", "step", "rel_loss", "bound_held", "lambda_min"], "curves")
    c = curves[["run_id", "step", "rel_loss", "bound_held", "lambda_min"]].merge(
        runs[["run_id", "lambda_star"]], on="run_id", how="inner").sort_values(["run_id", "step"])
    reached = (c["rel_loss"] <= eps).astype(int)
    # checkpoints before the first one at eps', plus that one
    considered = (reached.groupby(c["run_id"]).cumsum() - reached) == 0
    held = c["bound_held"].fillna(False).astype(bool) & ~(c["lambda_min"] < c["lambda_star"] / 2)
    violated = (considered & ~held).groupby(c["run_id"]).any()

    not_failed = _not_failed(runs)
    unseen = not_failed & ~runs["run_id"].isin(violated.index)
    if unseen.any():
        raise ValueError(f"{int(unseen.sum())} run(s) have no checkpoints in curves, "
                         f"e.g. {runs.loc[unseen, 'run_id'].iloc[0]!r}")
    return not_failed & ~runs["run_id"].map(violated).fillna(True).astype(bool)


def _check_homogeneous(runs: pd.DataFrame, keys: list[str]) -> None:
    for col in HOMOGENEOUS_COLUMNS:
        if col in runs.columns and col not in keys:
            mixed = runs.groupby(keys, dropna=False)[col].nunique(dropna=False)
            if (mixed > 1).any():
                cell = {k: getattr(v, "item", lambda: v)() for k, v in zip(keys, mixed[mixed > 1].index[0])}
                raise ValueError(f"column {col!r} takes several values within cell {cell}; filter the runs "
                                 f"or keep it apart with strata=({col!r},)")


def run_success(runs: pd.DataFrame, curves: pd.DataFrame | None = None, eps_grid: Sequence[float] = EPS_GRID,
                criteria: Sequence[str] = CRITERIA, strata: Sequence[str] = ()) -> pd.DataFrame:
    """Long table of run successes, one row per (run, criterion, eps').

    runs: ``run_id, n, k, delta, bias, m, seed, status, eps, min_rel_loss`` (+ ``lambda_star`` and
    ``curves`` for the ``regime`` criterion).  ``strata`` are extra columns that split cells (e.g.
    ``("mode",)``); runs that differ in a column of ``HOMOGENEOUS_COLUMNS`` within a cell raise.

    Returns columns ``n, k, delta, bias, *strata, criterion, eps, m, run_id, seed, success``
    (``eps`` is the tolerance eps' of the criterion, not the training one).
    """
    keys = [*CELL_KEYS, *strata]
    reserved = {"criterion", "eps", *RUN_LEVEL} & set(strata)
    if reserved:
        raise ValueError(f"strata {sorted(reserved)} would clash with the success table's own columns")
    require_columns(runs, [*keys, "run_id", "seed", "status", "eps", "min_rel_loss"], "runs")
    unknown = set(criteria) - set(CRITERIA)
    if unknown:
        raise ValueError(f"unknown criteria {sorted(unknown)}; known: {CRITERIA}")
    if REGIME in criteria and curves is None:
        raise ValueError("the 'regime' criterion needs the curves table")
    _check_homogeneous(runs, keys)

    base = runs[[*keys, "run_id", "seed"]].reset_index(drop=True)
    runs = runs.reset_index(drop=True)
    parts = []
    for criterion in criteria:
        for eps in eps_grid:
            ok = interpolation_success(runs, eps) if criterion == INTERPOLATION else regime_success(runs, curves, eps)
            parts.append(base.assign(criterion=criterion, eps=float(eps), success=ok.to_numpy(dtype=bool)))
    order = [*CELL_KEYS[:-1], *strata, "criterion", "eps", "m", "run_id", "seed", "success"]
    return pd.concat(parts, ignore_index=True)[order]


def success_rates(success: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Success rate per cell with a Wilson interval.

    success: a :func:`run_success` table; it is grouped by every column except ``run_id, seed,
    success``.  Returns those key columns (including ``m``) and ``trials, successes, rate,
    rate_lo, rate_hi``.
    """
    require_columns(success, ["m", "success"], "success")
    keys = [c for c in success.columns if c not in RUN_LEVEL]
    rates = (success.groupby(keys, sort=True, dropna=False)["success"]
             .agg(trials="size", successes="sum").reset_index())
    rates["successes"] = rates["successes"].astype(np.int64)
    rates["rate"] = rates["successes"] / rates["trials"]
    rates["rate_lo"], rates["rate_hi"] = wilson_interval(rates["successes"], rates["trials"], confidence)
    return rates
