"""Success of each run under the registered criteria, at tolerances ``eps'`` chosen after the
fact, and success rates per cell ``(n, k, delta, bias, m)`` with Wilson intervals.

A criterion is a function ``(runs, curves, eps') -> bool Series`` (indexed like ``runs``),
registered once with :func:`register`; the analysis, the width search and the configuration's
validation all look criteria up here (:func:`criterion`). The registered ones:

- ``interpolation`` (the optimistic reading): the relative loss ``L(t)/L(0)`` reached ``eps'``
  at some step within the budget (``min_rel_loss``, exact), even if it rose again after.
- ``settled``: the relative loss stays at or below ``eps'`` from some time on to the end of the
  budget: over the last checkpoint interval every step was at or below ``eps'``
  (``rel_loss_interval_max``; the last interval is the last ~1/8 decade of steps), or the run
  stopped on reaching its training ``eps`` (<= ``eps'``).
- ``settled_both``: ``settled``, and the value and derivative residuals each also settle below
  ``eps'`` relative to their own start (``value_rel_interval_max``, ``deriv_rel_interval_max`` on
  the last interval; for ``k = 0`` there is no derivative residual). With bias the derivative
  residual dominates the loss, so a run can settle in total while its values have not.
- ``regime``: the theorem's conclusion held until the run first reached ``eps'`` (all its budget
  if never): the bound ``||r(t)||^2 <= exp(-lambda_* t) ||r(0)||^2`` at every step
  (``bound_violation_t`` later than the first checkpoint at ``eps'``) and ``lambda_min(H(t)) >=
  lambda_*/2`` at every checkpoint up to it. Results written before ``bound_violation_t``
  existed use the checkpoint check of the bound (``bound_held``) instead.

Under all of them diverged runs are failures.

The criteria with a horizon (``conv``, ``rate``, ``rate_soft``, ``lazy``; :mod:`analysis.timed`) are
looked up here too, as ``base`` or ``base@T`` (``T`` in units of ``1/lambda_*``): ``criterion("conv@48")``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .columns import require_columns
from .defaults import CELL_KEYS, CONFIDENCE, EPS_GRID, HOMOGENEOUS_COLUMNS, STOPPED_AT_EPS
from .judging import check_judgeable
from .judging import checkpoints as _checkpoints
from .judging import not_failed as _not_failed
from .stats import wilson_interval
from .timed import TIMED_CRITERIA, parse_horizon

# Per-run columns of the success table; every other column identifies the cell.
RUN_LEVEL = ("run_id", "seed", "success")
RATE_STATS = ("trials", "successes", "rate", "rate_lo", "rate_hi")


@dataclass(frozen=True)
class Criterion:
    """A success criterion: ``judge(runs, curves, eps')`` -> bool Series indexed like ``runs``.

    ``columns`` and ``curve_columns`` declare what the judge reads of the runs and of the curves table;
    the loaders read them by default (:func:`analysis.load.load_runs`), and a criterion that reads the
    curves needs them (:attr:`needs_curves`).
    """

    name: str
    judge: Callable[[pd.DataFrame, pd.DataFrame | None, float], pd.Series]
    columns: tuple[str, ...]
    curve_columns: tuple[str, ...]
    doc: str

    @property
    def needs_curves(self) -> bool:
        return bool(self.curve_columns)


_REGISTRY: dict[str, Criterion] = {}


def _first_line(fn) -> str:
    return (fn.__doc__ or "").strip().partition("\n")[0]


def register(name: str, *, columns: Sequence[str], curve_columns: Sequence[str] = ()):
    """Register a criterion function under ``name`` (a decorator), with the runs ``columns`` and the
    ``curve_columns`` it reads (none: it judges from the runs table alone)."""
    def add(fn):
        _REGISTRY[name] = Criterion(name, fn, tuple(columns), tuple(curve_columns), _first_line(fn))
        return fn
    return add


def criterion(name: str) -> Criterion:
    """The registered criterion ``name``; an unknown name is a one-line error listing the known ones.

    A criterion with a horizon (:data:`analysis.timed.TIMED_CRITERIA`: ``conv, rate, rate_soft,
    lazy``) is named ``base`` (judged at each run's own horizon) or ``base@T`` (at flow time ``T``
    in units of ``1/lambda_*``, e.g. ``"conv@48"``); only at an explicit ``T`` do some read the curves."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    base, horizon = parse_horizon(name) if name.partition("@")[0] in TIMED_CRITERIA else (name, None)
    if base not in TIMED_CRITERIA:
        known = [*_REGISTRY, *(f"{c}[@T]" for c in TIMED_CRITERIA)]
        raise ValueError(f"criterion {name!r} is unknown; use one of {', '.join(known)}")
    timed = TIMED_CRITERIA[base]
    return Criterion(name, functools.partial(timed.judge, horizon=horizon), timed.columns,
                     timed.curve_columns if horizon is not None else (), _first_line(timed.judge))


def declared_columns() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The runs columns and the curves columns that some criterion reads: every registered one, and
    every one with a horizon judged at an explicit ``T`` (where it reads the most), each in first-seen order."""
    declared = [*_REGISTRY.values(), *TIMED_CRITERIA.values()]
    return (tuple(dict.fromkeys(c for d in declared for c in d.columns)),
            tuple(dict.fromkeys(c for d in declared for c in d.curve_columns)))


def criteria() -> tuple[str, ...]:
    """The names of the registered criteria judged on any results (the ones with a horizon, which
    need the newer summary columns, are listed by :func:`timed_criteria`)."""
    return tuple(_REGISTRY)


def timed_criteria() -> tuple[str, ...]:
    """The criteria with a horizon, by base name (``criterion(f"{base}@{T}")``): ``conv, rate, rate_soft, lazy``."""
    return tuple(TIMED_CRITERIA)


@register("interpolation", columns=("status", "eps", "min_rel_loss"))
def interpolation_success(runs: pd.DataFrame, curves: pd.DataFrame | None, eps: float) -> pd.Series:
    """The relative loss reached eps' at some step (min_rel_loss), the optimistic reading.
    Columns: ``status, eps, min_rel_loss``."""
    check_judgeable(runs, eps)
    return _not_failed(runs) & (runs["min_rel_loss"] <= eps)


def _by_run(runs: pd.DataFrame, per_run: pd.Series, missing: bool) -> pd.Series:
    """``per_run`` (indexed by run_id) aligned with ``runs``."""
    return runs["run_id"].map(per_run).fillna(missing).astype(bool)


def _settles(runs: pd.DataFrame, curves: pd.DataFrame, eps: float, quantities: Sequence[str]) -> pd.Series:
    """Each of ``quantities`` (curve columns, with their ``<q>_interval_max``) stays <= eps' over
    the last checkpoint interval; for a run stopped at its training eps, at its stop. A quantity
    that is NaN (the derivative residual at k = 0) is not judged."""
    check_judgeable(runs, eps)
    maxima = [f"{q}_interval_max" for q in quantities]
    last = _checkpoints(runs, curves, [*quantities, *maxima]).groupby("run_id").last()
    stopped = last.index.isin(runs.loc[(runs["status"] == STOPPED_AT_EPS) & (runs["eps"] <= eps), "run_id"])
    ok = pd.Series(True, index=last.index)
    for q, qmax in zip(quantities, maxima):
        ok &= last[q].isna() | np.where(stopped, last[q] <= eps, last[qmax] <= eps)
    return _not_failed(runs) & _by_run(runs, ok, False)


_SETTLES = ("run_id", "status", "eps", "min_rel_loss")


@register("settled", columns=_SETTLES, curve_columns=("run_id", "step", "rel_loss", "rel_loss_interval_max"))
def settled_success(runs: pd.DataFrame, curves: pd.DataFrame, eps: float) -> pd.Series:
    """The relative loss stays <= eps' from some time on to the end of the budget.
    runs: ``run_id, status, eps, min_rel_loss``; curves: ``run_id, step, rel_loss, rel_loss_interval_max``."""
    return _settles(runs, curves, eps, ["rel_loss"])


@register("settled_both", columns=_SETTLES,
          curve_columns=("run_id", "step", "rel_loss", "value_rel", "deriv_rel", "rel_loss_interval_max",
                         "value_rel_interval_max", "deriv_rel_interval_max"))
def settled_both_success(runs: pd.DataFrame, curves: pd.DataFrame, eps: float) -> pd.Series:
    """The loss, the value residual and the derivative residual each settle <= eps' (relative to their start).
    curves: ``run_id, step`` and ``rel_loss, value_rel, deriv_rel`` with their ``_interval_max``."""
    return _settles(runs, curves, eps, ["rel_loss", "value_rel", "deriv_rel"])


@register("regime", columns=("run_id", "status", "eps", "min_rel_loss", "lambda_star", "bound_violation_t"),
          curve_columns=("run_id", "step", "t", "rel_loss", "bound_held", "lambda_min"))
def regime_success(runs: pd.DataFrame, curves: pd.DataFrame, eps: float) -> pd.Series:
    """The theorem's bound (every step) and lambda_min(H) >= lambda_*/2 (every checkpoint) held
    until eps' was first reached.

    runs: ``run_id, status, eps, min_rel_loss, lambda_star`` (+ ``bound_violation_t``); curves:
    ``run_id, step, t, rel_loss, bound_held, lambda_min``.  A NaN ``lambda_min`` at a checkpoint is
    taken as not measured there, not as a violation.
    """
    check_judgeable(runs, eps)
    require_columns(runs, ["run_id", "lambda_star"], "runs")
    per_step = "bound_violation_t" in runs.columns and runs["bound_violation_t"].notna().any()
    extra = ["lambda_star", "bound_violation_t"] if per_step else ["lambda_star"]
    c = _checkpoints(runs, curves, (["t"] if per_step else []) + ["rel_loss", "bound_held", "lambda_min"], extra)
    reached = (c["rel_loss"] <= eps).astype(int)
    # checkpoints before the first one at eps', plus that one
    considered = (reached.groupby(c["run_id"]).cumsum() - reached) == 0
    held = ~(c["lambda_min"] < c["lambda_star"] / 2)
    checkpoint_bound = c["bound_held"].fillna(False).astype(bool)
    if per_step:
        # the bound checked at every step; rows without it (older results) use the checkpoint check
        measured = c["bound_violation_t"].notna()
        step_bound = ~(c["bound_violation_t"] <= c["t"])
        held &= np.where(measured, step_bound, checkpoint_bound)
    else:
        held &= checkpoint_bound
    violated = (considered & ~held).groupby(c["run_id"]).any()
    return _not_failed(runs) & ~_by_run(runs, violated, True)


def _check_homogeneous(runs: pd.DataFrame, keys: list[str]) -> None:
    for col in HOMOGENEOUS_COLUMNS:
        if col in runs.columns and col not in keys:
            mixed = runs.groupby(keys, dropna=False)[col].nunique(dropna=False)
            if (mixed > 1).any():
                cell = {k: getattr(v, "item", lambda: v)() for k, v in zip(keys, mixed[mixed > 1].index[0])}
                raise ValueError(f"column {col!r} takes several values within cell {cell}; filter the runs "
                                 f"or keep it apart with strata=({col!r},)")


def run_success(runs: pd.DataFrame, curves: pd.DataFrame | None = None, eps_grid: Sequence[float] = EPS_GRID,
                criteria: Sequence[str] = ("interpolation", "regime"), strata: Sequence[str] = ()) -> pd.DataFrame:
    """Long table of run successes, one row per (run, criterion, eps').

    runs: ``run_id, n, k, delta, bias, m, seed, status, eps, min_rel_loss`` (+ ``lambda_star`` and
    ``curves`` for the ``regime`` criterion).  ``strata`` are extra columns that split cells (e.g.
    ``("mode",)``); runs that differ in a column of ``HOMOGENEOUS_COLUMNS`` (every training setting
    but ``check_every`` and ``eps``, and the cell's ``d, target, delta_2``) within a cell raise.  A
    column ``runs`` lacks cannot be checked: :func:`analysis.load.load_runs` reads all of them by default.

    Returns columns ``n, k, delta, bias, *strata, criterion, eps, m, run_id, seed, success``
    (``eps`` is the tolerance eps' of the criterion, not the training one).
    """
    keys = [*CELL_KEYS, *strata]
    reserved = {"criterion", "eps", *RUN_LEVEL} & set(strata)
    if reserved:
        raise ValueError(f"strata {sorted(reserved)} would clash with the success table's own columns")
    require_columns(runs, [*keys, "run_id", "seed", "status", "eps", "min_rel_loss"], "runs")
    judges = [criterion(name) for name in criteria]
    needing = [c.name for c in judges if c.needs_curves]
    if needing and curves is None:
        raise ValueError(f"the criteria {needing} need the curves table")
    _check_homogeneous(runs, keys)

    base = runs[[*keys, "run_id", "seed"]].reset_index(drop=True)
    runs = runs.reset_index(drop=True)
    parts = []
    for judge in judges:
        for eps in eps_grid:
            ok = judge.judge(runs, curves, eps)
            parts.append(base.assign(criterion=judge.name, eps=float(eps), success=ok.to_numpy(dtype=bool)))
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
