"""Small statistical primitives: Wilson intervals, least squares with t-intervals, and a
bias-reduced logistic fit.  Array in, array/dict out; the table-level functions build on them."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# the normal and Student-t quantiles are special.ndtri and special.stdtrit, the functions
# scipy.stats' norm.ppf and t.ppf call (same bits): scipy.stats takes about 0.4 s to import
from scipy import special

from .defaults import CONFIDENCE


def normal_quantile(confidence: float) -> float:
    """The standard normal quantile of a two-sided ``confidence`` interval (1.96 at 0.95)."""
    return float(special.ndtri(0.5 + confidence / 2))


def wilson_interval(successes, trials, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion, elementwise.

    Chosen over the normal (Wald) interval because cells near the threshold have rates of
    0 or 1 on a handful of seeds, where Wald collapses to a point.  ``trials == 0`` gives NaN.
    """
    s = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    z2 = normal_quantile(confidence) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / n
        denom = 1 + z2 / n
        centre = (p + z2 / (2 * n)) / denom
        half = np.sqrt(z2) / denom * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # the interval holds p exactly; rounding would put lo a hair above 0 at p = 0 (a negative error bar)
    return np.minimum(np.clip(centre - half, 0.0, 1.0), p), np.maximum(np.clip(centre + half, 0.0, 1.0), p)


def ols(X: np.ndarray, y: np.ndarray, names: Sequence[str], confidence: float = CONFIDENCE) -> dict:
    """Ordinary least squares ``y ~ X beta`` with t-intervals from ``s^2 (X^T X)^-1``.

    Returns ``{"estimate", "se", "lo", "hi"}`` (dicts keyed by ``names``) and ``"dof"``,
    ``"n_obs"``.  With no residual degrees of freedom the errors are NaN: an exact fit says
    nothing about uncertainty.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n_obs, n_par = X.shape
    if np.linalg.matrix_rank(X) < n_par:
        raise ValueError(f"design matrix for {list(names)} is rank deficient ({n_obs} observations)")
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = n_obs - n_par
    if dof > 0:
        s2 = float(np.sum((y - X @ beta) ** 2)) / dof
        se = np.sqrt(np.diag(s2 * np.linalg.inv(X.T @ X)))
        half = special.stdtrit(dof, 0.5 + confidence / 2) * se
    else:
        se = half = np.full(n_par, np.nan)
    return {
        "estimate": dict(zip(names, beta)), "se": dict(zip(names, se)),
        "lo": dict(zip(names, beta - half)), "hi": dict(zip(names, beta + half)),
        "dof": dof, "n_obs": n_obs,
    }


def loglog_slope(x, y, confidence: float = CONFIDENCE) -> dict:
    """Slope of ``log y`` on ``log x`` by OLS with a t-interval.

    Returns ``slope, se, lo, hi, intercept, n_points``; non-positive or NaN points are
    dropped (a zero median flip fraction has no logarithm) and fewer than two left give NaN.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    n_points = int(keep.sum())
    if n_points < 2 or np.unique(x[keep]).size < 2:
        return {"slope": np.nan, "se": np.nan, "lo": np.nan, "hi": np.nan, "intercept": np.nan,
                "n_points": n_points}
    lx = np.log(x[keep])
    fit = ols(np.column_stack([np.ones(n_points), lx]), np.log(y[keep]), ["c", "slope"], confidence)
    return {"slope": fit["estimate"]["slope"], "se": fit["se"]["slope"], "lo": fit["lo"]["slope"],
            "hi": fit["hi"]["slope"], "intercept": fit["estimate"]["c"], "n_points": n_points}


