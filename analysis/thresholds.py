"""Empirical width thresholds ``m*`` per cell ``(n, k, delta, bias)`` (and criterion, eps'):
the grid threshold with a bootstrap interval over seeds, a smooth logistic estimate, censoring
flags, and the gap to the theorem's width ``m_thm``.

``censored`` takes the values
- ``"none"``: ``m_star`` is a tested width;
- ``"above"``: the target rate is not reached at the largest tested width (``m* > m_bound = m_max``);
- ``"below"``: the smallest tested width already reaches it (``m* <= m_bound = m_min``);
and, for the logistic estimate only, ``"undefined"`` (a single width, or a fit that does not
increase with ``m``).  A censored threshold is NaN, never a number that could be fitted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import special

from .columns import require_columns
from .defaults import ABOVE, BELOW, CONFIDENCE, N_BOOT, NOT_CENSORED, THRESHOLD_KEYS, UNDEFINED
from .stats import cluster_percentile_interval, firth_logistic_batch, logistic_crossing
from .success import RATE_STATS

# Rates are ratios of small integers; without slack 19/20 could miss a target of 0.95 by
# one rounding error.
_RATE_SLACK = 1e-12


def threshold_keys(rates: pd.DataFrame) -> list[str]:
    """Columns of a rates table that identify a threshold cell: all but ``m`` and the rate statistics."""
    return [c for c in rates.columns if c not in RATE_STATS and c != "m"]


def _first_stable(ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows of ``ok`` (widths ascending): index of the smallest width from which every larger
    width is ok, and whether such a width exists."""
    stays = np.flip(np.cumprod(np.flip(ok, axis=-1), axis=-1), axis=-1).astype(bool)
    return np.argmax(stays, axis=-1), stays[..., -1]


def grid_threshold(m: Sequence[int], rate: Sequence[float], target: float) -> dict:
    """Smallest tested width ``m`` at which ``rate >= target`` and stays so at every larger tested
    width.  Returns ``m_star, censored, m_bound`` (see the module docstring)."""
    order = np.argsort(m)
    m = np.asarray(m, dtype=float)[order]
    ok = np.asarray(rate, dtype=float)[order] >= target - _RATE_SLACK
    idx, exists = _first_stable(ok)
    if not exists:
        return {"m_star": np.nan, "censored": ABOVE, "m_bound": m[-1]}
    if idx == 0:
        return {"m_star": np.nan, "censored": BELOW, "m_bound": m[0]}
    return {"m_star": m[idx], "censored": NOT_CENSORED, "m_bound": np.nan}


def bootstrap_threshold(m: Sequence[int], successes: Sequence[int], trials: Sequence[int], target: float,
                        rng: np.random.Generator, n_boot: int = N_BOOT, confidence: float = CONFIDENCE) -> dict:
    """Percentile bootstrap of :func:`grid_threshold`, resampling seeds within each width.

    Resampling ``trials`` outcomes with replacement from a width with ``successes`` is a
    ``Binomial(trials, successes / trials)`` draw, which is what is drawn.  A replicate censored
    above counts as ``inf``, one censored below as ``m_min``; so ``m_star_hi = inf`` means the
    interval is open above the tested range and ``m_star_lo = m_min`` means "at or below m_min".
    Returns ``m_star_lo, m_star_hi, boot_above_frac`` (fraction of replicates censored above);
    all NaN when ``n_boot == 0`` (no bootstrap asked for).
    """
    if n_boot == 0:
        return {"m_star_lo": np.nan, "m_star_hi": np.nan, "boot_above_frac": np.nan}
    order = np.argsort(m)
    m = np.asarray(m, dtype=float)[order]
    n = np.asarray(trials, dtype=np.int64)[order]
    p = np.asarray(successes, dtype=float)[order] / n
    draws = rng.binomial(n, p, size=(n_boot, len(m)))
    idx, exists = _first_stable(draws / n >= target - _RATE_SLACK)
    values = np.where(exists, m[idx], np.inf)
    alpha = 1 - confidence
    return {"m_star_lo": float(np.quantile(values, alpha / 2, method="lower")),
            "m_star_hi": float(np.quantile(values, 1 - alpha / 2, method="higher")),
            "boot_above_frac": float(np.mean(~exists))}


