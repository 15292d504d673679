"""Planted run and curve tables for the analysis of the three widths (issue 20): per run, the time at
which the relative loss reaches each tolerance, the bound's first violation, the Gram drift, the late
rate and the trend, drawn from planted laws.

Convergence: a run at width ``m`` in a cell with limiting threshold ``m_inf`` converges (its relative
loss falls as ``10^(-8 t / tau)``, so it reaches ``eps'`` at ``tau log10(1/eps') / 8`` and ``1e-8`` at
``tau``) by flow time ``T`` with probability ``expit(slope (log m - log m*(T)) + logit(target))``,
``m*(T) = m_inf (1 + A exp(-T / T0))``: the threshold falls with the horizon and settles at ``m_inf``.
One uniform draw per run makes the outcomes at every ``T`` one monotone history.  A data instance
multiplies ``m_inf`` by ``exp(u)``, ``u ~ N(0, tau_inst)``.  Runs stop at the training ``eps`` (status
``converged``) or at ``t_max`` (``budget``); runs that never converge sit on a plateau at 1e-5.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize, special

from analysis.timed import T_TO_EPS, t_to_column
from tests.analysis_synth import complete_curves, complete_runs

LAMBDA_STAR = 0.05
TRAIN_EPS = 1e-10
PLATEAU = 1e-5
TARGET = 0.9


def _keep_extra(done: pd.DataFrame, partial: pd.DataFrame) -> pd.DataFrame:
    """``done`` with the columns of ``partial`` the schema does not have yet (issue 20's new ones)."""
    partial = partial.reset_index(drop=True)
    extra = {c: partial[c].to_numpy() for c in partial.columns if c not in done.columns}
    return done.assign(**extra) if extra else done


def complete_answer_runs(partial: pd.DataFrame) -> pd.DataFrame:
    """:func:`tests.analysis_synth.complete_runs` keeping the columns the schema lacks."""
    return _keep_extra(complete_runs(partial), partial)


def complete_answer_curves(partial: pd.DataFrame) -> pd.DataFrame:
    """:func:`tests.analysis_synth.complete_curves` keeping the columns the schema lacks."""
    return _keep_extra(complete_curves(partial), partial)


def m_star_at(m_inf, T, A: float, T0: float):
    """The planted threshold at horizon ``T``."""
    return np.asarray(m_inf, dtype=float) * (1 + A * np.exp(-np.asarray(T, dtype=float) / T0))


def conv_probability(m, m_inf, T, *, slope: float, A: float, T0: float, target: float = TARGET):
    return special.expit(slope * (np.log(m) - np.log(m_star_at(m_inf, T, A, T0))) + special.logit(target))


def conv_times(m, m_inf, u, *, slope: float, A: float, T0: float, target: float = TARGET) -> np.ndarray:
    """Time (1/lambda_*) to ``1e-8`` of runs with uniform draws ``u``: the first ``T`` with
    ``u < conv_probability(m, m_inf, T)``; ``inf`` when no horizon gets there."""
    m, m_inf, u = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (m, m_inf, u)))
    # u < P(m, T)  <=>  m*(T) < m exp(-(logit u - logit target) / slope) =: M
    M = m * np.exp(-(special.logit(u) - special.logit(target)) / slope)
    if A == 0:  # the threshold does not depend on the horizon: converged from the start, or never
        return np.where(M > m_inf, 0.5, np.inf)
    x = (M / m_inf - 1) / A
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(M <= m_inf, np.inf, np.where(x >= 1, 0.0, -T0 * np.log(x)))
    return np.maximum(tau, 0.5)  # nothing converges before t = 0.5


def pooled_crossing(prob, m_inf: float, tau_inst: float, target: float = TARGET) -> float:
    """Width where the success probability averaged over instances (``m_inf exp(u)``, ``u ~ N(0,
    tau_inst)``, Gauss-Hermite) crosses ``target``: what a pooled threshold estimates.
    ``prob(m, m_inf)`` is the probability for one instance."""
    z, w = np.polynomial.hermite_e.hermegauss(40)
    w = w / w.sum()

    def f(x):
        return np.sum(w * prob(np.exp(x), m_inf * np.exp(tau_inst * z))) - target
    return float(np.exp(optimize.brentq(f, np.log(m_inf) - 15, np.log(m_inf) + 15)))


