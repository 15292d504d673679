"""The floor law: one censored regression of the log loss on ``log n, log k, log delta, log m``
per group, with intervals from a bootstrap over data instances then seeds, and the width
``m*(eps')`` at which the law's floor crosses a tolerance.

Model (MATH.md, "What the first study taught")::

    log L = c + a_n log n + a_k log k + a_delta log delta + a_m log m + u_instance + e

A run stopped at its training ``eps`` (status ``converged``, or ``loss <= eps``) only says that its
floor is at or below ``eps``: it enters the likelihood as ``P(log L <= log eps)`` (left-censored,
Tobit), never as an observation of the floor.  ``u_instance + e`` is treated as one normal error
in the likelihood (a pseudo-likelihood: runs of one data instance are correlated), and the
correlation is accounted for by the interval, which resamples data instances (cell x
``data_seed``) and then the seeds of each instance at each width.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import special

from .columns import MissingColumnError, require_columns
from .defaults import CONFIDENCE, EXPERIMENT_SETTINGS, FAILED_STATUSES, STOPPED_AT_EPS
from .stats import cluster_percentile_interval

FLOOR_TERMS = ("n", "k", "delta", "m")
# Columns that identify the data set a run was trained on; a random effect lives at this level.
INSTANCE_KEYS = ("n", "k", "d", "delta", "bias", "target", "delta_2", "data_seed")
# Columns that split runs into separate laws when present: the bias, and every training setting that
# makes another experiment (a horizon, a step size or the frozen control is not a regressor).
DEFAULT_BY = ("bias", *EXPERIMENT_SETTINGS)
K_GROUP = "k_group"  # derived: "k=0" (plain L2) vs "k>=1"; log k does not exist at k = 0
FLOOR_N_BOOT = 400
_NO_INTERVAL_EXACT = "no interval: every bootstrap replicate gave the same value"


def add_k_group(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the column ``k_group`` (``"k=0"`` or ``"k>=1"``) derived from ``k``."""
    return df.assign(**{K_GROUP: np.where(df["k"] == 0, "k=0", "k>=1")})


def instance_ids(runs: pd.DataFrame) -> np.ndarray:
    """Integer id of each run's data instance (the :data:`INSTANCE_KEYS` present in ``runs``)."""
    keys = [c for c in INSTANCE_KEYS if c in runs.columns]
    return runs.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()