def logistic_threshold(m: Sequence[int], successes: Sequence[int], trials: Sequence[int], target: float,
                       confidence: float = CONFIDENCE) -> dict:
    """Width where a logistic fit of success on ``log m`` crosses ``target``.

    Returns ``m_logistic, m_logistic_lo, m_logistic_hi`` (delta-method interval on ``log m``),
    ``logistic_slope`` (per unit ``log m``) and ``logistic_censored``.  A crossing outside the
    tested widths is censored (``above``/``below``) and NaN: it would be an extrapolation of the
    logistic shape, which nothing checks.
    """
    m = np.asarray(m, dtype=float)
    s = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    out = {"m_logistic": np.nan, "m_logistic_lo": np.nan, "m_logistic_hi": np.nan, "logistic_slope": np.nan}
    if s.sum() == 0:
        return {**out, "logistic_censored": ABOVE}
    if s.sum() == n.sum():
        return {**out, "logistic_censored": BELOW}
    if np.unique(m).size < 2:
        return {**out, "logistic_censored": UNDEFINED}
    fit = logistic_crossing(np.log(m), s, n, target, confidence)
    out["logistic_slope"] = fit["slope"]
    if not np.isfinite(fit["x_cross"]):
        return {**out, "logistic_censored": UNDEFINED}
    if fit["x_cross"] > np.log(m.max()):
        return {**out, "logistic_censored": ABOVE}
    if fit["x_cross"] < np.log(m.min()):
        return {**out, "logistic_censored": BELOW}
    return {**out, "m_logistic": np.exp(fit["x_cross"]), "m_logistic_lo": np.exp(fit["lo"]),
            "m_logistic_hi": np.exp(fit["hi"]), "logistic_censored": NOT_CENSORED}