def runs_from_times(partial: pd.DataFrame, tau: np.ndarray, *, t_max: float, lambda_star: float = LAMBDA_STAR,
                    train_eps: float = TRAIN_EPS) -> pd.DataFrame:
    """The summary columns of runs whose relative loss falls as ``10^(-8 t / tau)`` (``tau`` in 1/lambda_*;
    ``inf``: a plateau at :data:`PLATEAU`, reached by ``t = 2``), stopped at ``train_eps`` or ``t_max``."""
    tau = np.asarray(tau, dtype=float)
    decades = -np.log10(train_eps)
    t_stop_eps = tau * decades / 8
    converged = t_stop_eps <= t_max
    stop = np.where(converged, t_stop_eps, t_max)
    out = partial.reset_index(drop=True).copy()
    for eps in T_TO_EPS:
        reach = tau * -np.log10(eps) / 8
        if eps >= PLATEAU:
            reach = np.where(np.isfinite(tau), reach, 2.0)
        out[t_to_column(eps)] = np.where(reach <= stop * (1 + 1e-12), reach / lambda_star, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        min_rel = np.where(np.isfinite(tau), 10.0 ** (-8 * stop / tau), PLATEAU)
        rate = np.where(np.isfinite(tau), 8 * np.log(10) / tau, 0.0)
    trend = np.where(converged, "converged", np.where(np.isfinite(tau), "converging", "plateau"))
    return out.assign(status=np.where(converged, "converged", "budget"), t=stop / lambda_star, eps=train_eps,
                      t_max=t_max, t_unit="lambda_star", lambda_star=lambda_star, min_rel_loss=min_rel,
                      final_rel_loss=min_rel, late_rate=rate, trend=trend)


def planted_study(cells: list[dict], *, widths, instances: int, seeds: int, rng_seed: int, t_max: float = 96.0,
                  slope: float = 3.0, A: float = 0.0, T0: float = 8.0, tau_inst: float = 0.0, held: dict | None = None,
                  drift: dict | None = None, lambda_star: float = LAMBDA_STAR, d: int = 6,
                  bias: bool = False) -> pd.DataFrame:
    """A complete runs table over ``cells`` (dicts with ``n, k, delta, m_inf`` and optionally ``flat``:
    a probability of converging, independent of ``m``, by ``t = 10``; ``m_held``: the threshold of the
    bound holding).

    held: ``{"slope"}``: the bound holds until ``1e-8`` with probability ``expit(slope (log m - log
    m_held) + logit(target))``, independently of convergence; else it breaks at half the time to ``1e-8``.
    drift: ``{"c", "n", "k", "delta", "m", "tau", "sigma"}``: ``log(max ||H - H(0)||_2 / lambda_*)`` follows
    this law plus an instance effect ``N(0, tau)`` and a run effect ``N(0, sigma)``; ``min_lambda_ratio``
    is 0.9.
    """
    rng = np.random.default_rng(rng_seed)
    parts = []
    for cell in cells:
        n, k, delta = cell["n"], cell["k"], cell["delta"]
        inst, m, seed = (a.ravel() for a in np.meshgrid(np.arange(instances), widths, np.arange(seeds), indexing="ij"))
        shift = np.exp(rng.normal(0, tau_inst, instances))[inst] if tau_inst > 0 else np.ones(inst.size)
        u = rng.random(inst.size)
        if cell.get("flat") is not None:
            tau = np.where(u < cell["flat"], 1.0 + 9.0 * rng.random(inst.size), np.inf)
        else:
            tau = conv_times(m, cell["m_inf"] * shift, u, slope=slope, A=A, T0=T0)
        partial = pd.DataFrame({"n": n, "k": k, "delta": delta, "bias": bias, "d": d, "m": m.astype(np.int64),
                                "data_seed": inst, "seed": seed,
                                "m_thm": 1e3 * n**6 * max(k, 1) ** 3 / delta**3})
        runs = runs_from_times(partial, tau, t_max=t_max, lambda_star=lambda_star)
        t_to = runs[t_to_column(1e-8)].to_numpy(float)
        if held is not None:
            ok = rng.random(inst.size) < special.expit(held["slope"] * (np.log(m) - np.log(cell["m_held"] * shift))
                                                       + special.logit(TARGET))
            runs["bound_violation_t"] = np.where(ok, np.inf, np.where(np.isfinite(t_to), t_to / 2, 1.0 / lambda_star))
        else:
            runs["bound_violation_t"] = np.inf
        if drift is not None:
            log_k = np.log(k) if k > 0 else 0.0
            u_inst = rng.normal(0, drift["tau"], instances)[inst]
            log_ratio = (drift["c"] + drift["n"] * np.log(n) + drift["k"] * log_k + drift.get("delta", 0.0)
                         * np.log(delta) + drift["m"] * np.log(m) + u_inst + rng.normal(0, drift["sigma"], inst.size))
            runs["max_H_drift_2"] = np.exp(log_ratio) * lambda_star
        else:
            runs["max_H_drift_2"] = 0.01 * lambda_star
        runs["min_lambda_ratio"] = 0.9
        parts.append(runs)
    runs = pd.concat(parts, ignore_index=True)
    runs["run_id"] = [f"a{rng_seed}-{i:06d}" for i in range(len(runs))]
    return complete_answer_runs(runs)


def planted_curves(runs: pd.DataFrame, times=(0.0, 0.75, 1.5, 3.0, 6.0, 12.0, 24.0, 48.0, 96.0, 192.0)) -> pd.DataFrame:
    """Checkpoints at ``times`` (1/lambda_*) up to each run's stop, and at the stop: the relative loss of
    :func:`runs_from_times`, ``H_drift_2`` rising to the run's ``max_H_drift_2`` as ``1 - exp(-t)`` (most of
    the drift comes early) and ``lambda_min = min_lambda_ratio lambda_*``."""
    rows = []
    lam = runs["lambda_star"].to_numpy(float)
    stop = runs["t"].to_numpy(float) * lam
    rate = runs["late_rate"].to_numpy(float)
    for i, run_id in enumerate(runs["run_id"]):
        t = np.array([x for x in times if x < stop[i]] + [stop[i]])
        rel = np.where(rate[i] > 0, np.exp(-rate[i] * t), np.where(t >= 2, PLATEAU, 1.0))
        grow = (1 - np.exp(-t)) / (1 - np.exp(-stop[i]))
        rows.append(pd.DataFrame({"run_id": run_id, "step": np.arange(t.size) * 10, "t": t / lam[i], "rel_loss": rel,
                                  "H_drift_2": runs["max_H_drift_2"].iloc[i] * grow,
                                  "lambda_min": runs["min_lambda_ratio"].iloc[i] * lam[i]}))
    return complete_answer_curves(pd.concat(rows, ignore_index=True))