def hierarchical_weights(instance: np.ndarray, stratum: np.ndarray, n_boot: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights, shape ``(n_boot, n_runs)``: instances drawn with replacement, then within
    each drawn copy the runs of every stratum (instance x width) drawn with replacement.

    Drawing ``c`` copies of a stratum of ``s`` runs, each resampled, is one multinomial draw of
    ``c s`` runs over the stratum's ``s``, which is what is drawn.
    """
    inst_codes, inst = np.unique(instance, return_inverse=True)
    copies = rng.multinomial(len(inst_codes), np.full(len(inst_codes), 1 / len(inst_codes)), size=n_boot)
    weights = np.zeros((n_boot, len(instance)))
    codes, stratum = np.unique(stratum, return_inverse=True)
    size = np.bincount(stratum)
    owner = np.zeros(len(codes), dtype=np.int64)
    owner[stratum] = inst
    order = np.argsort(stratum, kind="stable")
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    # strata of equal size are drawn together: one multinomial call per size
    for s in np.unique(size):
        group = np.flatnonzero(size == s)
        rows = order[start[group][:, None] + np.arange(s)]  # (strata, s) run indices
        weights[:, rows] = rng.multinomial(copies[:, owner[group]] * s, np.full(s, 1 / s))
    return weights


def _tobit_terms(s: np.ndarray, censored: np.ndarray):
    """Per-observation log-likelihood, score factor and curvature of the Tobit model in Olsen's
    parametrisation (``theta = beta / sigma``, ``h = 1 / sigma``), as functions of
    ``s = h t - x theta`` (``t`` the log loss, or the log censoring limit)."""
    ll, score, curvature = -0.5 * s**2, -s, np.ones_like(s)
    # the normal cdf is only needed at censored runs, which are usually few
    sc = s[:, censored]
    log_cdf = special.log_ndtr(sc)
    mills = np.exp(-0.5 * sc**2 - 0.5 * np.log(2 * np.pi) - log_cdf)
    ll[:, censored], score[:, censored], curvature[:, censored] = log_cdf, mills, mills * (mills + sc)
    return ll, score, curvature


def tobit_batch(X: np.ndarray, t: np.ndarray, censored: np.ndarray, W: np.ndarray,
                max_iter: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted left-censored normal regression, one fit per row of weights ``W`` at once.

    ``t`` is the log loss where observed and the log censoring limit where ``censored``.  Newton's
    method in Olsen's parametrisation, where the log-likelihood is concave, with step halving.
    Returns ``beta (B, P), sigma (B,), ok (B,)``; ``ok`` is False where the weighted design is
    rank deficient, no uncensored run carries weight, or Newton did not converge.
    """
    B, (N, P) = W.shape[0], X.shape
    G = np.column_stack([-X, t])  # s = G @ phi with phi = (theta, h)
    # plain matmuls on contiguous operands: einsum and transposed views are far slower here
    GT = np.ascontiguousarray(G.T)
    GG = (G[:, :, None] * G[:, None, :]).reshape(N, -1)
    A = (W @ (X[:, :, None] * X[:, None, :]).reshape(N, -1)).reshape(B, P, P)
    ok = np.linalg.matrix_rank(A) == P
    n_obs = (W * ~censored).sum(axis=1)
    ok &= n_obs > 0
    A[~ok] = np.eye(P)
    beta = np.linalg.solve(A, (W @ (X * t[:, None]))[..., None])[..., 0]
    resid = t - beta @ np.ascontiguousarray(X.T)
    sigma = np.sqrt(np.maximum((W * resid**2).sum(axis=1) / W.sum(axis=1), 1e-6))
    phi = np.column_stack([beta / sigma[:, None], 1 / sigma])
    e_h = np.zeros(P + 1)
    e_h[-1] = 1.0

    def objective(phi):
        ll, score, curvature = _tobit_terms(phi @ GT, censored)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_h = np.where(phi[..., -1] > 0, np.log(phi[..., -1]), -np.inf)
        return (W * ll).sum(axis=-1) + n_obs * log_h, score, curvature

    value, score, curvature = objective(phi)
    converged = np.zeros(B, dtype=bool)
    for _ in range(max_iter):
        h = phi[:, -1]
        grad = (W * score) @ G + np.outer(n_obs / h, e_h)
        info = ((W * curvature) @ GG).reshape(B, P + 1, P + 1) + (n_obs / h**2)[:, None, None] * np.outer(e_h, e_h)
        info[~ok] = np.eye(P + 1)
        step = _solve_each(info, grad, ok)
        alpha = np.ones(B)
        for _ in range(30):  # halve the step where it does not increase the likelihood
            trial_value = objective(phi + alpha[:, None] * step)[0]
            worse = ok & ~(trial_value >= value - 1e-12)
            if not worse.any():
                break
            alpha[worse] /= 2
        step = alpha[:, None] * step
        phi = phi + step
        value, score, curvature = objective(phi)
        converged = np.max(np.abs(step), axis=1) < tol
        if converged[ok].all():
            break
    ok &= converged & (phi[:, -1] > 0) & np.isfinite(phi).all(axis=1)
    return phi[:, :-1] / phi[:, -1:], 1 / phi[:, -1], ok


def _solve_each(M: np.ndarray, b: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``M[i]^-1 b[i]`` for every replicate; a replicate whose matrix is singular gets a zero step
    and is marked not ``ok`` (a failed replicate, counted as such), instead of failing them all."""
    try:
        return np.linalg.solve(M, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.zeros_like(b)
        for i in range(len(M)):
            try:
                out[i] = np.linalg.solve(M[i], b[i])
            except np.linalg.LinAlgError:
                ok[i] = False
        return out


def _prepare(runs: pd.DataFrame, loss_col: str, censor_col: str | None) -> pd.DataFrame:
    """Runs not diverged/failed with ``_t`` (log loss or log limit), ``_censored`` and ``_bad`` (no
    positive finite loss: left out of the fit, counted in its group's note)."""
    runs = runs[~runs["status"].isin(FAILED_STATUSES)]
    loss = runs[loss_col].to_numpy(float)
    if censor_col is None:
        censored = np.zeros(len(runs), dtype=bool)
        limit = loss
    else:
        limit = runs[censor_col].to_numpy(float)
        censored = (runs["status"] == STOPPED_AT_EPS).to_numpy() | (loss <= limit)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(censored, np.log(limit), np.log(loss))
    return runs.assign(_t=t, _censored=censored, _bad=~np.isfinite(t))


def _percentiles(point: np.ndarray, draws: np.ndarray, n_clusters: int,
                 confidence: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Interval per column (percentiles widened for few instances); a column whose replicates are
    all equal has no interval."""
    lo, hi = cluster_percentile_interval(point, draws, n_clusters, confidence)
    flat = np.ptp(draws, axis=0) <= 1e-12 * np.maximum(1.0, np.abs(draws).max(axis=0))
    notes = [_NO_INTERVAL_EXACT if f else "" for f in flat]
    return np.where(flat, np.nan, lo), np.where(flat, np.nan, hi), notes


def _fit_group(group: pd.DataFrame, terms: Sequence[str], n_boot: int, rng: np.random.Generator,
               confidence: float) -> tuple[list[dict], dict]:
    used = [t for t in terms if group[t].nunique() > 1]
    dropped = [t for t in terms if t not in used]
    names = ["c", *used]
    inst = instance_ids(group)
    common = {"n_runs": len(group), "n_instances": int(np.unique(inst).size),
              "n_censored": int(group["_censored"].sum()),
              "note": f"dropped {dropped}: constant in this group" if dropped else ""}
    n_obs = int((~group["_censored"]).sum())
    if n_obs < len(names) + 1:
        return [], {**common, "note": f"{n_obs} uncensored run(s) for {len(names)} coefficients and sigma; no fit"}
    X = np.column_stack([np.ones(len(group))] + [np.log(group[t].to_numpy(float)) for t in used])
    stratum = group.assign(_i=inst).groupby(["_i", *(["m"] if "m" in group else [])], sort=False).ngroup().to_numpy()
    W = np.vstack([np.ones(len(group)), hierarchical_weights(inst, stratum, n_boot, rng)])
    beta, sigma, ok = tobit_batch(X, group["_t"].to_numpy(), group["_censored"].to_numpy(), W)
    if not ok[0]:
        return [], {**common, "note": f"rank deficient design or no convergence for {names}; no fit"}
    estimates = np.column_stack([beta, sigma])
    draws = estimates[1:][ok[1:]]
    rows = []
    for i, name in enumerate([*names, "sigma"]):
        rows.append({"term": name, "estimate": estimates[0, i], "draws": draws[:, i]})
    if len(draws) >= 2 and common["n_instances"] >= 2:
        lo, hi, notes = _percentiles(estimates[0], draws, common["n_instances"], confidence)
        se = draws.std(axis=0, ddof=1)
    else:
        lo = hi = se = np.full(len(rows), np.nan)
        notes = ["no interval: fewer than 2 data instances or usable bootstrap replicates"] * len(rows)
    for i, row in enumerate(rows):
        row.update(se=se[i], lo=lo[i], hi=hi[i], interval_note=notes[i])
    return rows, {**common, "n_boot_ok": len(draws)}


FLOOR_COLUMNS = ["term", "estimate", "se", "lo", "hi", "n_runs", "n_instances", "n_censored", "n_boot_ok",
                 "note", "interval_note", "draws"]


def fit_floor_law(runs: pd.DataFrame, *, loss_col: str = "final_rel_loss", terms: Sequence[str] = FLOOR_TERMS,
                  by: Sequence[str] | None = None, censor_col: str | None = "eps", n_boot: int = FLOOR_N_BOOT,
                  seed: int = 0, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Fit ``log loss_col = c + sum_t a_t log t`` (``t`` in ``terms``) per group by censored maximum
    likelihood, with a hierarchical bootstrap (data instances, then seeds per instance and width).

    runs: ``status, loss_col, *terms, *by`` (+ ``censor_col`` and :data:`INSTANCE_KEYS` present).
    A run whose status is ``converged`` or whose loss is at or below ``runs[censor_col]`` (default:
    the training ``eps``) is left-censored there; ``censor_col=None`` treats every loss as observed.
    Diverged/failed runs and non-positive losses are left out.  ``by`` defaults to the columns of
    :data:`DEFAULT_BY` present, and when ``"k" in terms`` the derived ``k_group`` (``k = 0`` has no
    ``log k``: its group fits without the k term).  A term constant within a group is dropped from
    that group's fit, with a ``note``.

    Returns one row per group and term (``c``, the terms, and ``sigma``, the residual sd):
    ``*by, term, estimate, se, lo, hi`` (percentile bootstrap, NaN with ``interval_note`` when the
    replicates cannot give an interval), ``n_runs, n_instances, n_censored, n_boot_ok, note`` and
    ``draws`` (the bootstrap replicates, aligned across the terms of a group, for
    :func:`m_star_from_floor_law`).  The estimate of ``m`` is the slope ``a_m`` (negative when the
    floor falls with the width).
    """
    require_columns(runs, ["status", loss_col, *terms, *([censor_col] if censor_col else [])], "runs")
    if "k" in terms:
        runs = add_k_group(runs)
    by = [c for c in (*DEFAULT_BY, *([K_GROUP] if "k" in terms else [])) if c in runs.columns] if by is None else list(by)
    if "k" in terms and K_GROUP not in by and (runs["k"] == 0).any():
        raise ValueError("k = 0 runs have no log k: keep them apart with by=(..., 'k_group') or drop 'k' from terms")
    require_columns(runs, by, "runs")
    # k = 0 has its own group, where the k term is constant and dropped
    bad = [t for t in terms if ((runs[t] <= 0) & ~((t == "k") & (runs[t] == 0))).any()]
    if bad:
        raise ValueError(f"runs columns {bad} have values <= 0, which have no logarithm: filter those runs out")
    data = _prepare(runs, loss_col, censor_col)
    rng = np.random.default_rng(seed)
    out = []
    for key, group in data.groupby(by, sort=True, dropna=False) if by else [((), data)]:
        key = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        n_bad = int(group["_bad"].sum())
        rows, common = _fit_group(group[~group["_bad"]], terms, n_boot, rng, confidence)
        if n_bad:
            common["note"] = "; ".join(filter(None, [common["note"], f"{n_bad} run(s) without a positive {loss_col}"]))
        if not rows:
            rows = [{"term": t, "estimate": np.nan, "se": np.nan, "lo": np.nan, "hi": np.nan,
                     "interval_note": "no fit", "draws": np.empty(0)} for t in ("c", *terms, "sigma")]
        out += [{**key, "n_boot_ok": 0, **common, **row} for row in rows]
    return pd.DataFrame(out, columns=[*by, *FLOOR_COLUMNS])


def floor_group_columns(fit: pd.DataFrame) -> list[str]:
    """The group columns of a :func:`fit_floor_law` table."""
    return [c for c in fit.columns if c not in FLOOR_COLUMNS]


def _with_constant_groups(table: pd.DataFrame, fit: pd.DataFrame, by: Sequence[str], name: str) -> pd.DataFrame:
    """``table`` with each group column ``by`` of ``fit`` it lacks, filled where the fit has one value of
    it (it chooses no law); a column with several values raises naming it."""
    for col in by:
        if col not in table.columns:
            values = fit[col].unique()
            if len(values) > 1:
                raise MissingColumnError(f"{name} lack {col!r}, which takes {list(values)} in the floor law: "
                                         f"pass strata=({col!r},) to run_success or filter the fit")
            table = table.assign(**{col: values[0]})
    return table


def m_star_from_floor_law(fit: pd.DataFrame, eps: float | Sequence[float], cells: pd.DataFrame, *,
                          rate: float = 0.5, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Width at which the floor law puts the loss at ``eps'``, per cell and ``eps'``, with a
    percentile interval over the law's bootstrap replicates.

    Solves ``log eps' = c + sum_t a_t log t + a_m log m + z_rate sigma`` for ``m``: with the default
    ``rate = 0.5`` the width where the median run reaches ``eps'``; ``rate = 1 - delta_fail`` gives
    the width where that fraction of runs does, comparable with the direct thresholds.

    cells: the fit's group columns (``k_group`` is derived from ``k`` if missing; one the fit holds a
    single value of may be left out) and the terms other than ``m``.  Returns ``cells`` columns, ``eps, rate, m_star_floor, m_star_floor_lo,
    m_star_floor_hi, rising_frac`` (fraction of replicates whose floor does not fall with ``m``: their
    ``m*`` is infinite) and ``note``.
    """
    by = floor_group_columns(fit)
    if K_GROUP in by and K_GROUP not in cells.columns:
        cells = add_k_group(cells)
    cells = _with_constant_groups(cells, fit, by, "cells")
    z = float(special.ndtri(rate))  # the normal quantile (stats.norm.ppf calls it; analysis/stats.py says why)
    alpha = 1 - confidence
    rows = []
    for _, cell in cells.iterrows():
        law = fit
        for col in by:
            law = law[(law[col] == cell[col]) | (law[col].isna() & pd.isna(cell[col]))]
        law = law.set_index("term")
        for e in np.atleast_1d(eps):
            row = {**cell.to_dict(), "eps": float(e), "rate": rate}
            rows.append({**row, **_solve_m(law, cell, float(e), z, alpha)})
    return pd.DataFrame(rows)


def _solve_m(law: pd.DataFrame, cell: pd.Series, eps: float, z: float, alpha: float) -> dict:
    empty = {"m_star_floor": np.nan, "m_star_floor_lo": np.nan, "m_star_floor_hi": np.nan, "rising_frac": np.nan}
    if law.empty or "m" not in law.index or not np.isfinite(law.loc["m", "estimate"]):
        return {**empty, "note": "no floor law with an m term for this cell"}
    others = [t for t in law.index if t not in ("c", "m", "sigma")]
    require_columns(cell.to_frame().T, others, "cells")
    x = np.array([np.log(float(cell[t])) for t in others])

    def solve(get):
        offset = get("c") + sum(get(t) * xi for t, xi in zip(others, x)) + z * get("sigma")
        slope = get("m")
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(slope < 0, np.exp((np.log(eps) - offset) / slope), np.inf)

    point = float(solve(lambda t: law.loc[t, "estimate"]))
    draws = solve(lambda t: law.loc[t, "draws"])
    n_clusters = int(law["n_instances"].iloc[0])
    if draws.size < 2 or n_clusters < 2:
        return {**empty, "m_star_floor": point, "note": "no bootstrap replicates: no interval"}
    # on log m, where the interval is built like the law's own (a rising floor's m* is infinite)
    with np.errstate(divide="ignore"):
        lo, hi = np.exp(cluster_percentile_interval(np.log(point), np.log(draws), n_clusters, 1 - alpha))
    return {"m_star_floor": point, "m_star_floor_lo": float(lo), "m_star_floor_hi": float(hi),
            "rising_frac": float(np.mean(~np.isfinite(draws))), "note": ""}


def beside_thresholds(fit: pd.DataFrame, thresholds: pd.DataFrame, *, rate: float | None = None,
                      confidence: float = CONFIDENCE) -> pd.DataFrame:
    """``thresholds`` (one row per cell, criterion and ``eps``, e.g. from
    :func:`analysis.thresholds.thresholds` or :func:`analysis.thresholds.instance_thresholds`) with the
    floor law's ``m_star_floor, m_star_floor_lo, m_star_floor_hi, rising_frac`` at the same cell and
    ``eps'`` beside the direct estimates, for every criterion in the table.

    ``rate`` defaults to the table's ``target`` (``1 - delta_fail``), so both answer "the width at
    which that fraction of runs reaches ``eps'``".  A group column of the fit that the table lacks is
    filled when the fit has one value of it, and raises otherwise (keep it in the table with
    ``strata=`` in :func:`analysis.success.run_success`).
    """
    by = floor_group_columns(fit)
    require_columns(thresholds, ["n", "k", "delta", "eps"], "thresholds")
    table = add_k_group(thresholds) if K_GROUP in by and K_GROUP not in thresholds.columns else thresholds
    table = _with_constant_groups(table, fit, by, "thresholds")
    if rate is None:
        require_columns(table, ["target"], "thresholds (or pass rate=)")
        rates = table["target"].unique()
        if len(rates) > 1:
            raise ValueError(f"thresholds mix targets {list(rates)}: pass rate= or split the table")
        rate = float(rates[0])
    cells = table[[*by, "n", "k", "delta"]].drop_duplicates()
    floor = m_star_from_floor_law(fit, sorted(table["eps"].unique()), cells, rate=rate, confidence=confidence)
    floor = floor.rename(columns={"note": "floor_note"}).drop(columns="rate")
    return table.merge(floor, on=[*by, "n", "k", "delta", "eps"], how="left")
