"""What keeps a run on a plateau, measured: the late decay rate against what the flow removes and what
the activation flips put back.

Between flips the residual follows ``dr/dt = -H r``, which removes ``||r||^2`` at a rate of at
least ``2 lambda_min(H)``; each flip makes the derivative residual jump (MATH.md, "flips").  In
units of ``lambda_*``, ``late_rate ~ 2 lambda_min / lambda_* - jump_rate_late``.
:func:`fit_mechanism` regresses each run's ``late_rate`` on ``min_lambda_ratio`` and
``jump_rate_late`` (expected coefficients about ``2`` and ``-1``), with an interval from a
bootstrap over data instances then seeds, and fits the scaling of the jumps,
``jump ~ n^a k^b delta^c m^-e``, by :func:`analysis.floorlaw.fit_floor_law`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd

from .columns import require_columns
from .defaults import CONFIDENCE, FAILED_STATUSES
from .floorlaw import DEFAULT_BY, FLOOR_N_BOOT, FLOOR_TERMS, fit_floor_law, hierarchical_weights, instance_ids
from .stats import cluster_percentile_interval

MECHANISM_TERMS = ("min_lambda_ratio", "jump_rate_late")
# late_rate ~ 2 lambda_min / lambda_* - jump_rate_late: the coefficients the flow-and-jumps picture gives.
EXPECTED = {"c": 0.0, "min_lambda_ratio": 2.0, "jump_rate_late": -1.0}
REGRESSION_COLUMNS = ["term", "estimate", "lo", "hi", "expected", "expected_in_interval", "n_runs", "n_instances",
                      "r2", "note"]


class Mechanism(NamedTuple):
    """``regression``: late_rate on the terms (:data:`REGRESSION_COLUMNS`); ``jumps``: the jumps' scaling
    law (a :func:`analysis.floorlaw.fit_floor_law` table)."""

    regression: pd.DataFrame
    jumps: pd.DataFrame


def _weighted_ls(X: np.ndarray, y: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of ``y`` on ``X`` for every row of weights ``W`` at once: ``beta (B, P), ok (B,)``."""
    B, (N, P) = W.shape[0], X.shape
    A = (W @ (X[:, :, None] * X[:, None, :]).reshape(N, -1)).reshape(B, P, P)
    b = W @ (X * y[:, None])
    ok = np.linalg.matrix_rank(A) == P
    A[~ok] = np.eye(P)
    beta = np.linalg.solve(A, b[..., None])[..., 0]
    return np.where(ok[:, None], beta, np.nan), ok


def fit_mechanism(runs: pd.DataFrame, *, terms: Sequence[str] = MECHANISM_TERMS, by: Sequence[str] | None = None,
                  jump_col: str = "jump_rate_late", jump_terms: Sequence[str] = FLOOR_TERMS,
                  n_boot: int = FLOOR_N_BOOT, seed: int = 0, confidence: float = CONFIDENCE) -> Mechanism:
    """The mechanism's two fits.

    Args:
        runs: ``status, late_rate, *terms, jump_col, *jump_terms, *by`` and the data-instance columns
            (``n, k, delta, bias, data_seed`` ...); diverged runs and runs with a non-finite value are
            left out (counted in ``note``).
        terms: the regressors of ``late_rate`` (default ``min_lambda_ratio, jump_rate_late``).
        by: group columns (default those of :data:`analysis.floorlaw.DEFAULT_BY` present: the bias and
            every training setting that makes another experiment, as for the jumps' law).
        jump_col: the jump measure whose scaling is fitted (``jump_rate_late`` or ``jump_energy_total``);
            runs where it is not positive (no flips, e.g. ``k = 0``) are left out of that fit and counted.
        jump_terms: regressors of the jump law (``k = 0`` in its own group).

    Returns:
        :class:`Mechanism`: ``regression`` with ``*by`` and :data:`REGRESSION_COLUMNS` (``term`` = ``c`` and
        the terms; ``lo, hi`` a percentile interval over instance-then-seed resamples, widened for few
        instances; ``expected`` from :data:`EXPECTED`; ``r2`` of the fit), and ``jumps``.
    """
    require_columns(runs, ["status", "late_rate", *terms], "runs")
    by = [c for c in DEFAULT_BY if c in runs.columns] if by is None else list(by)
    data = runs[~runs["status"].isin(FAILED_STATUSES)]
    data = data.assign(_finite=np.isfinite(data[["late_rate", *terms]].to_numpy(float)).all(axis=1))
    rng = np.random.default_rng(seed)
    rows = []
    for key, group in data.groupby(by, sort=True, dropna=False) if by else [((), data)]:
        key = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        n_bad = int((~group["_finite"]).sum())
        group = group[group["_finite"]]
        rows += _regression_rows(key, group, list(terms), n_bad, n_boot, rng, confidence)
    regression = pd.DataFrame(rows, columns=[*by, *REGRESSION_COLUMNS])
    jumps = fit_floor_law(runs, loss_col=jump_col, terms=jump_terms, censor_col=None, n_boot=n_boot, seed=seed,
                          confidence=confidence)
    return Mechanism(regression, jumps)