def firth_logistic(x, successes, trials, max_iter: int = 200, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression ``P(success) = expit(a + b x)`` on grouped binomial data with
    Firth's penalty (Jeffreys prior).

    Returns ``(beta = [a, b], covariance)``, the covariance being the inverse Fisher
    information at the estimate.  Firth rather than plain maximum likelihood because at a sharp
    threshold the seeds separate completely (all fail below a width, all succeed above), where
    the plain estimate runs off to infinity; the penalised one stays finite and is less biased.
    """
    x = np.asarray(x, dtype=float)
    s = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    X = np.column_stack([np.ones_like(x), x])

    def penalised(beta):
        eta = X @ beta
        w = n * special.expit(eta) * special.expit(-eta)
        info = X.T @ (w[:, None] * X)
        sign, logdet = np.linalg.slogdet(info)
        # log-likelihood written with log-expit so that it stays finite for large |eta|
        ll = np.sum(s * special.log_expit(eta) + (n - s) * special.log_expit(-eta))
        return ll + 0.5 * logdet if sign > 0 else -np.inf, w, info

    beta = np.zeros(2)
    value, w, info = penalised(beta)
    for _ in range(max_iter):
        cov = np.linalg.inv(info)
        p = special.expit(X @ beta)
        leverage = w * np.einsum("ij,jk,ik->i", X, cov, X)
        step = cov @ (X.T @ (s - n * p + leverage * (0.5 - p)))
        # step halving keeps the penalised likelihood increasing where Newton overshoots
        for _ in range(50):
            new_value, new_w, new_info = penalised(beta + step)
            if new_value >= value - 1e-12:
                break
            step = step / 2
        beta = beta + step
        value, w, info = new_value, new_w, new_info
        if np.max(np.abs(step)) < tol:
            break
    return beta, np.linalg.inv(info)


def logistic_crossing(x, successes, trials, target: float, confidence: float = CONFIDENCE) -> dict:
    """Where the Firth logistic fit of success on ``x`` crosses probability ``target``.

    Returns ``x_cross, lo, hi`` (delta-method interval on ``x``), ``slope`` (``b``).  ``x`` is
    centred before fitting for conditioning.  A non-increasing fit has no meaningful crossing:
    NaN.
    """
    x = np.asarray(x, dtype=float)
    centre = float(np.mean(x))
    (a, b), cov = firth_logistic(x - centre, successes, trials)
    nan = {"x_cross": np.nan, "lo": np.nan, "hi": np.nan, "slope": b}
    if not b > 0:
        return nan
    logit = float(special.logit(target))
    u = (logit - a) / b
    grad = np.array([-1 / b, -(logit - a) / b**2])
    se = float(np.sqrt(grad @ cov @ grad))
    z = normal_quantile(confidence)
    return {"x_cross": centre + u, "lo": centre + u - z * se, "hi": centre + u + z * se, "slope": b}


def cluster_percentile_interval(point, draws, n_clusters: int, confidence: float = CONFIDENCE,
                                axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap ``draws`` around ``point``, widened for few clusters.

    Resampling ``G`` clusters (data instances) underestimates the spread by ``sqrt((G-1)/G)`` and
    ignores that the spread itself is estimated from ``G`` values, so percentile intervals from 2 to
    8 instances under-cover badly.  Each side's distance from ``point`` is scaled by
    ``t_{G-1} / z * sqrt(G / (G - 1))`` (-> 1 for many clusters); an infinite end stays infinite.
    Needs ``G >= 2``.
    """
    if n_clusters < 2:
        raise ValueError(f"an interval over clusters needs at least 2 of them, got n_clusters={n_clusters}")
    alpha = 1 - confidence
    draws = np.asarray(draws, dtype=float)
    q_lo = np.quantile(draws, alpha / 2, axis=axis, method="lower")
    q_hi = np.quantile(draws, 1 - alpha / 2, axis=axis, method="higher")
    widen = special.stdtrit(n_clusters - 1, 1 - alpha / 2) / normal_quantile(confidence) * np.sqrt(n_clusters / (n_clusters - 1))
    point = np.asarray(point, dtype=float)
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isinf(q_lo), q_lo, point - widen * (point - q_lo))
        hi = np.where(np.isinf(q_hi), q_hi, point + widen * (q_hi - point))
    return np.minimum(lo, q_lo), np.maximum(hi, q_hi)


def firth_logistic_batch(x, successes, trials, max_iter: int = 200, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """:func:`firth_logistic` for many data sets on one grid ``x`` at once (bootstrap replicates).

    successes, trials: ``(B, len(x))``; a zero-trial point contributes nothing.  Returns ``beta (B, 2)``
    and ``ok (B,)``, False where the information is singular (fewer than two points with trials) or
    Newton did not converge.
    """
    x = np.asarray(x, dtype=float)
    s = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    beta = np.zeros((s.shape[0], 2))

    def terms(beta):
        eta = beta[:, :1] + beta[:, 1:] * x
        p = special.expit(eta)
        w = n * p * (1 - p)
        i00, i01, i11 = w.sum(axis=1), (w * x).sum(axis=1), (w * x * x).sum(axis=1)
        det = i00 * i11 - i01**2
        # one point with trials leaves det = 0 up to rounding: singular, not a tiny positive
        det = np.where(det > 1e-10 * i00 * i11, det, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = (s * special.log_expit(eta) + (n - s) * special.log_expit(-eta)).sum(axis=1) + 0.5 * np.log(det)
        return np.where(det > 0, ll, -np.inf), p, w, (i00, i01, i11, det)

    value, p, w, (i00, i01, i11, det) = terms(beta)
    ok = det > 0
    converged = np.zeros(len(beta), dtype=bool)
    for _ in range(max_iter):
        safe = np.where(ok, det, 1.0)
        # inverse of the 2x2 information, and the leverages h_i = w_i (1, x_i) I^-1 (1, x_i)^T
        v00, v01, v11 = i11 / safe, -i01 / safe, i00 / safe
        h = w * (v00[:, None] + 2 * v01[:, None] * x + v11[:, None] * x * x)
        r = s - n * p + h * (0.5 - p)
        u0, u1 = r.sum(axis=1), (r * x).sum(axis=1)
        step = np.column_stack([v00 * u0 + v01 * u1, v01 * u0 + v11 * u1])
        step[~ok] = 0.0
        for _ in range(50):  # halve where the penalised likelihood would fall
            new = terms(beta + step)
            worse = ok & ~(new[0] >= value - 1e-12)
            if not worse.any():
                break
            step[worse] /= 2
        beta = beta + step
        value, p, w, (i00, i01, i11, det) = new
        converged = np.max(np.abs(step), axis=1) < tol
        if converged[ok].all():
            break
    return beta, ok & converged & (det > 0)
