"""Success criteria with a horizon: did a run converge, converge at the theorem's rate, or stay in
the proof's lazy regime by flow time ``T``, and the per-run times they read.

Times here are in units of ``1/lambda_*`` (the runs table records absolute flow times: ``t``,
``t_to_<eps'>``, ``bound_violation_t``; multiplied by the run's ``lambda_star``).  A criterion
``name`` judges each run at its own horizon (its stop time); ``name@T`` judges it at flow time
``T``: :func:`analysis.success.criterion` parses ``"conv@48"``, and :func:`timed_name` builds it.

The criteria (registered in :mod:`analysis.success`, so that ``pipeline search`` can search them):

- ``conv``: the relative loss reached ``eps'`` by ``T`` (``t_to_<eps'> lambda_* <= T``).
- ``rate``: it reached ``eps'`` by ``T`` and the bound ``||r(t)||^2 <= exp(-lambda_* t)
  ||r(0)||^2`` held at every step until then (``bound_violation_t > t_to_<eps'>``).
- ``rate_soft``: the late decay rate is at least half the theorem's: ``late_rate >= 1/2`` over
  the last doubling of flow time before ``min(T, stop)``.  ``eps'`` is not used.
- ``lazy``: the Gram matrix stayed in the regime of Lemmas 2 and 4 up to ``min(T, stop)``:
  ``max ||H(t) - H(0)||_2 <= lambda_*/4`` and ``min lambda_min(H(t)) >= lambda_*/2``.  ``eps'``
  is not used.

Diverged runs fail all of them.  A run that stopped before ``T`` without a conclusion (it neither
reached ``eps'`` nor stopped at its training ``eps``) has an unknown outcome at ``T``: judging it
raises a one-line error naming the run (never a silent failure); filter with :func:`observed_through`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from .columns import require_columns
from .defaults import FAILED_STATUSES, STOPPED_AT_EPS
from .judging import check_judgeable, checkpoints
from .judging import not_failed as _not_failed

# Tolerances at which the training summary records the first time the relative loss reached them.
T_TO_EPS = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
T_TO_PREFIX = "t_to_"
HORIZON_SEP = "@"
# Runs stop at the first step with t >= t_max (1 - 1e-12), and t_max is a float: compare times with slack.
TIME_SLACK = 1e-9
# Thresholds of the criteria (rates in units of lambda_*, drift and spectrum relative to lambda_*).
RATE_SOFT_MIN = 0.5
LAZY_DRIFT_MAX = 0.25
LAZY_LAMBDA_MIN = 0.5


def t_to_column(eps: float) -> str:
    """The runs-table column of the first time at ``eps'``: ``t_to_1e-8`` for ``1e-8``."""
    mantissa, exponent = f"{float(eps):.0e}".split("e")
    return f"{T_TO_PREFIX}{mantissa}e{int(exponent)}"


def t_to_columns(runs: pd.DataFrame) -> dict[float, str]:
    """``eps' -> column`` for every ``t_to_<eps'>`` column of ``runs``."""
    out = {}
    for col in runs.columns:
        if col.startswith(T_TO_PREFIX):
            try:
                out[float(col[len(T_TO_PREFIX):])] = col
            except ValueError:
                continue
    return out


def _t_to_col(runs: pd.DataFrame, eps: float) -> str:
    cols = t_to_columns(runs)
    for value, col in cols.items():
        if np.isclose(value, eps, rtol=1e-9, atol=0):
            return col
    have = ", ".join(f"{v:g}" for v in sorted(cols)) or "none"
    raise ValueError(f"runs have no column {t_to_column(eps)!r}: the first time at eps'={eps:g} is recorded only "
                     f"at eps' in [{have}]; choose one of these")


def time_to(runs: pd.DataFrame, eps: float) -> pd.Series:
    """First flow time at which the relative loss was ``<= eps'``, in units of ``1/lambda_*``
    (``inf`` when never reached).  Columns: ``t_to_<eps'>, lambda_star``."""
    col = _t_to_col(runs, eps)
    require_columns(runs, ["lambda_star"], "runs")
    return (runs[col].astype(float) * runs["lambda_star"].astype(float)).rename("time_to")


