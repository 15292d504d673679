"""How per-run measurements scale with the width ``m``: the loss floor, weight movement and
flipped activation patterns (log-log slopes), and the flow's decay rate against ``lambda_star``,
``lambda_min(H(0))`` and Proposition 1's bound."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .columns import require_columns
from .defaults import CELL_KEYS, CONFIDENCE, EXPECTED_WIDTH_SLOPES, FAILED_STATUSES, STOPPED_AT_EPS, THRESHOLD_KEYS
from .stats import loglog_slope


def _usable(runs: pd.DataFrame) -> pd.DataFrame:
    # a diverged run's measurements describe the step size, a failed one's nothing at all
    require_columns(runs, ["status"], "runs")
    return runs[~runs["status"].isin(FAILED_STATUSES)]


def width_medians(runs: pd.DataFrame, quantities: Sequence[str], by: Sequence[str] = THRESHOLD_KEYS) -> pd.DataFrame:
    """Median and quartiles of per-run ``quantities`` per width, over runs not diverged/failed.

    runs: ``*by, m, status, *quantities``.  Returns long format: ``*by, m, quantity, median, q25,
    q75, n_runs``.
    """
    runs = _usable(runs)
    require_columns(runs, [*by, "m", *quantities], "runs")
    long = runs.melt(id_vars=[*by, "m"], value_vars=list(quantities), var_name="quantity").dropna(subset=["value"])
    grouped = long.groupby([*by, "m", "quantity"], sort=True, dropna=False)["value"]
    return grouped.agg(median="median", q25=lambda v: v.quantile(0.25), q75=lambda v: v.quantile(0.75),
                       n_runs="size").reset_index()


def loss_floor(runs: pd.DataFrame, by: Sequence[str] = THRESHOLD_KEYS) -> pd.DataFrame:
    """The lowest relative loss reached (``min_rel_loss``) per width: :func:`width_medians` columns
    plus ``converged_frac`` and ``censored``.

    A run that converged stopped at its training ``eps``, so its ``min_rel_loss`` says only that
    the floor is at most ``eps``; where half or more of a width's runs converged the median is such
    an upper bound, flagged ``censored`` and left out of :func:`loglog_slopes`.
    """
    runs = _usable(runs)
    require_columns(runs, [*by, "m", "min_rel_loss"], "runs")
    floor = width_medians(runs, ["min_rel_loss"], by)
    converged = (runs["status"] == STOPPED_AT_EPS).groupby([runs[c] for c in [*by, "m"]], dropna=False).mean()
    floor = floor.merge(converged.rename("converged_frac").reset_index(), on=[*by, "m"], how="left")
    floor["censored"] = floor["converged_frac"] >= 0.5
    return floor


def loglog_slopes(medians: pd.DataFrame, expected: Mapping[str, float] = EXPECTED_WIDTH_SLOPES,
                  confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Slope of ``log median`` against ``log m`` per group, with a t-interval.

    medians: a :func:`width_medians` or :func:`loss_floor` table; rows flagged ``censored`` and
    non-positive medians are left out.  Groups are the columns other than ``m`` and the
    statistics.  Returns the group columns, ``quantity, slope, se, lo, hi, n_widths, expected``
    (from ``expected[quantity]``, NaN if absent) and ``expected_in_interval``.
    """
    require_columns(medians, ["m", "quantity", "median"], "medians")
    stats_cols = {"m", "median", "q25", "q75", "n_runs", "converged_frac", "censored"}
    keys = [c for c in medians.columns if c not in stats_cols]
    if "censored" in medians.columns:
        medians = medians[~medians["censored"].astype(bool)]
    rows = []
    for key, group in medians.groupby(keys, sort=True, dropna=False):
        fit = loglog_slope(group["m"], group["median"], confidence)
        reference = expected.get(dict(zip(keys, key))["quantity"], np.nan)
        rows.append({**dict(zip(keys, key)), "slope": fit["slope"], "se": fit["se"], "lo": fit["lo"],
                     "hi": fit["hi"], "n_widths": fit["n_points"], "expected": reference,
                     "expected_in_interval": bool(fit["lo"] <= reference <= fit["hi"])})
    return pd.DataFrame(rows, columns=[*keys, "slope", "se", "lo", "hi", "n_widths", "expected",
                                       "expected_in_interval"])


def rate_vs_theory(runs: pd.DataFrame, by: Sequence[str] = CELL_KEYS) -> pd.DataFrame:
    """The flow's rate and the spectrum against theory, per cell, over runs not diverged/failed.

    runs: ``*by, status, decay_rate, lambda_star, lambda_min_H0, min_lambda_ratio, prop1_bound,
    bound_held, lambda_held``.  Returns ``*by, n_runs`` and medians (with quartiles ``_q25,
    _q75`` for the first two) of
    - ``rate_ratio``: fitted ``decay_rate / lambda_star`` (the theorem's bound needs >= 1/2),
    - ``rate_over_lambda0``: ``decay_rate / lambda_min(H(0))``,
    - ``lambda0_ratio``: ``lambda_min(H(0)) / lambda_star`` (Lemma 2: >= 3/4 at large m),
    - ``min_lambda_ratio``: ``min_t lambda_min(H(t)) / lambda_star`` (Lemma 4: >= 1/2),
    - ``prop1_ratio``: ``prop1_bound / lambda_star`` (Proposition 1: <= 1),
    and the fractions ``prop1_held_frac``, ``bound_held_frac``, ``lambda_held_frac``.
    """
    runs = _usable(runs)
    require_columns(runs, [*by, "decay_rate", "lambda_star", "lambda_min_H0", "min_lambda_ratio",
                           "prop1_bound", "bound_held", "lambda_held"], "runs")
    # ratios recomputed from their parts so that they do not depend on how the pipeline stored them
    per_run = runs[list(by)].assign(
        rate_ratio=runs["decay_rate"] / runs["lambda_star"],
        rate_over_lambda0=runs["decay_rate"] / runs["lambda_min_H0"],
        lambda0_ratio=runs["lambda_min_H0"] / runs["lambda_star"],
        min_lambda_ratio=runs["min_lambda_ratio"],
        prop1_ratio=runs["prop1_bound"] / runs["lambda_star"],
        prop1_held=(runs["lambda_star"] >= runs["prop1_bound"]).astype(float),
        bound_held=runs["bound_held"].astype(float),
        lambda_held=runs["lambda_held"].astype(float),
    )
    grouped = per_run.groupby(list(by), sort=True, dropna=False)
    out = grouped.agg(
        n_runs=("rate_ratio", "size"),
        rate_ratio=("rate_ratio", "median"),
        rate_ratio_q25=("rate_ratio", lambda v: v.quantile(0.25)),
        rate_ratio_q75=("rate_ratio", lambda v: v.quantile(0.75)),
        rate_over_lambda0=("rate_over_lambda0", "median"),
        rate_over_lambda0_q25=("rate_over_lambda0", lambda v: v.quantile(0.25)),
        rate_over_lambda0_q75=("rate_over_lambda0", lambda v: v.quantile(0.75)),
        lambda0_ratio=("lambda0_ratio", "median"),
        min_lambda_ratio=("min_lambda_ratio", "median"),
        prop1_ratio=("prop1_ratio", "median"),
        prop1_held_frac=("prop1_held", "mean"),
        bound_held_frac=("bound_held", "mean"),
        lambda_held_frac=("lambda_held", "mean"),
    )
    return out.reset_index()
