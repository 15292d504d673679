"""How far the measured exponents move under reasonable variations of the analysis: every success
criterion, every tolerance ``eps'``, every horizon in the data (``t_max``), and leaving out the
smallest ``n``, the largest ``n`` or one data instance (``data_seed``) at a time.

Exponents come from two routes: the threshold route (logistic thresholds per cell, then
``log m* = c + p log n + q log k (+ r log delta)`` over the cells, :func:`analysis.fits.fit_exponents`)
and the floor-law route (:func:`analysis.floorlaw.fit_floor_law`; where the law's floor crosses a
tolerance, ``m* ~ n^(-a_n/a_m) k^(-a_k/a_m) delta^(-a_delta/a_m)`` at every ``eps'``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .columns import require_columns
from .defaults import CONFIDENCE, EXPONENT_TERMS, THEORY_EXPONENTS
from .fits import fit_exponents
from .floorlaw import fit_floor_law, floor_group_columns
from .judging import UnjudgeableToleranceError
from .stats import cluster_percentile_interval
from .success import criteria as registered_criteria  # the parameter ``criteria`` takes the plain name
from .success import run_success, success_rates
from .thresholds import thresholds

SENSITIVITY_EPS = (1e-2, 1e-3, 1e-4, 1e-5)
LEAVE_OUT = ("n_min", "n_max", "instance")
SENSITIVITY_COLUMNS = ["variant", "horizon", "source", "criterion", "eps", "bias", "term", "estimate", "lo", "hi",
                       "n_cells", "note"]
# Exponent of m* -> the floor-law coefficient it is derived from.
FLOOR_TERM = {"p": "n", "q": "k", "r": "delta"}


def _variants(runs: pd.DataFrame, leave_out: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """``("all", runs)`` and one subset per left-out extreme ``n`` or data instance."""
    unknown = set(leave_out) - set(LEAVE_OUT)
    if unknown:
        raise ValueError(f"leave_out has unknown entries {sorted(unknown)}; choose from {LEAVE_OUT}")
    out = [("all", runs)]
    ns = sorted(runs["n"].unique())
    for which, n in (("n_min", ns[0]), ("n_max", ns[-1])):
        if which in leave_out and len(ns) > 2:
            out.append((f"without n={n}", runs[runs["n"] != n]))
    if "instance" in leave_out and "data_seed" in runs.columns and runs["data_seed"].nunique() > 1:
        out += [(f"without data_seed={s}", runs[runs["data_seed"] != s]) for s in sorted(runs["data_seed"].unique())]
    return out


def _threshold_rows(runs, curves, criteria, eps_grid, terms, delta_fail, m_col, confidence) -> list[dict]:
    rows = []
    for criterion in criteria:
        for eps in eps_grid:
            base = {"source": "threshold", "criterion": criterion, "eps": float(eps)}
            try:
                success = run_success(runs, curves, [eps], [criterion])
            except UnjudgeableToleranceError as err:
                rows.append({**base, "term": terms[0], "note": f"not judgeable: {err}"})
                continue
            th = thresholds(success_rates(success), delta_fail=delta_fail, n_boot=0, confidence=confidence)
            fit = fit_exponents(th, m_col=m_col, terms=terms, by=["bias"], confidence=confidence)
            for _, r in fit[fit["term"] != "c"].iterrows():
                rows.append({**base, "bias": r["bias"], "term": r["term"], "estimate": r["estimate"], "lo": r["lo"],
                             "hi": r["hi"], "n_cells": r["n_cells"],
                             "note": "; ".join(filter(None, [r["note"], r["interval_note"]]))})
    return rows


def floor_exponents(fit: pd.DataFrame, terms: Sequence[str] = ("p", "q", "r"),
                    confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Exponents of ``m*(eps')`` implied by a floor law: ``p = -a_n / a_m`` etc., per group of ``fit``
    (a :func:`analysis.floorlaw.fit_floor_law` table), with intervals from its bootstrap replicates.
    Returns the group columns, ``term, estimate, lo, hi, n_instances, note``."""
    by = floor_group_columns(fit)
    rows = []
    for key, law in fit.groupby(by, sort=True, dropna=False) if by else [((), fit)]:
        key = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        law = law.set_index("term")
        for term in terms:
            coef = FLOOR_TERM[term]
            row = {**key, "term": term, "estimate": np.nan, "lo": np.nan, "hi": np.nan,
                   "n_instances": int(law["n_instances"].iloc[0]), "note": law["note"].iloc[0]}
            if coef not in law.index or "m" not in law.index or not np.isfinite(law.loc["m", "estimate"]):
                rows.append({**row, "note": f"no floor-law term for {coef} or m"})
                continue
            row["estimate"] = -law.loc[coef, "estimate"] / law.loc["m", "estimate"]
            draws = -law.loc[coef, "draws"] / law.loc["m", "draws"]
            if draws.size >= 2 and row["n_instances"] >= 2 and np.all(law.loc["m", "draws"] < 0):
                row["lo"], row["hi"] = (float(v) for v in cluster_percentile_interval(
                    row["estimate"], draws, row["n_instances"], confidence))
            else:
                row["note"] = "; ".join(filter(None, [row["note"], "no interval: floor does not fall with m in "
                                                      "every replicate, or too few instances"]))
            rows.append(row)
    return pd.DataFrame(rows)


