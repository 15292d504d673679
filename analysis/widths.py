"""The three widths of the theorem per cell, their laws, and the horizon at which they stop moving.

Per cell ``(n, k, delta, bias [, strata])``, at a horizon ``T`` (flow time in units of ``1/lambda_*``;
None: each run's own horizon) and a tolerance ``eps'`` (default 1e-8):

- ``m_conv(T)``: where the fraction of runs that reached ``eps'`` by ``T`` crosses ``1 - delta_fail``
  (criterion ``conv@T``, :mod:`analysis.timed`);
- ``m_rate``: the same for "the bound held at every step until ``eps'``" (``rate@T``), and its softer
  variant ``late_rate >= 1/2`` (``rate_soft@T``);
- ``m_lazy``: the same for "``||H(t) - H(0)||_2 <= lambda_*/4`` and ``lambda_min(H(t)) >= lambda_*/2``
  up to ``T``" (``lazy@T``), measured directly, and from the drift law
  ``log(max ||H(t) - H(0)||_2 / lambda_*) = c + a_n log n + a_k log k + a_delta log delta + a_m log m``
  (:func:`analysis.floorlaw.fit_floor_law`, ``k = 0`` in its own group) solved for ``1/4`` at rate
  ``1 - delta_fail`` (:func:`analysis.floorlaw.m_star_from_floor_law`): the empirical twin of how the
  paper derives ``m_thm``.  Lemma 4 makes the drift the binding condition (``lambda_min(H(0)) >=
  3/4 lambda_*`` and a drift below ``lambda_*/4`` keep ``lambda_min(H(t)) >= lambda_*/2``).

A direct width is the logistic threshold with an instance-then-seed interval
(:func:`analysis.thresholds.instance_thresholds`) beside the grid threshold
(:func:`analysis.thresholds.grid_threshold`).  A cell that never gets there is censored above
(``"> m_max"``, NaN estimate, never a number), one already there at the smallest width below
(``"<= m_min"``); ``rises_with_m`` says whether the fraction demonstrably rises with ``m`` (the
logistic slope's interval lies above 0), and a cell where it does not is said so in ``note`` (a
crossing it still has is labelled ``"(not rising)"`` and left out of the laws).

The laws ``log m_x = c + p log n + q log k + r log delta`` are fitted over the uncensored cells
(:func:`analysis.fits.fit_exponents`; censored cells left out and counted), beside ``m_thm``'s
exponents over the same cells and the published laws (:mod:`analysis.known`), in one table,
``laws.csv``, that records the studied domain too (:func:`laws_table`, :func:`write_laws`).

The horizon rule (:func:`study_horizon`): an entry (a cell's width, or a law's exponent) moves from
horizon ``H_i`` to a later ``H_j`` when its censoring changes, when the width at ``H_j`` lies outside
the interval at ``H_i``, or when the exponent changes by at least the half-width of its interval at
``H_i`` (with no interval at ``H_i``: when the value changes at all; an entry present at one horizon
and missing at the other moves).  The study's horizon is the shortest ``H_i`` from which no entry
moves to any later horizon; the longest horizon cannot be checked, so it is never chosen by the rule.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .columns import require_columns
from .comparisons import THEOREM_CAVEAT, theorem_exponents
from .defaults import ABOVE, BELOW, CONFIDENCE, EXPONENT_TERMS, NOT_CENSORED, THRESHOLD_KEYS, UNDEFINED
from .fits import design_matrix, uncensored_cells, fit_exponents
from .floorlaw import FLOOR_N_BOOT, FLOOR_TERMS, K_GROUP, add_k_group, fit_floor_law, m_star_from_floor_law
from .known import known_laws
from .stats import normal_quantile, cluster_percentile_interval, firth_logistic
from .success import run_success, success_rates
from .thresholds import instance_thresholds, thresholds
from .timed import LAZY_DRIFT_MAX, TIMED_CRITERIA, judged_at_own_stop, drift_until, timed_name

QUANTITIES = ("conv", "rate", "rate_soft", "lazy")
DEFAULT_EPS = 1e-8
DIRECT = "thresholds"
DRIFT = "drift_law"
THEOREM = "theorem"
LAWS_FILE = "laws.csv"
WIDTH_COLUMNS = ["quantity", "method", "criterion", "horizon", "eps", "target", "estimate", "lo", "hi", "censored",
                 "bound", "label", "extrapolated", "rises_with_m", "slope", "slope_lo", "slope_hi", "m_grid",
                 "grid_censored", "n_widths", "m_min", "m_max", "n_instances", "trials_min", "note"]
# The laws table: what a law says, its interval and covariance (for a prediction's interval), and the
# domain it was measured on (a prediction outside it is refused).
DOMAIN_COLUMNS = ["n_min", "n_max", "k_min", "k_max", "delta_min", "delta_max", "d_min", "d_max", "m_min", "m_max"]
LAW_TERMS = ("c", "p", "q", "r")
LAWS_COLUMNS = ["quantity", "method", "term", "regressor", "estimate", "lo", "hi", "se", "dof",
                *(f"cov_{t}" for t in LAW_TERMS), "horizon", "criterion", "eps", "rate", "bias", K_GROUP, "delta",
                "n_cells", "n_censored", *DOMAIN_COLUMNS, "theory", "note"]


def _check_quantities(quantities: Sequence[str]) -> None:
    unknown = [q for q in quantities if q not in TIMED_CRITERIA]
    if unknown:
        raise ValueError(f"quantities {unknown} are unknown; use some of {QUANTITIES}")


def _slopes(success: pd.DataFrame, keys: list[str], confidence: float) -> pd.DataFrame:
    """Per cell, the Firth logistic slope of success on ``log m`` with a Wald interval."""
    rows = []
    z = normal_quantile(confidence)
    for key, cell in success.groupby(keys, sort=True, dropna=False):
        pooled = cell.groupby("m")["success"].agg(trials="size", successes="sum")
        row = dict(zip(keys, key), slope=np.nan, slope_lo=np.nan, slope_hi=np.nan)
        if len(pooled) >= 2:
            x = np.log(pooled.index.to_numpy(float))
            beta, cov = firth_logistic(x - x.mean(), pooled["successes"].to_numpy(float),
                                       pooled["trials"].to_numpy(float))
            se = float(np.sqrt(cov[1, 1]))
            row.update(slope=float(beta[1]), slope_lo=float(beta[1] - z * se), slope_hi=float(beta[1] + z * se))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, "slope", "slope_lo", "slope_hi"])


def _label(row) -> str:
    if row["censored"] == ABOVE:
        return f"> {row['m_max']:g}"
    if row["censored"] == BELOW:
        return f"<= {row['m_min']:g}"
    if row["censored"] != NOT_CENSORED or not np.isfinite(row["estimate"]):
        return "undefined"
    text = f"{row['estimate']:.0f}"
    if np.isfinite(row["lo"]) and np.isfinite(row["hi"]):
        text += f" [{row['lo']:.0f}, {row['hi']:.0f}]"
    elif np.isfinite(row["lo"]):
        text += f" [{row['lo']:.0f}, inf]"
    extrapolated, rises = row.get("extrapolated", False), row.get("rises_with_m", np.nan)
    if isinstance(rises, (bool, np.bool_)) and not rises:
        text += " (not rising)"
    return text + (" (extrapolated)" if isinstance(extrapolated, (bool, np.bool_)) and extrapolated else "")


def width_thresholds(runs: pd.DataFrame, curves: pd.DataFrame | None = None, *, quantity: str,
                     horizon: float | None = None, eps: float = DEFAULT_EPS, delta_fail: float = 0.1,
                     strata: Sequence[str] = (), instance_col: str = "data_seed", n_boot: int = 400, seed: int = 0,
                     confidence: float = CONFIDENCE) -> pd.DataFrame:
    """The direct width of one quantity per cell: the logistic threshold of its criterion at ``T``.

    Args:
        runs: the runs table (the columns of the quantity's criterion, :mod:`analysis.timed`, and
            ``n, k, delta, bias, m, run_id, seed, instance_col``).
        curves: the curves table (``rate_soft`` and ``lazy`` at an explicit horizon need it).
        quantity: ``conv``, ``rate``, ``rate_soft`` or ``lazy``.
        horizon: ``T`` in units of ``1/lambda_*``; None: each run's own horizon.
        eps: the tolerance ``eps'``.
        delta_fail: the threshold is where the success fraction reaches ``1 - delta_fail``.
        strata: extra columns that split cells (e.g. ``("d",)``).

    Returns:
        One row per cell: ``n, k, delta, bias, *strata`` and :data:`WIDTH_COLUMNS`: ``estimate, lo, hi``
        (the logistic threshold and its instance-then-seed interval; NaN where censored), ``censored``
        (``none``, ``above``, ``below`` or ``undefined``; an undefined logistic fit takes the grid's
        censoring when that is above or below), ``bound`` (the width a censored cell is beyond),
        ``label`` (``"1234 [800, 2000]"``, ``"> 16384"``, ``"<= 256"``; ``"(not rising)"`` appended to a
        crossing whose fit does not demonstrably rise with ``m``), ``rises_with_m, slope,
        slope_lo, slope_hi`` (the logistic slope per unit ``log m``), ``m_grid, grid_censored`` (the
        grid threshold), ``n_widths, m_min, m_max, n_instances, trials_min, note``.
    """
    _check_quantities([quantity])
    name = timed_name(quantity, horizon)
    success = run_success(runs, curves, eps_grid=[eps], criteria=[name], strata=strata)
    keys = [*THRESHOLD_KEYS, *strata, "criterion", "eps"]
    inst = instance_thresholds(success, runs, delta_fail=delta_fail, instance_col=instance_col, n_boot=n_boot,
                               seed=seed, confidence=confidence)
    grid = thresholds(success_rates(success), delta_fail=delta_fail, n_boot=0, confidence=confidence)
    grid = grid[[*keys, "m_star", "censored", "m_bound", "m_min", "m_max"]].rename(
        columns={"m_star": "m_grid", "censored": "grid_censored"})
    out = inst.merge(grid, on=keys, how="left").merge(_slopes(success, keys, confidence), on=keys, how="left")
    flag = out["logistic_censored"].where(
        (out["logistic_censored"] != UNDEFINED) | ~out["grid_censored"].isin([ABOVE, BELOW]), out["grid_censored"])
    out = out.assign(quantity=quantity, method=DIRECT, horizon=np.nan if horizon is None else float(horizon),
                     estimate=out["m_logistic"].where(flag == NOT_CENSORED), lo=out["m_lo"], hi=out["m_hi"],
                     censored=flag, extrapolated=False, rises_with_m=out["slope_lo"] > 0)
    out["bound"] = np.where(out["censored"] == ABOVE, out["m_max"], np.where(out["censored"] == BELOW, out["m_min"],
                                                                                np.nan))
    out["label"] = out.apply(_label, axis=1) if len(out) else pd.Series(dtype=str)
    out["note"] = [_width_note(row) for _, row in out.iterrows()]
    return out[[*THRESHOLD_KEYS, *strata, *WIDTH_COLUMNS]]


def _width_note(row) -> str:
    notes = []
    if row["censored"] == ABOVE:
        notes.append(f"never reaches {row['target']:g} over the studied widths: > {row['m_max']:g}")
    elif row["censored"] == BELOW:
        notes.append(f"already at {row['target']:g} at the smallest width: <= {row['m_min']:g}")
    elif row["censored"] == UNDEFINED:
        notes.append("no threshold: the logistic fit does not rise with m")
    if not row["rises_with_m"] and row["censored"] != BELOW:
        notes.append(f"the fraction does not rise with m over [{row['m_min']:g}, {row['m_max']:g}] (logistic slope "
                     f"{row['slope']:.2f} [{row['slope_lo']:.2f}, {row['slope_hi']:.2f}] per unit log m)")
    if row["censored"] == NOT_CENSORED and row["grid_censored"] == ABOVE:
        notes.append("the rate at the largest width is below the target (grid threshold: above)")
    if row["interval_note"]:
        notes.append(row["interval_note"])
    return "; ".join(notes)


def drift_ratios(runs: pd.DataFrame, curves: pd.DataFrame | None = None, horizon: float | None = None) -> pd.Series:
    """``max ||H(t) - H(0)||_2 / lambda_*`` per run, over its whole run (``horizon`` None, from the runs'
    ``max_H_drift_2``) or up to ``min(T, stop)`` (from the curves' ``H_drift_2``), as :func:`lazy@T
    <analysis.timed.lazy_success>` reads it.  Indexed like ``runs``."""
    require_columns(runs, ["max_H_drift_2", "lambda_star"], "runs")
    ratio = runs["max_H_drift_2"].astype(float) / runs["lambda_star"].astype(float)
    if horizon is not None:
        own = judged_at_own_stop(runs, horizon)
        if not own.all():
            ratio = ratio.where(own, drift_until(runs, curves, horizon)["drift_ratio"])
    return ratio.rename("drift_ratio")


def drift_law(runs: pd.DataFrame, curves: pd.DataFrame | None = None, *, horizon: float | None = None,
              terms: Sequence[str] = FLOOR_TERMS, by: Sequence[str] = ("bias",), n_boot: int = FLOOR_N_BOOT,
              seed: int = 0, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """The drift law ``log(max ||H(t) - H(0)||_2 / lambda_*) = c + sum_t a_t log t`` per group, every drift
    observed (:func:`analysis.floorlaw.fit_floor_law` with ``censor_col=None``).

    Args:
        runs: ``status, max_H_drift_2, lambda_star, *terms, *by`` and the instance columns.
        curves: with ``horizon``, the curves' ``t, H_drift_2`` (see :func:`drift_ratios`).
        by: group columns; ``k_group`` is added when ``"k" in terms`` (``k = 0`` has no ``log k``).  Without a
            horizon each run's drift is over its own budget: runs of different ``t_max`` are then not
            comparable, so pass a ``horizon`` (the drift is reached early) or add ``t_max`` to ``by``.

    Returns:
        A :func:`analysis.floorlaw.fit_floor_law` table (``*by, k_group, term, estimate, se, lo, hi, ...,
        draws``); the ``m`` term is ``a_m = -e`` (negative when the drift falls with the width).
    """
    data = runs.assign(drift_ratio=drift_ratios(runs, curves, horizon))
    by = [*by, *([K_GROUP] if "k" in terms and K_GROUP not in by else [])]
    return fit_floor_law(data, loss_col="drift_ratio", terms=terms, by=by, censor_col=None, n_boot=n_boot, seed=seed,
                         confidence=confidence)


def _cells(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The cells of ``runs`` with their studied widths ``m_min, m_max``."""
    return runs.groupby(keys, dropna=False)["m"].agg(m_min="min", m_max="max").reset_index()


def lazy_from_drift(law: pd.DataFrame, cells: pd.DataFrame, *, delta_fail: float = 0.1,
                    horizon: float | None = None, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """``m_lazy`` from the drift law: the width at which a fraction ``1 - delta_fail`` of runs keeps the
    drift at or below ``lambda_*/4``.

    Args:
        law: a :func:`drift_law` table.
        cells: ``n, k, delta`` and the law's group columns, with ``m_min, m_max`` (the studied widths).

    Returns:
        ``cells`` columns and :data:`WIDTH_COLUMNS` (``method = "drift_law"``): ``estimate, lo, hi``
        (percentile interval over the law's bootstrap), ``extrapolated`` (beyond ``m_max``: a solve of
        the law, not a measurement, said in ``label`` and ``note``); a law whose drift does not fall with
        ``m`` has no solution (``censored = "undefined"``, NaN).
    """
    require_columns(cells, ["m_min", "m_max"], "cells")
    solved = m_star_from_floor_law(law, LAZY_DRIFT_MAX, cells, rate=1 - delta_fail, confidence=confidence)
    est = solved["m_star_floor"].astype(float)
    ok = np.isfinite(est)
    out = solved.assign(
        quantity="lazy", method=DRIFT, criterion=timed_name("lazy", horizon), target=1 - delta_fail,
        horizon=np.nan if horizon is None else float(horizon), estimate=est.where(ok),
        lo=solved["m_star_floor_lo"].where(ok), hi=solved["m_star_floor_hi"].where(ok),
        censored=np.where(ok, NOT_CENSORED, UNDEFINED), bound=np.nan, extrapolated=ok & (est > solved["m_max"]),
        rises_with_m=np.nan, slope=np.nan, slope_lo=np.nan, slope_hi=np.nan, m_grid=np.nan, grid_censored="",
        n_widths=np.nan, n_instances=np.nan, trials_min=np.nan)
    out["eps"] = LAZY_DRIFT_MAX
    out["label"] = out.apply(_label, axis=1) if len(out) else pd.Series(dtype=str)
    notes = []
    for _, row in out.iterrows():
        note = [row["note"]] if row["note"] else []
        if not np.isfinite(row["m_star_floor"]):
            note.append("no solution: the drift law does not fall with m")
        elif row["extrapolated"]:
            note.append(f"extrapolated: beyond the largest studied width {row['m_max']:g}")
        if row["rising_frac"] > 0:
            note.append(f"{row['rising_frac']:.0%} of bootstrap laws do not fall with m (interval open above)")
        notes.append("; ".join(note))
    out["note"] = notes
    return out


def widths_table(runs: pd.DataFrame, curves: pd.DataFrame | None = None, *, horizon: float | None = None,
                 eps: float = DEFAULT_EPS, delta_fail: float = 0.1, quantities: Sequence[str] = QUANTITIES,
                 strata: Sequence[str] = (), drift: pd.DataFrame | None = None, instance_col: str = "data_seed",
                 n_boot: int = 400, seed: int = 0, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """The widths of ``quantities`` per cell at one horizon: the direct thresholds
    (:func:`width_thresholds`) and, when ``lazy`` is asked for, ``m_lazy`` from the drift law
    (:func:`lazy_from_drift`; ``drift`` a precomputed :func:`drift_law` at the same horizon, else fitted).

    Returns:
        ``n, k, delta, bias, *strata`` and :data:`WIDTH_COLUMNS`, one row per cell, quantity and method
        (``thresholds`` or ``drift_law``).
    """
    _check_quantities(quantities)
    parts = [width_thresholds(runs, curves, quantity=q, horizon=horizon, eps=eps, delta_fail=delta_fail,
                              strata=strata, instance_col=instance_col, n_boot=n_boot, seed=seed + i,
                              confidence=confidence) for i, q in enumerate(quantities)]
    if "lazy" in quantities:
        if drift is None:
            drift = drift_law(runs, curves, horizon=horizon, by=("bias", *strata), seed=seed, confidence=confidence)
        cells = _cells(runs, [*THRESHOLD_KEYS, *strata])
        lazy = lazy_from_drift(drift, cells, delta_fail=delta_fail, horizon=horizon, confidence=confidence)
        parts.append(lazy[[*THRESHOLD_KEYS, *strata, *WIDTH_COLUMNS]])
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Laws


def _domain(cells: pd.DataFrame, runs: pd.DataFrame) -> dict:
    """The studied domain of a law: ranges of the cells' ``n, k, delta``, their widths, and ``d``."""
    d = runs["d"].astype(float) if "d" in runs.columns else pd.Series([np.nan])
    return {"n_min": cells["n"].min(), "n_max": cells["n"].max(), "k_min": cells["k"].min(), "k_max": cells["k"].max(),
            "delta_min": cells["delta"].min(), "delta_max": cells["delta"].max(), "d_min": d.min(), "d_max": d.max(),
            "m_min": cells["m_min"].min(), "m_max": cells["m_max"].max()}


def _covariance(cells: pd.DataFrame, terms: list[str], fit: pd.DataFrame, m_col: str) -> dict[str, dict[str, float]]:
    """The OLS covariance ``s^2 (X^T X)^-1`` of the fit over ``cells`` (uncensored), by term name."""
    names = ["c", *terms]
    X, _ = design_matrix(cells, terms)
    y = np.log(cells[m_col].to_numpy(float))
    dof = len(y) - len(names)
    nan = {a: {b: np.nan for b in names} for a in names}
    if dof <= 0 or np.linalg.matrix_rank(X) < len(names):
        return nan
    beta = fit.set_index("term").loc[names, "estimate"].to_numpy(float)
    s2 = float(np.sum((y - X @ beta) ** 2)) / dof
    cov = s2 * np.linalg.inv(X.T @ X)
    return {a: {b: float(cov[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)}


def _law_rows(fit: pd.DataFrame, cov: dict, common: dict) -> list[dict]:
    rows = []
    for _, r in fit.iterrows():
        row = {**common, "term": r["term"], "regressor": EXPONENT_TERMS.get(r["term"], "1"), "estimate": r["estimate"],
               "lo": r["lo"], "hi": r["hi"], "se": r["se"], "dof": r["dof"], "theory": r["theory"],
               "n_cells": r["n_cells"], "n_censored": r["n_censored"],
               "note": "; ".join(filter(None, [str(r["note"] or ""), str(r["interval_note"] or ""),
                                               common.get("note", "")]))}
        for t in LAW_TERMS:
            row[f"cov_{t}"] = cov.get(r["term"], {}).get(t, np.nan)
        rows.append(row)
    return rows


def _threshold_laws(widths: pd.DataFrame, runs: pd.DataFrame, quantity: str, group_keys: list[str],
                    terms: Sequence[str], confidence: float) -> list[dict]:
    w = add_k_group(widths[(widths["quantity"] == quantity) & (widths["method"] == DIRECT)])
    if w.empty:
        return []
    # a crossing of a logistic fit that does not demonstrably rise with m is not a threshold to fit
    flat = (w["censored"] == NOT_CENSORED) & ~w["rises_with_m"].astype(bool)
    th = w.assign(m_logistic=w["estimate"], logistic_censored=w["censored"].where(~flat, UNDEFINED))
    fit = fit_exponents(th, m_col="m_logistic", terms=terms, by=group_keys, confidence=confidence)
    rows = []
    for key, group in th.groupby(group_keys, sort=True, dropna=False):
        key = dict(zip(group_keys, key))
        sel = np.logical_and.reduce([fit[c] == v for c, v in key.items()])
        f = fit[sel]
        used = [t for t in f["term"] if t != "c"]
        cells = group[uncensored_cells(group, "m_logistic")]
        cov = _covariance(cells, used, f, "m_logistic") if np.isfinite(f["estimate"]).all() else {}
        n_flat = int(flat[group.index].sum())
        common = {"quantity": quantity, "method": DIRECT, "horizon": group["horizon"].iloc[0],
                  "criterion": group["criterion"].iloc[0], "eps": group["eps"].iloc[0], "rate": group["target"].iloc[0],
                  **key, **_domain(group, runs),
                  "note": f"{n_flat} cell(s) whose fraction does not rise with m left out" if n_flat else ""}
        rows += _law_rows(f, cov, common)
    return rows


def _lazy_law(coef: dict, mapped: list[tuple[str, str]], z: float) -> tuple[dict, object]:
    """``(c, p, q, r)`` of ``log m_lazy`` from the drift law's coefficients (numbers, or arrays of replicates),
    and ``a_m``."""
    a_m = coef["m"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"c": (np.log(LAZY_DRIFT_MAX) - coef["c"] - z * coef["sigma"]) / a_m}
        out.update({t: -coef[r] / a_m for t, r in mapped})
    return out, a_m


def _drift_law_rows(law: pd.DataFrame, widths: pd.DataFrame, runs: pd.DataFrame, group_keys: list[str],
                    delta_fail: float, horizon: float | None, confidence: float) -> list[dict]:
    """The law of ``m_lazy`` implied by the drift law: ``log m = (log(1/4) - c - z sigma - sum a_t log t) / a_m``,
    i.e. ``p = -a_n/a_m``, ``q = -a_k/a_m``, ``r = -a_delta/a_m``, with percentile intervals and the
    covariance over the law's bootstrap replicates."""
    z = float(stats.norm.ppf(1 - delta_fail))
    w = add_k_group(widths[(widths["quantity"] == "lazy") & (widths["method"] == DRIFT)])
    rows = []
    # a drift law fitted apart per separation gives one m_lazy law per separation (laws.csv's delta column)
    keys = [*group_keys, *(["delta"] if "delta" in law.columns and "delta" not in group_keys else [])]
    for key, group in law.groupby(keys, sort=True, dropna=False):
        key = dict(zip(keys, key))
        g = group.set_index("term")
        sel = np.logical_and.reduce([w[c] == v for c, v in key.items()]) if len(w) else np.zeros(0, bool)
        cells = w[sel]
        common = {"quantity": "lazy", "method": DRIFT, "horizon": np.nan if horizon is None else float(horizon),
                  "criterion": timed_name("lazy", horizon), "eps": LAZY_DRIFT_MAX, "rate": 1 - delta_fail, **key,
                  "n_cells": len(cells), "n_censored": 0, "dof": np.nan, "theory": np.nan,
                  **(_domain(cells, runs) if len(cells) else {})}
        if "m" not in g.index or not np.isfinite(g.loc["m", "estimate"]):
            rows.append({**common, "term": "c", "estimate": np.nan, "note": f"no drift law: {g['note'].iloc[0]}"})
            continue
        mapped = [(t, r) for t, r in (("p", "n"), ("q", "k"), ("r", "delta")) if r in g.index]
        point, a_m = _lazy_law({t: float(g.loc[t, "estimate"]) for t in g.index}, mapped, z)
        draws, a_m_draws = _lazy_law({t: np.asarray(g.loc[t, "draws"], dtype=float) for t in g.index}, mapped, z)
        falling = a_m_draws < 0
        names = list(point)
        D = np.column_stack([draws[t][falling] for t in names]) if falling.any() else np.empty((0, len(names)))
        n_inst = int(g["n_instances"].iloc[0])
        note = str(g["note"].iloc[0] or "")
        if a_m >= 0:
            rows += [{**common, "term": t, "estimate": np.nan, "note": "the drift does not fall with m: no m_lazy"}
                     for t in names]
            continue
        extra = f"{np.mean(~falling):.0%} of bootstrap laws do not fall with m, left out" if (~falling).any() else ""
        # np.cov of one column is 0-d: a law with only its intercept (every regressor constant) needs it 2-d
        cov = np.atleast_2d(np.cov(D, rowvar=False)) if len(D) >= 2 else np.full((len(names), len(names)), np.nan)
        for i, t in enumerate(names):
            lo = hi = np.nan
            if len(D) >= 2 and n_inst >= 2 and np.ptp(D[:, i]) > 0:
                lo, hi = (float(v) for v in cluster_percentile_interval(point[t], D[:, i], n_inst, confidence))
            row = {**common, "term": t, "regressor": EXPONENT_TERMS.get(t, "1"), "estimate": point[t], "lo": lo,
                   "hi": hi, "se": float(np.sqrt(cov[i, i])) if len(D) >= 2 else np.nan,
                   "note": "; ".join(filter(None, ["from the drift law solved for lambda_*/4", note, extra]))}
            for j, u in enumerate(names):
                row[f"cov_{u}"] = float(cov[i, j])
            rows.append(row)
    return rows


def _theorem_rows(widths: pd.DataFrame, runs: pd.DataFrame, quantity: str, strata: Sequence[str],
                  terms: Sequence[str], confidence: float) -> list[dict]:
    """``m_thm``'s exponents over the cells where ``quantity`` has an uncensored direct width (k >= 1)."""
    w = widths[(widths["quantity"] == quantity) & (widths["method"] == DIRECT) & (widths["censored"] == NOT_CENSORED)
               & (widths["k"] >= 1)]
    if w.empty or "m_thm" not in runs.columns:
        return []
    keys = [*THRESHOLD_KEYS, *strata]
    sub = runs.merge(w[keys].drop_duplicates(), on=keys, how="inner")
    fit = theorem_exponents(sub, terms=terms, by=("bias", *strata), confidence=confidence)
    cells = _cells(sub, keys)
    rows = []
    for key, f in fit.groupby(["bias", *strata], sort=True, dropna=False):
        key = dict(zip(["bias", *strata], key if isinstance(key, tuple) else (key,)))
        sel = np.logical_and.reduce([cells[c] == v for c, v in key.items()])
        common = {"quantity": "m_thm", "method": THEOREM, "horizon": w["horizon"].iloc[0],
                  "criterion": w["criterion"].iloc[0], "eps": w["eps"].iloc[0], "rate": w["target"].iloc[0], **key,
                  K_GROUP: "k>=1", **_domain(cells[sel], sub), "note": f"over the uncensored {quantity} cells; "
                                                                      f"{THEOREM_CAVEAT}"}
        rows += _law_rows(f, {}, common)
    return rows


def laws_table(runs: pd.DataFrame, curves: pd.DataFrame | None = None, *, widths: pd.DataFrame | None = None,
               drift: pd.DataFrame | None = None, horizon: float | None = None, eps: float = DEFAULT_EPS,
               delta_fail: float = 0.1, quantities: Sequence[str] = QUANTITIES, strata: Sequence[str] = (),
               terms: Sequence[str] = ("p", "q", "r"), theorem: bool = True, known: bool = True, n_boot: int = 400,
               seed: int = 0, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """The laws ``log m_x = c + p log n + q log k + r log delta`` of the widths, beside ``m_thm``'s and the
    published ones: the table shipped as ``results/<study>/laws.csv``.

    Args:
        runs, curves: the study's tables.
        widths: a :func:`widths_table` at ``horizon`` (computed when None).
        drift: a :func:`drift_law` at ``horizon`` (fitted when None and ``lazy`` is asked for).
        horizon, eps, delta_fail, quantities, strata: as in :func:`widths_table`.
        terms: the exponents fitted (``p, q, r`` of ``n, k, delta``); a term whose regressor is constant
            over a group's uncensored cells is left out of that group.
        theorem: add ``m_thm``'s exponents over each quantity's uncensored cells (``k >= 1``).
        known: add the published laws (:func:`analysis.known.known_laws`).

    Returns:
        :data:`LAWS_COLUMNS` (``*strata`` after ``k_group``), one row per law and term:
        ``quantity`` (``conv, rate, rate_soft, lazy, m_thm, known``), ``method`` (``thresholds``: a fit of
        the direct widths over uncensored cells, OLS t-intervals; ``drift_law``: ``m_lazy``'s law from the
        drift law, bootstrap intervals; ``theorem``; a paper for ``known``), ``term`` (``c, p, q, r``),
        ``regressor, estimate, lo, hi, se, dof``, ``cov_c .. cov_r`` (the term's row of the estimates'
        covariance: a prediction's interval needs it), ``horizon`` (NaN: each run's own), ``criterion, eps,
        rate`` (``1 - delta_fail``), ``bias, k_group``, ``delta`` (the separation of a law fitted apart per
        separation: the drift law's and its ``m_lazy``'s when ``drift`` has a ``delta`` column; empty for a law
        over separations), ``n_cells, n_censored`` (cells left out: censored,
        undefined, or a crossing whose fraction does not rise with ``m``), the studied domain ``n_min ..
        m_max`` (``m_min, m_max``: the widths studied), ``theory`` (the theorem's nominal exponent) and ``note``.
    """
    _check_quantities(quantities)
    if "lazy" in quantities and drift is None:
        drift = drift_law(runs, curves, horizon=horizon, by=("bias", *strata), seed=seed, confidence=confidence)
    if widths is None:
        widths = widths_table(runs, curves, horizon=horizon, eps=eps, delta_fail=delta_fail, quantities=quantities,
                              strata=strata, drift=drift, n_boot=n_boot, seed=seed, confidence=confidence)
    group_keys = ["bias", K_GROUP, *strata]
    rows = []
    for q in quantities:
        rows += _threshold_laws(widths, runs, q, group_keys, terms, confidence)
        if q == "lazy":
            rows += _drift_law_rows(drift, widths, runs, group_keys, delta_fail, horizon, confidence)
        if theorem:
            rows += _theorem_rows(widths, runs, q, strata, terms, confidence)
    table = pd.DataFrame(rows)
    if known:
        table = pd.concat([table, known_laws()], ignore_index=True)
    at = LAWS_COLUMNS.index(K_GROUP) + 1
    columns = [*LAWS_COLUMNS[:at], *strata, *LAWS_COLUMNS[at:]]
    return table.reindex(columns=columns)


def write_laws(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a :func:`laws_table` to ``path`` (a results directory: ``<path>/laws.csv``; or a ``.csv``
    file), atomically (a reader never sees half a file).  Returns the file written."""
    require_columns(table, LAWS_COLUMNS, "laws")
    path = Path(path)
    if path.suffix != ".csv":
        path = path / LAWS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_laws(path: str | os.PathLike) -> pd.DataFrame:
    """A ``laws.csv`` written by :func:`write_laws` (a results directory or the file), with ``bias`` as
    booleans again."""
    path = Path(path)
    if path.suffix != ".csv":
        path = path / LAWS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: write it with analysis.write_laws(analysis.laws_table(runs, curves), "
                                f"results_dir)")
    table = pd.read_csv(path, keep_default_na=True)
    require_columns(table, LAWS_COLUMNS, f"laws ({path})")
    table["bias"] = table["bias"].map({True: True, False: False, "True": True, "False": False})
    for col in ("note", "criterion", "method", "quantity", "term", "regressor", K_GROUP):
        table[col] = table[col].astype(object).fillna("")
    return table


# --------------------------------------------------------------------------------------------
# Horizons

HORIZON_COLUMNS = ["kind", "quantity", "method", "n", "k", "delta", "bias", K_GROUP, "term", "horizon", "estimate",
                   "lo", "hi", "censored", "label", "moves_later"]


def horizon_table(runs: pd.DataFrame, curves: pd.DataFrame | None = None, horizons: Sequence[float] = (12, 24, 48),
                  *, eps: float = DEFAULT_EPS, delta_fail: float = 0.1,
                  quantities: Sequence[str] = ("conv", "rate", "lazy"),
                  strata: Sequence[str] = (), terms: Sequence[str] = ("p", "q", "r"), n_boot: int = 400, seed: int = 0,
                  confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Each width and each law exponent at each horizon, and whether it still moves later.

    Args:
        horizons: flow times in units of ``1/lambda_*``, e.g. ``(T, 2T, 4T)``; every run must be observed
            through the longest (or have stopped at its training ``eps``).
        the rest: as in :func:`widths_table` and :func:`laws_table`.

    Returns:
        :data:`HORIZON_COLUMNS` (``*strata`` after ``k_group``): ``kind`` (``width``: a cell's width, with
        ``n, k, delta``; ``exponent``: a law's ``p, q, r``, with ``term``), ``quantity, method, bias,
        k_group, horizon, estimate, lo, hi, censored, label`` and ``moves_later``: the entry moves from
        this horizon to some later one by the rule of the module docstring (False at the longest).
        :func:`study_horizon` picks the horizon from it.
    """
    horizons = sorted(float(h) for h in horizons)
    if len(horizons) < 2 or horizons[0] <= 0:
        raise ValueError(f"horizons must be at least two positive flow times (1/lambda_*), got {horizons}")
    parts = []
    for h in horizons:
        drift = (drift_law(runs, curves, horizon=h, by=("bias", *strata), seed=seed, confidence=confidence)
                 if "lazy" in quantities else None)
        w = widths_table(runs, curves, horizon=h, eps=eps, delta_fail=delta_fail, quantities=quantities, strata=strata,
                         drift=drift, n_boot=n_boot, seed=seed, confidence=confidence)
        laws = laws_table(runs, curves, widths=w, drift=drift, horizon=h, eps=eps, delta_fail=delta_fail,
                          quantities=quantities, strata=strata, terms=terms, theorem=False, known=False,
                          n_boot=n_boot, seed=seed, confidence=confidence)
        parts.append(add_k_group(w).assign(kind="width", term="", horizon=h))
        exps = laws[laws["term"].isin(terms)].assign(kind="exponent", horizon=h, censored="", label="")
        parts.append(exps)
    table = pd.concat(parts, ignore_index=True)
    columns = [*HORIZON_COLUMNS[:HORIZON_COLUMNS.index(K_GROUP) + 1], *strata,
               *HORIZON_COLUMNS[HORIZON_COLUMNS.index(K_GROUP) + 1:]]
    return mark_moves(table.reindex(columns=columns))


def _moves(kind: str, a, b) -> bool:
    """Whether entry ``a`` (at the earlier horizon) moves to ``b`` (a later one); either may be None."""
    if a is None or b is None:
        return a is not b
    ea, eb = float(a["estimate"]), float(b["estimate"])
    if kind == "width" and a["censored"] != b["censored"]:
        return True
    if not np.isfinite(ea) or not np.isfinite(eb):
        return np.isfinite(ea) != np.isfinite(eb)
    lo, hi = float(a["lo"]), float(a["hi"])
    if kind == "width":
        if np.isfinite(lo) or np.isfinite(hi):
            lo = lo if np.isfinite(lo) else -np.inf
            hi = hi if not np.isnan(hi) else np.inf
            return not lo <= eb <= hi
    elif np.isfinite(lo) and np.isfinite(hi):
        return abs(eb - ea) >= (hi - lo) / 2
    return not np.isclose(ea, eb, rtol=1e-9, atol=0)


def mark_moves(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (rows of :func:`horizon_table`, without ``moves_later`` or with it) with ``moves_later``
    recomputed by the rule of the module docstring."""
    require_columns(table, ["kind", "quantity", "method", "term", "horizon", "estimate", "lo", "hi", "censored"],
                    "horizons")
    ident = [c for c in table.columns if c not in ("horizon", "estimate", "lo", "hi", "censored", "label",
                                                   "moves_later")]
    horizons = sorted(table["horizon"].unique())
    out = table.drop(columns=["moves_later"], errors="ignore").copy()
    out["moves_later"] = False
    keyed = out.groupby(ident, dropna=False, sort=False).ngroup()
    for key in keyed.unique():
        rows = out[keyed == key]
        at = {h: (rows[rows["horizon"] == h].iloc[0] if (rows["horizon"] == h).any() else None) for h in horizons}
        kind = rows["kind"].iloc[0]
        for i, h in enumerate(horizons):
            if at[h] is None:
                continue
            moved = any(_moves(kind, at[h], at[later]) for later in horizons[i + 1:])
            out.loc[rows.index[rows["horizon"] == h], "moves_later"] = moved
    return out


class HorizonChoice(NamedTuple):
    """The study's horizon (None when every horizon but the longest still moves), the number of moving
    entries per horizon, and a sentence saying why."""

    horizon: float | None
    moving: pd.Series
    note: str


def study_horizon(table: pd.DataFrame) -> HorizonChoice:
    """The shortest horizon of a :func:`horizon_table` from which no width and no exponent moves to any
    later horizon (the rule of the module docstring)."""
    require_columns(table, ["horizon", "moves_later"], "horizons")
    horizons = sorted(table["horizon"].unique())
    moving = table.groupby("horizon")["moves_later"].sum().astype(int).reindex(horizons)
    for h in horizons[:-1]:
        if moving[h] == 0:
            return HorizonChoice(float(h), moving,
                                 f"nothing moves after {h:g}/lambda_* (checked up to {horizons[-1]:g})")
    return HorizonChoice(None, moving, f"{int(moving[horizons[-2]])} entries still move between {horizons[-2]:g} and "
                                       f"{horizons[-1]:g}/lambda_*: no horizon is stable; study longer horizons")