def _regression_rows(key: dict, group: pd.DataFrame, terms: list[str], n_bad: int, n_boot: int,
                     rng: np.random.Generator, confidence: float) -> list[dict]:
    names = ["c", *terms]
    inst = instance_ids(group)
    n_inst = int(np.unique(inst).size)
    common = {**key, "n_runs": len(group), "n_instances": n_inst}
    notes = [f"{n_bad} run(s) with a non-finite late_rate or regressor left out"] if n_bad else []
    if len(group) <= len(names):
        return [{**common, "term": t, "estimate": np.nan, "lo": np.nan, "hi": np.nan,
                 "expected": EXPECTED.get(t, np.nan), "expected_in_interval": False, "r2": np.nan,
                 "note": "; ".join([*notes, f"{len(group)} run(s) for {len(names)} coefficients: no fit"])}
                for t in names]
    X = np.column_stack([np.ones(len(group)), group[terms].to_numpy(float)])
    y = group["late_rate"].to_numpy(float)
    stratum = group.assign(_i=inst).groupby(["_i", *(["m"] if "m" in group else [])], sort=False).ngroup().to_numpy()
    W = np.vstack([np.ones(len(group)), hierarchical_weights(inst, stratum, n_boot, rng)])
    beta, ok = _weighted_ls(X, y, W)
    if not ok[0]:
        return [{**common, "term": t, "estimate": np.nan, "lo": np.nan, "hi": np.nan,
                 "expected": EXPECTED.get(t, np.nan), "expected_in_interval": False, "r2": np.nan,
                 "note": "; ".join([*notes, f"regressors {terms} are collinear: no fit"])} for t in names]
    resid = y - X @ beta[0]
    r2 = 1 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum()) if np.ptp(y) > 0 else np.nan
    draws = beta[1:][ok[1:]]
    if n_inst >= 2 and len(draws) >= 2:
        lo, hi = cluster_percentile_interval(beta[0], draws, n_inst, confidence)
    else:
        lo = hi = np.full(len(names), np.nan)
        notes.append("no interval: fewer than 2 data instances or usable bootstrap replicates")
    rows = []
    for i, t in enumerate(names):
        expected = EXPECTED.get(t, np.nan)
        rows.append({**common, "term": t, "estimate": float(beta[0, i]), "lo": float(lo[i]), "hi": float(hi[i]),
                     "expected": expected, "expected_in_interval": bool(lo[i] <= expected <= hi[i]), "r2": r2,
                     "note": "; ".join(notes)})
    return rows


def plot_mechanism(ax, runs: pd.DataFrame, *, color_by: str = "m", cmap: str = "viridis", s: float = 12.0):
    """Each run's ``late_rate`` against the flow-and-jumps prediction ``2 min_lambda_ratio - jump_rate_late``,
    coloured by ``log2`` of ``color_by``, with the line ``y = x``, the theorem's rate (1) and the plateau
    threshold of ``trend`` (0.1).

    Args:
        ax: a matplotlib Axes.
        runs: ``status, late_rate, min_lambda_ratio, jump_rate_late, color_by``.

    Returns:
        The scatter's PathCollection (for a colorbar).
    """
    require_columns(runs, ["status", "late_rate", *MECHANISM_TERMS, color_by], "runs")
    data = runs[~runs["status"].isin(FAILED_STATUSES)]
    x = 2 * data["min_lambda_ratio"].to_numpy(float) - data["jump_rate_late"].to_numpy(float)
    y = data["late_rate"].to_numpy(float)
    keep = np.isfinite(x) & np.isfinite(y)
    points = ax.scatter(x[keep], y[keep], c=np.log2(data[color_by].to_numpy(float)[keep]), cmap=cmap, s=s)
    if keep.any():
        lo, hi = float(min(x[keep].min(), y[keep].min())), float(max(x[keep].max(), y[keep].max()))
        ax.plot([lo, hi], [lo, hi], color="0.4", linestyle="--", linewidth=1, label="y = x")
    ax.axhline(1.0, color="tab:green", linewidth=1, label=r"theorem's rate $\lambda_*$")
    ax.axhline(0.1, color="tab:red", linewidth=1, linestyle=":", label="plateau below 0.1")
    ax.set_xlabel(r"$2\,\lambda_{\min}/\lambda_* - $ jump rate")
    ax.set_ylabel(r"late rate / $\lambda_*$")
    return points