def _floor_rows(runs, loss_col, terms, n_boot, seed, confidence) -> list[dict]:
    floor_terms = [FLOOR_TERM[t] for t in terms] + ["m"]
    fit = fit_floor_law(runs, loss_col=loss_col, terms=floor_terms, by=["bias"], n_boot=n_boot, seed=seed,
                        confidence=confidence)
    out = floor_exponents(fit, terms, confidence)
    n_cells = runs.groupby(["n", "k", "delta", "bias"]).ngroups
    return [{"source": "floor", "criterion": f"floor:{loss_col}", "eps": np.nan, "n_cells": n_cells,
             **{k: r[k] for k in ("bias", "term", "estimate", "lo", "hi", "note")}} for _, r in out.iterrows()]


def sensitivity_table(runs: pd.DataFrame, curves: pd.DataFrame | None = None, *, criteria: Sequence[str] | None = None,
                      eps_grid: Sequence[float] = SENSITIVITY_EPS, horizons: Sequence[float] | None = None,
                      leave_out: Sequence[str] = LEAVE_OUT, delta_fail: float = 0.1, m_col: str = "m_logistic",
                      terms: Sequence[str] = ("p", "q"), floor_loss_col: str | Sequence[str] | None = "final_rel_loss",
                      floor_n_boot: int = 200, seed: int = 0, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Every exponent in ``terms`` under each variant of the analysis, as one long table.

    runs: one experiment (one ``mode``, one step factor, ``k >= 1``; filter first), with
    ``n, k, delta, bias, m, t_max, data_seed`` and what ``criteria`` need; curves: the curves table
    when a criterion reads it.  Variants: ``all`` and, per ``leave_out``, the data without the
    smallest ``n``, without the largest ``n``, and without each ``data_seed``; each crossed with every
    horizon (``horizons``, default every ``t_max`` present).  Per variant and horizon: threshold
    exponents (``source = "threshold"``) for each criterion and ``eps'`` (a tolerance below the
    training ``eps`` of runs that stopped there gives a row with the reason in ``note``), and the
    floor-law exponents of each loss column in ``floor_loss_col`` (``source = "floor"``, ``criterion =
    "floor:<column>"``, ``eps`` NaN: the law's exponents of ``m*`` do not depend on ``eps'``; ``None``
    skips them), e.g. ``("final_rel_loss", "min_rel_loss")``.

    ``criteria``: names of registered criteria (default: every one, ``analysis.success.criteria()``).

    Returns ``variant, horizon, source, criterion, eps, bias, term, estimate, lo, hi, n_cells, note``.
    """
    require_columns(runs, ["n", "k", "delta", "bias", "m", "t_max"], "runs")
    if (runs["k"] < 1).any():
        raise ValueError("runs include k = 0, which has no log k: pass runs[runs['k'] >= 1] "
                         "(compare k = 0 with analysis.control_comparison)")
    unknown = [t for t in terms if t not in EXPONENT_TERMS]
    if unknown:
        raise ValueError(f"terms {unknown} unknown; choose from {sorted(EXPONENT_TERMS)}")
    if criteria is None:
        criteria = registered_criteria()
    horizons = sorted(runs["t_max"].unique()) if horizons is None else list(horizons)
    floor_cols = [] if floor_loss_col is None else [floor_loss_col] if isinstance(floor_loss_col, str) else list(floor_loss_col)
    rows = []
    for horizon in horizons:
        at_h = runs[runs["t_max"] == horizon]
        if at_h.empty:
            raise ValueError(f"horizons: no runs with t_max={horizon}; present: {sorted(runs['t_max'].unique())}")
        for variant, sub in _variants(at_h, leave_out):
            part = _threshold_rows(sub, curves, criteria, eps_grid, list(terms), delta_fail, m_col, confidence)
            for loss_col in floor_cols:
                part += _floor_rows(sub, loss_col, terms, floor_n_boot, seed, confidence)
            rows += [{"variant": variant, "horizon": float(horizon), **r} for r in part]
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


def sensitivity_summary(table: pd.DataFrame, by: Sequence[str] = ("source", "bias", "term"),
                        theory: dict = THEORY_EXPONENTS) -> pd.DataFrame:
    """The statement that holds across a :func:`sensitivity_table`: per ``by`` group, the range of the
    estimates over every variant, criterion, ``eps'`` and horizon, and the hull of their intervals.

    Returns ``*by, n_variants`` (rows with an estimate), ``n_missing``, ``estimate_min,
    estimate_median, estimate_max, lo_min, hi_max``, ``theory`` (from ``theory[bias]``),
    ``theory_excluded_everywhere`` (every interval excludes the theorem's value) and ``statement``
    (e.g. ``"p in [1.1, 1.5] across 40 variants (intervals within [0.8, 1.9]); theorem's 6 excluded
    in every one"``).
    """
    require_columns(table, [*by, "estimate", "lo", "hi"], "sensitivity table")
    rows = []
    for key, g in table.groupby(list(by), sort=True, dropna=False):
        key = dict(zip(by, key))
        est = g["estimate"].dropna()
        ref = theory.get(key.get("bias"), {}).get(key.get("term"), np.nan)
        has = g.dropna(subset=["estimate"])
        excluded = bool(len(has)) and bool(((has["hi"] < ref) | (has["lo"] > ref)).all())
        row = {**key, "n_variants": len(est), "n_missing": len(g) - len(est),
               "estimate_min": est.min(), "estimate_median": est.median(), "estimate_max": est.max(),
               "lo_min": g["lo"].min(), "hi_max": g["hi"].max(), "theory": ref, "theory_excluded_everywhere": excluded}
        row["statement"] = (f"{key.get('term', '')} in [{row['estimate_min']:.2f}, {row['estimate_max']:.2f}] across "
                            f"{len(est)} variants (intervals within [{row['lo_min']:.2f}, {row['hi_max']:.2f}])"
                            + (f"; theorem's {ref:g} excluded in every one" if excluded else ""))
        rows.append(row)
    return pd.DataFrame(rows)