def stop_time(runs: pd.DataFrame) -> pd.Series:
    """Flow time at which each run stopped, in units of ``1/lambda_*``.  Columns: ``t, lambda_star``."""
    require_columns(runs, ["t", "lambda_star"], "runs")
    return (runs["t"].astype(float) * runs["lambda_star"].astype(float)).rename("stop_time")


def budget_horizon(runs: pd.DataFrame) -> pd.Series:
    """The flow-time budget of each run, in units of ``1/lambda_*``: ``t_max`` when ``t_unit`` is
    ``lambda_star`` (the default when the column is absent), ``t_max lambda_star`` when absolute."""
    require_columns(runs, ["t_max", "lambda_star"], "runs")
    unit = runs["t_unit"] if "t_unit" in runs.columns else pd.Series("lambda_star", index=runs.index)
    t_max = runs["t_max"].astype(float)
    return pd.Series(np.where(unit == "lambda_star", t_max, t_max * runs["lambda_star"].astype(float)),
                     index=runs.index, name="budget_horizon")


def observed_through(runs: pd.DataFrame, horizon: float, done: pd.Series | None = None) -> pd.Series:
    """Runs whose outcome at flow time ``horizon`` (1/lambda_*) is known: diverged (a failure at
    every time), ``done`` (default: stopped at their training ``eps``), or still running at
    ``horizon``.  Columns: ``status, t, lambda_star``."""
    require_columns(runs, ["status"], "runs")
    if done is None:
        done = runs["status"] == STOPPED_AT_EPS
    return runs["status"].isin(FAILED_STATUSES) | done | (stop_time(runs) >= horizon * (1 - TIME_SLACK))


def _require_observed(runs: pd.DataFrame, horizon: float, done: pd.Series, what: str) -> None:
    unknown = ~observed_through(runs, horizon, done)
    if unknown.any():
        first = runs.loc[unknown].iloc[0]
        raise ValueError(
            f"{int(unknown.sum())} run(s) stopped before T={horizon:g}/lambda_* without {what} (e.g. run "
            f"{first.get('run_id', '?')!r} at t={float(first['t']) * float(first['lambda_star']):.4g}/lambda_*): "
            f"their outcome at T is unknown; choose a shorter T or drop them (analysis.timed.observed_through)")


def reached_by(runs: pd.DataFrame, eps: float, horizon: float | None) -> pd.Series:
    """The relative loss reached ``eps'`` by flow time ``horizon`` (1/lambda_*; None: ever, within the
    run).  Raises where the outcome is unknown (see the module docstring).  Columns: ``status, eps,
    min_rel_loss, t, lambda_star, t_to_<eps'>``."""
    tt = time_to(runs, eps)
    if horizon is None:
        check_judgeable(runs, eps)
        return np.isfinite(tt)
    reached = tt <= horizon * (1 + TIME_SLACK)
    _require_observed(runs, horizon, reached, f"reaching eps'={eps:g}")
    return reached


def conv_success(runs: pd.DataFrame, curves: pd.DataFrame | None, eps: float,
                 horizon: float | None = None) -> pd.Series:
    """The relative loss reached eps' by the horizon T (t_to_<eps'> lambda_* <= T).
    Columns: ``status, eps, min_rel_loss, t, lambda_star, t_to_<eps'>``."""
    return _not_failed(runs) & reached_by(runs, eps, horizon)


def rate_success(runs: pd.DataFrame, curves: pd.DataFrame | None, eps: float,
                 horizon: float | None = None) -> pd.Series:
    """Reached eps' by T with the bound ||r||^2 <= exp(-lambda_* t) ||r(0)||^2 held at every step until then.
    Columns: those of ``conv`` and ``bound_violation_t`` (absolute; +inf if never broken, NaN fails)."""
    require_columns(runs, ["bound_violation_t"], "runs")
    reached = reached_by(runs, eps, horizon)
    t_to = runs[_t_to_col(runs, eps)].astype(float)
    return _not_failed(runs) & reached & (runs["bound_violation_t"].astype(float) > t_to)