def thresholds(rates: pd.DataFrame, *, delta_fail: float, n_boot: int = N_BOOT, seed: int = 0,
               confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Thresholds at confidence ``1 - delta_fail`` for every cell of a rates table.

    rates: a :func:`analysis.success.success_rates` table (``m, trials, successes, rate`` and key
    columns).  ``delta_fail`` must be the sweep's failure probability for the comparison with
    ``m_thm`` to be meaningful.  Returns, per cell, the key columns (``n, k, delta, bias, [strata],
    criterion, eps``) and ``target, n_widths, m_min, m_max, trials_min, m_star, censored, m_bound,
    m_star_lo, m_star_hi, boot_above_frac, m_logistic, m_logistic_lo, m_logistic_hi,
    logistic_slope, logistic_censored``.
    """
    require_columns(rates, ["m", "trials", "successes", "rate"], "rates")
    target = 1 - delta_fail
    keys = threshold_keys(rates)
    rng = np.random.default_rng(seed)
    rows = []
    for key, cell in rates.groupby(keys, sort=True, dropna=False):
        cell = cell.sort_values("m")
        m, s, n = cell["m"].to_numpy(), cell["successes"].to_numpy(), cell["trials"].to_numpy()
        rows.append({
            **dict(zip(keys, key)), "target": target, "n_widths": len(m), "m_min": m.min(), "m_max": m.max(),
            "trials_min": n.min(),
            **grid_threshold(m, cell["rate"].to_numpy(), target),
            **bootstrap_threshold(m, s, n, target, rng, n_boot, confidence),
            **logistic_threshold(m, s, n, target, confidence),
        })
    return pd.DataFrame(rows)


def theory_gap(thresholds: pd.DataFrame, runs: pd.DataFrame, m_col: str = "m_star",
               on: Sequence[str] = THRESHOLD_KEYS) -> pd.DataFrame:
    """Add the theorem's width and the gap to it in orders of magnitude.

    runs: ``*on, m_thm`` (the theorem's width at the sweep's ``delta_fail``; it depends on the data
    through ``lambda_star`` and ``gamma``, so its median over a cell's runs is used).  Adds
    ``m_thm``, ``log10_gap = log10(m_col / m_thm)`` (NaN where censored) and, where the table has
    ``m_bound``, ``log10_gap_bound = log10(m_bound / m_thm)``: a lower bound on the gap for cells
    censored above, an upper bound for cells censored below.
    """
    require_columns(thresholds, [*on, m_col], "thresholds")
    require_columns(runs, [*on, "m_thm"], "runs")
    m_thm = runs.groupby(list(on), dropna=False)["m_thm"].median().rename("m_thm").reset_index()
    out = thresholds.drop(columns=["m_thm"], errors="ignore").merge(m_thm, on=list(on), how="left")
    out["log10_gap"] = np.log10(out[m_col] / out["m_thm"])
    if "m_bound" in out.columns:
        out["log10_gap_bound"] = np.log10(out["m_bound"] / out["m_thm"])
    return out


def logistic_log_m(m: np.ndarray, s: np.ndarray, n: np.ndarray, target: float) -> float:
    """``log m`` of a logistic crossing for one bootstrap replicate: ``+inf`` if censored above,
    ``log m_min`` if below (as in :func:`bootstrap_threshold`), NaN if undefined."""
    fit = logistic_threshold(m, s, n, target)
    flag = fit["logistic_censored"]
    if flag == NOT_CENSORED:
        return float(np.log(fit["m_logistic"]))
    return {ABOVE: np.inf, BELOW: float(np.log(m.min()))}.get(flag, np.nan)


def logistic_log_m_batch(m: np.ndarray, s: np.ndarray, n: np.ndarray, target: float) -> np.ndarray:
    """:func:`logistic_log_m` for many replicates on one width grid (``s, n`` of shape ``(B, widths)``,
    zero-trial widths ignored), by the batched Firth fit."""
    x = np.log(np.asarray(m, dtype=float))
    centre = float(x.mean())
    beta, ok = firth_logistic_batch(x - centre, s, n)
    seen = n > 0
    x_min = np.where(seen, x, np.inf).min(axis=1)
    x_max = np.where(seen, x, -np.inf).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = centre + (special.logit(target) - beta[:, 0]) / beta[:, 1]
    out = np.where(ok & (beta[:, 1] > 0), cross, np.nan)
    out = np.where(out > x_max, np.inf, np.where(out < x_min, x_min, out))
    out = np.where(seen.sum(axis=1) < 2, np.nan, out)
    total, succ = n.sum(axis=1), s.sum(axis=1)
    return np.where(succ == 0, np.inf, np.where(succ == total, x_min, out))


def instance_threshold_draws(counts: pd.DataFrame, target: float, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Replicates of the logistic threshold (``log m``) from resampling data instances with
    replacement, then the seeds of each drawn instance at each width.

    ``c`` copies of an instance with ``N`` seeds at a width, each resampled, add up to one
    ``Binomial(c N, rate)`` draw at the instance's observed rate, which is what is drawn.
    """
    if counts.empty:
        return np.full(n_boot, np.inf)
    table = counts.pivot_table(index="_instance", columns="m", values=["trials", "successes"], aggfunc="sum",
                               fill_value=0)
    trials, succ = table["trials"].to_numpy(float), table["successes"].to_numpy(float)
    m = table["trials"].columns.to_numpy(float)
    n_inst = trials.shape[0]
    copies = rng.multinomial(n_inst, np.full(n_inst, 1 / n_inst), size=n_boot)  # (B, instances)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(trials > 0, succ / trials, 0.0)
    n = copies[:, :, None] * trials[None].astype(np.int64)
    s = rng.binomial(n, rate[None]).sum(axis=1)
    return logistic_log_m_batch(m, s, n.sum(axis=1), target)


def _trials_near(m: np.ndarray, n: np.ndarray, m_cross: float) -> float:
    """Seeds at the tested widths that bracket the crossing (the ones that locate it)."""
    if not np.isfinite(m_cross):
        return np.nan
    below, above = m[m <= m_cross], m[m >= m_cross]
    near = [below.max()] if below.size else []
    near += [above.min()] if above.size else []
    return float(min(n[m == w].sum() for w in near))


def with_instances(success: pd.DataFrame, runs: pd.DataFrame | None, instance_col: str = "data_seed") -> pd.DataFrame:
    """A :func:`analysis.success.run_success` table with the data instance of each run, joined from
    ``runs`` (``run_id, instance_col``) unless it has it already."""
    require_columns(success, ["m", "run_id", "seed", "success"], "success")
    if instance_col in success.columns:
        return success
    if runs is None:
        raise ValueError(f"success table lacks {instance_col!r}: pass runs (run_id, {instance_col}) to join it")
    require_columns(runs, ["run_id", instance_col], "runs")
    return success.merge(runs[["run_id", instance_col]], on="run_id", how="left", validate="many_to_one")


def instance_counts(cell: pd.DataFrame, instance_col: str = "data_seed") -> pd.DataFrame:
    """Trials and successes per data instance and width of one cell's success rows, with ``_instance``
    integer codes (a missing instance label is one instance, not a key lost by groupby)."""
    counts = (cell.groupby([instance_col, "m"], dropna=False)["success"].agg(trials="size", successes="sum")
              .reset_index())
    counts["_instance"] = pd.factorize(counts[instance_col], use_na_sentinel=False)[0]
    return counts


def instance_thresholds(success: pd.DataFrame, runs: pd.DataFrame | None = None, *, delta_fail: float,
                        instance_col: str = "data_seed", n_boot: int = 400, seed: int = 0,
                        confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Logistic thresholds (Firth fit of success on ``log m``, crossing ``1 - delta_fail``) per cell,
    with a percentile interval from a bootstrap over data instances, then seeds within them, widened
    for the number of instances (:func:`analysis.stats.cluster_percentile_interval`).

    success: a :func:`analysis.success.run_success` table; its ``instance_col`` is taken from it or,
    if absent, joined from ``runs`` (``run_id, instance_col``).  Replicates censored above count as
    ``inf``, below as ``m_min``, undefined ones are left out and counted.  Returns, per cell (every
    column but ``m, run_id, seed, success, instance_col``), ``target, n_widths, n_instances,
    trials_min, trials_near`` (seeds at the widths bracketing the crossing), ``m_logistic,
    logistic_censored, m_lo, m_hi, boot_above_frac, boot_undefined_frac, interval_note``.  A cell
    whose threshold is censored, whose replicates all agree, or that has one instance (the interval would hide the scatter
    between instances), has no interval: ``m_lo, m_hi`` NaN, with the reason in ``interval_note``.
    """
    success = with_instances(success, runs, instance_col)
    keys = [c for c in success.columns if c not in ("m", "run_id", "seed", "success", instance_col)]
    target = 1 - delta_fail
    rng = np.random.default_rng(seed)
    rows = []
    for key, cell in success.groupby(keys, sort=True, dropna=False):
        counts = instance_counts(cell, instance_col)
        pooled = counts.groupby("m")[["trials", "successes"]].sum().reset_index()
        m, s, n = (pooled[c].to_numpy() for c in ("m", "successes", "trials"))
        point = logistic_threshold(m, s, n, target, confidence)
        row = {**dict(zip(keys, key)), "target": target, "n_widths": len(m),
               "n_instances": counts["_instance"].nunique(), "trials_min": int(n.min()),
               "trials_near": _trials_near(m, n, point["m_logistic"]), "m_logistic": point["m_logistic"],
               "logistic_censored": point["logistic_censored"], "m_lo": np.nan, "m_hi": np.nan,
               "boot_above_frac": np.nan, "boot_undefined_frac": np.nan, "interval_note": ""}
        draws = instance_threshold_draws(counts, target, rng, n_boot) if n_boot > 0 else np.empty(0)
        defined = draws[~np.isnan(draws)]
        if n_boot > 0:
            row["boot_above_frac"] = float(np.mean(draws == np.inf))
            row["boot_undefined_frac"] = float(np.mean(np.isnan(draws)))
        row["interval_note"] = _interval_reason(n_boot, defined, row["n_instances"], point["logistic_censored"])
        if not row["interval_note"]:
            lo, hi = cluster_percentile_interval(np.log(point["m_logistic"]), defined, row["n_instances"], confidence)
            row["m_lo"], row["m_hi"] = float(np.exp(lo)), float(np.exp(hi))
        rows.append(row)
    return pd.DataFrame(rows)


def _interval_reason(n_boot: int, defined: np.ndarray, n_instances: int, censored: str) -> str:
    """Why a cell gets no interval ("" when it gets one)."""
    if censored != NOT_CENSORED:
        return f"no interval: the threshold itself is censored ({censored})"
    if n_boot == 0:
        return "no interval: no bootstrap asked for"
    if n_instances < 2:
        return "no interval: one data instance, the scatter between instances is not measured"
    if defined.size < 2:
        return "no interval: fewer than 2 defined bootstrap replicates"
    if np.ptp(defined) == 0 or np.all(np.isinf(defined)):
        return "no interval: every bootstrap replicate gave the same value"
    return ""
