"""The power law ``log m* = c + p log n + q log k (+ r log delta)`` fitted to thresholds, per bias
variant (and criterion, eps'), set against the theorem's ``p = 6, q = 3``."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .columns import require_columns
from .defaults import CONFIDENCE, EXPONENT_TERMS, THEORY_EXPONENTS
from .stats import ols
from .thresholds import NOT_CENSORED

# Which censoring flag belongs to which threshold estimate of analysis.thresholds.
CENSOR_COLUMN = {"m_star": "censored", "m_logistic": "logistic_censored"}


def uncensored_cells(df: pd.DataFrame, m_col: str) -> pd.Series:
    """The rows of ``df`` whose width ``m_col`` is a number: finite, positive and not flagged censored."""
    ok = np.isfinite(df[m_col].astype(float)) & (df[m_col] > 0)
    flag = CENSOR_COLUMN.get(m_col)
    if flag in df.columns:
        # external tables may write the flag as "none", "", a missing value or False
        censored = df[flag]
        ok &= censored.isna() | censored.isin([NOT_CENSORED, "", False])
    return ok


def design_matrix(cells: pd.DataFrame, terms: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The design ``[1, log n, log k, log delta]`` (those of ``terms``) of ``cells`` and its column names."""
    names = ["c", *terms]
    X = np.column_stack([np.ones(len(cells))] + [np.log(cells[EXPONENT_TERMS[t]].to_numpy(float)) for t in terms])
    return X, names


def fit_exponents(thresholds: pd.DataFrame, *, m_col: str = "m_star", terms: Sequence[str] = ("p", "q", "r"),
                  by: Sequence[str] | None = None, theory: Mapping[bool, Mapping[str, float]] = THEORY_EXPONENTS,
                  confidence: float = CONFIDENCE, n_boot: int = 0, seed: int = 0) -> pd.DataFrame:
    """OLS fit of ``log m_col`` on ``log n``, ``log k``, ``log delta`` per group, on uncensored cells.

    thresholds: a :func:`analysis.thresholds.thresholds` table or an external one with columns
    ``n, k, delta, bias, <m_col>`` and optionally ``censored`` (``"none"`` or empty when not
    censored), ``criterion``, ``eps``.  ``m_col`` may be ``m_star``, ``m_logistic`` (censoring read
    from ``logistic_censored``) or ``m_thm`` (to see the theorem's own scaling over the same cells,
    ``lambda_star`` and ``gamma`` included).  ``by`` defaults to whichever of ``bias, criterion,
    eps`` the table has.  A term whose regressor does not vary within a group is left out of that
    group's fit (a sweep at fixed k says nothing about q).

    Returns one row per group and term: the group columns, ``term`` (``c, p, q, r``), ``regressor``,
    ``estimate, se, lo, hi`` (t-interval), ``theory`` (from ``theory[bias]``, NaN if none),
    ``theory_in_interval``, ``n_cells``, ``n_censored``, ``dof``, ``note`` (why a fit is missing),
    ``interval_note`` (why ``se, lo, hi`` are NaN: an exact fit has no interval, never a zero-width one),
    and with ``n_boot > 0`` ``boot_lo, boot_hi`` (percentile bootstrap over cells).
    """
    by = [c for c in ("bias", "criterion", "eps") if c in thresholds.columns] if by is None else list(by)
    require_columns(thresholds, [*by, *(EXPONENT_TERMS[t] for t in terms), m_col], "thresholds")
    rng = np.random.default_rng(seed)
    rows = []
    for key, group in thresholds.groupby(by, sort=True, dropna=False) if by else [((), thresholds)]:
        key = dict(zip(by, key))
        cells = group[uncensored_cells(group, m_col)]
        used = [t for t in terms if cells[EXPONENT_TERMS[t]].nunique() > 1]
        X, names = design_matrix(cells, used)
        y = np.log(cells[m_col].to_numpy(float))
        common = {"n_cells": len(cells), "n_censored": len(group) - len(cells), "dof": len(cells) - len(names)}
        fit, note = None, ""
        if len(cells) < len(names):
            note = "fewer uncensored cells than parameters"
        else:
            try:
                fit = ols(X, y, names, confidence)
            except ValueError as err:
                note = str(err)
        boot = _bootstrap(X, y, names, rng, n_boot, confidence) if fit is not None and n_boot > 0 else None
        interval_note = _no_interval(fit, X, y) if fit is not None else "no interval: no fit"
        for name in names:
            reference = theory.get(key.get("bias"), {}).get(name, np.nan) if "bias" in key else np.nan
            row = {**key, "term": name, "regressor": EXPONENT_TERMS.get(name, "1"), "theory": reference,
                   **common, "note": note}
            for stat in ("estimate", "se", "lo", "hi"):
                row[stat] = fit[stat][name] if fit and (stat == "estimate" or not interval_note) else np.nan
            row["interval_note"] = interval_note
            row["theory_in_interval"] = bool(fit) and row["lo"] <= reference <= row["hi"]
            if n_boot > 0:
                row["boot_lo"], row["boot_hi"] = boot[name] if boot else (np.nan, np.nan)
                # resampling an exact fit gives the same fit every time (up to rounding)
                if interval_note or np.isclose(row["boot_lo"], row["boot_hi"], rtol=1e-9, atol=1e-12):
                    row["boot_lo"] = row["boot_hi"] = np.nan
            rows.append(row)
    columns = [*by, "term", "regressor", "estimate", "se", "lo", "hi", "theory", "theory_in_interval",
               "n_cells", "n_censored", "dof", "note", "interval_note"] + (["boot_lo", "boot_hi"] if n_boot > 0 else [])
    return pd.DataFrame(rows, columns=columns)


def _no_interval(fit: dict, X: np.ndarray, y: np.ndarray) -> str:
    """Why a fit has no interval ("" if it has one).  An exact fit (no residual degrees of freedom,
    or residuals that vanish, as when every threshold sits at the same tested width) says nothing
    about uncertainty: a zero-width interval would claim certainty it does not have."""
    if fit["dof"] == 0:
        return "no interval: exact fit, no residual degrees of freedom"
    beta = np.array(list(fit["estimate"].values()))
    if np.sum((y - X @ beta) ** 2) <= 1e-20 * max(1.0, float(np.sum(y**2))):
        return "no interval: exact fit (zero residuals)"
    return ""


def _bootstrap(X: np.ndarray, y: np.ndarray, names: list[str], rng: np.random.Generator, n_boot: int,
               confidence: float) -> dict[str, tuple[float, float]] | None:
    """Percentile intervals from refitting on cells resampled with replacement; replicates whose
    design is rank deficient (too few distinct n or k drawn) are skipped."""
    estimates = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if np.linalg.matrix_rank(X[idx]) == X.shape[1]:
            estimates.append(np.linalg.lstsq(X[idx], y[idx], rcond=None)[0])
    if not estimates:
        return None
    alpha = 1 - confidence
    lo, hi = np.quantile(np.array(estimates), [alpha / 2, 1 - alpha / 2], axis=0)
    return {name: (lo[i], hi[i]) for i, name in enumerate(names)}