def judged_at_own_stop(runs: pd.DataFrame, horizon: float | None) -> pd.Series:
    """Runs judged at their own stop (True) rather than at an earlier checkpoint time ``horizon``."""
    if horizon is None:
        return pd.Series(True, index=runs.index)
    _require_observed(runs, horizon, runs["status"] == STOPPED_AT_EPS, "stopping at their training eps")
    return stop_time(runs) <= horizon * (1 + TIME_SLACK)


def _until(runs: pd.DataFrame, curves: pd.DataFrame, horizon: float, columns) -> pd.DataFrame:
    """Checkpoints of ``runs`` at flow times ``<= horizon`` (1/lambda_*), sorted, with ``lambda_star``."""
    c = checkpoints(runs, curves, ["t", *columns], ["lambda_star"])
    return c[c["t"] * c["lambda_star"] <= horizon * (1 + TIME_SLACK)]


def late_rate_at(runs: pd.DataFrame, curves: pd.DataFrame, horizon: float) -> pd.Series:
    """Each run's late decay rate at flow time ``horizon`` (1/lambda_*), from its checkpoints:
    ``ln(rel(tau) / rel(t_end)) / ((t_end - tau) lambda_*)``, ``t_end`` its last checkpoint at or before
    ``horizon``, ``tau`` the last checkpoint at or before ``t_end / 2`` (NaN if none).  The same rule as
    the summary's ``late_rate``, at checkpoint resolution.  Indexed like ``runs``.
    Columns: runs ``run_id, status, lambda_star``; curves ``run_id, step, t, rel_loss``."""
    c = _until(runs, curves, horizon, ["rel_loss"])
    rates = {}
    for run_id, g in c.groupby("run_id", sort=False):
        t, rel = g["t"].to_numpy(float), g["rel_loss"].to_numpy(float)
        before = np.flatnonzero(t <= t[-1] / 2 * (1 + TIME_SLACK))
        if len(t) < 2 or before.size == 0 or t[-1] <= t[before[-1]]:
            rates[run_id] = np.nan
            continue
        i = before[-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            rates[run_id] = np.log(rel[i] / rel[-1]) / ((t[-1] - t[i]) * g["lambda_star"].iloc[0])
    return runs["run_id"].map(rates).astype(float).rename("late_rate")


def rate_soft_success(runs: pd.DataFrame, curves: pd.DataFrame | None, eps: float,
                      horizon: float | None = None) -> pd.Series:
    """The late decay rate (last doubling of flow time before min(T, stop)) is >= 1/2 in units of lambda_*.
    runs: ``status, late_rate`` (+ ``run_id, t, lambda_star`` and the curves ``t, rel_loss`` with a horizon)."""
    require_columns(runs, ["status", "late_rate"], "runs")
    rate = runs["late_rate"].astype(float)
    own = judged_at_own_stop(runs, horizon)
    if not own.all():
        rate = rate.where(own, late_rate_at(runs, curves, horizon))
    return _not_failed(runs) & (rate >= RATE_SOFT_MIN)


def lazy_success(runs: pd.DataFrame, curves: pd.DataFrame | None, eps: float,
                 horizon: float | None = None) -> pd.Series:
    """||H(t) - H(0)||_2 <= lambda_*/4 and lambda_min(H(t)) >= lambda_*/2 at every checkpoint up to min(T, stop).
    runs: ``status, lambda_star, max_H_drift_2, min_lambda_ratio`` (NaN fails); with a horizon, curves
    ``run_id, step, t, H_drift_2, lambda_min`` (a NaN checkpoint is not measured; none measured fails)."""
    require_columns(runs, ["status", "lambda_star", "max_H_drift_2", "min_lambda_ratio"], "runs")
    drift = runs["max_H_drift_2"].astype(float) / runs["lambda_star"].astype(float)
    lam = runs["min_lambda_ratio"].astype(float)
    own = judged_at_own_stop(runs, horizon)
    if not own.all():
        early = drift_until(runs, curves, horizon)
        drift, lam = drift.where(own, early["drift_ratio"]), lam.where(own, early["lambda_ratio"])
    return _not_failed(runs) & (drift <= LAZY_DRIFT_MAX) & (lam >= LAZY_LAMBDA_MIN)


def drift_until(runs: pd.DataFrame, curves: pd.DataFrame, horizon: float) -> pd.DataFrame:
    """Per run, from the checkpoints at flow times ``<= horizon`` (1/lambda_*): ``drift_ratio`` =
    ``max ||H(t) - H(0)||_2 / lambda_*`` and ``lambda_ratio`` = ``min lambda_min(H(t)) / lambda_*``
    (NaN checkpoints skipped; NaN if none measured).  Indexed like ``runs``.
    Columns: runs ``run_id, status, lambda_star``; curves ``run_id, step, t, H_drift_2, lambda_min``."""
    c = _until(runs, curves, horizon, ["H_drift_2", "lambda_min"])
    per = c.assign(drift_ratio=c["H_drift_2"] / c["lambda_star"], lambda_ratio=c["lambda_min"] / c["lambda_star"])
    per = per.groupby("run_id").agg(drift_ratio=("drift_ratio", "max"), lambda_ratio=("lambda_ratio", "min"))
    return pd.DataFrame({col: runs["run_id"].map(per[col]).astype(float) for col in per.columns}, index=runs.index)


def timed_name(base: str, horizon: float | None = None) -> str:
    """The criterion name of ``base`` judged at ``horizon``: ``timed_name("conv", 48) == "conv@48"``."""
    return base if horizon is None else f"{base}{HORIZON_SEP}{float(horizon):g}"


def parse_horizon(name: str) -> tuple[str, float | None]:
    """``"conv@48" -> ("conv", 48.0)``, ``"conv" -> ("conv", None)``; a horizon that is not a positive
    finite number raises naming it."""
    base, sep, tail = name.partition(HORIZON_SEP)
    if not sep:
        return base, None
    try:
        horizon = float(tail)
    except ValueError:
        horizon = np.nan
    if not (np.isfinite(horizon) and horizon > 0):
        raise ValueError(f"criterion {name!r}: the horizon after {HORIZON_SEP!r} must be a positive flow time in "
                         f"units of 1/lambda_*, e.g. {base}{HORIZON_SEP}48")
    return base, horizon


class TimedCriterion(NamedTuple):
    """A criterion with a horizon: its judge, the runs columns it reads, and the curves columns it reads
    when judged at an explicit horizon ``T`` (none when judged at each run's own horizon)."""

    judge: Callable[..., pd.Series]
    columns: tuple[str, ...]
    curve_columns: tuple[str, ...]


# Every first time the summary records: the judge reads the one of its eps'.
T_TO_COLUMNS = tuple(t_to_column(eps) for eps in T_TO_EPS)
_CONV = ("run_id", "status", "eps", "min_rel_loss", "t", "lambda_star", *T_TO_COLUMNS)
TIMED_CRITERIA = {
    "conv": TimedCriterion(conv_success, _CONV, ()),
    "rate": TimedCriterion(rate_success, (*_CONV, "bound_violation_t"), ()),
    "rate_soft": TimedCriterion(rate_soft_success, ("run_id", "status", "t", "lambda_star", "late_rate"),
                                ("run_id", "step", "t", "rel_loss")),
    "lazy": TimedCriterion(lazy_success, ("run_id", "status", "t", "lambda_star", "max_H_drift_2", "min_lambda_ratio"),
                           ("run_id", "step", "t", "H_drift_2", "lambda_min")),
}
