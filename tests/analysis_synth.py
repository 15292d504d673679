"""Synthetic run and curve tables drawn from a planted law, for the analysis tests.

The law: the threshold at target rate ``1 - delta_fail`` is ``m* = C n^p k^q delta^r``, and a
run at width ``m`` succeeds with probability ``expit(slope (log m - log m*) + logit(1 - delta_fail))``,
so that the probability crosses ``1 - delta_fail`` exactly at ``m*``.  Widths are a log2 grid
around ``m*``.  A success is written as a run that converged at the training ``eps``, a failure
as one that ran out of budget with a relative loss above every tested ``eps'``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import special

from records.schema import CURVES_SCHEMA as CURVE_SCHEMA
from records.schema import RUNS_SCHEMA as RUN_SCHEMA

# Tolerances of the analysis tests, in one place.
TOL = {
    "exponent_abs": 0.6,       # |fitted p, q - planted| from grid thresholds on a log2 grid
    "exponent_abs_smooth": 0.25,  # same from the logistic thresholds
    "log_m_logistic": 0.25,    # |log m_logistic - log m*| for one well-sampled cell
    "slope_abs": 0.05,         # |log-log slope - planted| with 5% multiplicative noise
    "float": 1e-12,
    "wilson": 5e-5,            # published four-decimal values
}

TRAIN_EPS = 1e-6
FAIL_LOSS = 0.5  # above every eps' in EPS_GRID

_DEFAULTS = {
    "sweep": "synthetic", "d": 6, "delta": 0.5, "bias": False, "target": "random", "delta_2": 0.0,
    "data_seed": 0, "mode": "relu", "eps": TRAIN_EPS, "t_max": 12.0, "t_unit": "lambda_star",
    "max_steps": 100_000, "step_factor": 0.5, "dtype": "float64", "status": "budget", "stopped_by": "",
    "steps_to_eps": -1, "lambda_star": 0.01, "lambda_min_H0": 0.01, "m_thm": 1e12, "device": "cpu",
    "version": "test", "git_commit": "0" * 40,
}
_FILL = {pa.string(): "", pa.int64(): 0, pa.float64(): np.nan, pa.bool_(): False}


def complete_runs(partial: pd.DataFrame) -> pd.DataFrame:
    """``partial`` with every column of the pipeline's runs schema, missing ones filled with
    defaults, in schema order and dtypes; ``run_id`` and ``seed`` default to row numbers."""
    df = partial.reset_index(drop=True).copy()
    if "run_id" not in df:
        df["run_id"] = [f"run{i:06d}" for i in range(len(df))]
    if "seed" not in df:
        df["seed"] = np.arange(len(df))
    for field in RUN_SCHEMA:
        if field.name not in df:
            df[field.name] = _DEFAULTS.get(field.name, _FILL[field.type])
    return pa.Table.from_pandas(df[RUN_SCHEMA.names], schema=RUN_SCHEMA, preserve_index=False).to_pandas()


def complete_curves(partial: pd.DataFrame) -> pd.DataFrame:
    """``partial`` with every column of the curves schema (missing floats NaN, bools True)."""
    df = partial.reset_index(drop=True).copy()
    for field in CURVE_SCHEMA:
        if field.name not in df:
            df[field.name] = True if field.type == pa.bool_() else _FILL[field.type]
    return pa.Table.from_pandas(df[CURVE_SCHEMA.names], schema=CURVE_SCHEMA, preserve_index=False).to_pandas()


def success_probability(m, m_star: float, slope: float, target: float) -> np.ndarray:
    return special.expit(slope * (np.log(m) - np.log(m_star)) + special.logit(target))


def planted_cell(m_star: float, *, seeds: int, slope: float, target: float, rng: np.random.Generator,
                 span: int = 5, **columns) -> pd.DataFrame:
    """Partial runs of one cell: ``seeds`` runs at each width ``2^j``, ``|j - log2 m*| <= span``."""
    centre = int(np.round(np.log2(m_star)))
    widths = 2 ** np.arange(max(centre - span, 0), centre + span + 1)
    m = np.repeat(widths, seeds)
    success = rng.random(m.size) < success_probability(m, m_star, slope, target)
    return pd.DataFrame({
        "m": m.astype(np.int64), "seed": np.tile(np.arange(seeds), widths.size),
        "status": np.where(success, "converged", "budget"),
        "min_rel_loss": np.where(success, TRAIN_EPS / 2, FAIL_LOSS), **columns,
    })


def planted_runs(*, p: float, q: float, C: float, ns, ks, seeds: int, slope: float, delta_fail: float,
                 rng_seed: int, r: float = 0.0, deltas=(0.5,), bias: bool = False, span: int = 5) -> pd.DataFrame:
    """A complete runs table over the cells ``ns x ks x deltas`` drawn from the planted law."""
    rng = np.random.default_rng(rng_seed)
    cells = []
    for n in ns:
        for k in ks:
            for delta in deltas:
                m_star = C * n**p * k**q * delta**r
                cells.append(planted_cell(m_star, seeds=seeds, slope=slope, target=1 - delta_fail, rng=rng,
                                          span=span, n=n, k=k, delta=delta, bias=bias, m_thm=1e3 * m_star))
    runs = pd.concat(cells, ignore_index=True)
    runs["run_id"] = [f"b{int(bias)}-{i:06d}" for i in range(len(runs))]
    return complete_runs(runs)


def write_results(out: Path, runs: pd.DataFrame, curves: pd.DataFrame, files: int = 3) -> None:
    """Write ``runs``/``curves`` as the pipeline does: ``files`` Parquet files per table."""
    for name, table, schema in (("runs", runs, RUN_SCHEMA), ("curves", curves, CURVE_SCHEMA)):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i, part in enumerate(np.array_split(np.arange(len(table)), files)):
            pq.write_table(pa.Table.from_pandas(table.iloc[part], schema=schema, preserve_index=False),
                           out / name / f"task{i:04d}.parquet")


def planted_floor_runs(*, law: dict, ns, ks, widths, instances: int, seeds: int, tau: float, sigma: float,
                       rng_seed: int, deltas=(0.5,), train_eps: float = TRAIN_EPS, **columns) -> pd.DataFrame:
    """A complete runs table whose end-of-budget loss follows a planted floor law

        log L = law["c"] + law["n"] log n + law["k"] log k + law.get("delta", 0) log delta
                + law["m"] log m + u + e,   u ~ N(0, tau) per data instance, e ~ N(0, sigma) per run,

    (``k = 0`` contributes no k term).  A run whose loss falls to ``train_eps`` stopped there: status
    ``converged`` and a recorded loss just under ``train_eps`` (what the pipeline writes), so the
    floor below it is unobserved.  ``final_rel_loss`` and ``min_rel_loss`` both hold the loss.
    """
    rng = np.random.default_rng(rng_seed)
    n, k, delta, data_seed, m, seed = (a.ravel() for a in np.meshgrid(
        ns, ks, deltas, np.arange(instances), widths, np.arange(seeds), indexing="ij"))
    instance = np.unique(np.column_stack([n, k, delta, data_seed]), axis=0, return_inverse=True)[1].ravel()
    u = rng.normal(0, tau, instance.max() + 1)[instance]
    log_k = np.log(np.where(k > 0, k, 1))
    log_loss = (law["c"] + law["n"] * np.log(n) + law["k"] * log_k + law.get("delta", 0.0) * np.log(delta)
                + law["m"] * np.log(m) + u + rng.normal(0, sigma, n.size))
    stopped = log_loss <= np.log(train_eps)
    loss = np.where(stopped, train_eps * 0.9, np.exp(log_loss))
    runs = pd.DataFrame({"n": n, "k": k, "delta": delta, "data_seed": data_seed, "m": m, "seed": seed,
                         "eps": train_eps, "status": np.where(stopped, "converged", "budget"),
                         "final_rel_loss": loss, "min_rel_loss": loss, **columns})
    runs["run_id"] = [f"f{rng_seed}-{i:06d}" for i in range(len(runs))]
    return complete_runs(runs)


def floor_curves(runs: pd.DataFrame, checkpoints: int = 6) -> pd.DataFrame:
    """Curves on which every criterion agrees with ``final_rel_loss <= eps'``: the relative loss falls
    geometrically from 1 to the run's floor, which it holds to the end (so it settles there), with the
    theorem's bound held until the floor is first reached and broken on the floor afterwards (so a
    tolerance below the floor fails the regime criterion too).  The per-step columns of the settling
    criteria (``rel_loss_interval_max``, ``value_rel``, ``deriv_rel`` and theirs) take the same values."""
    floor = runs["final_rel_loss"].to_numpy(float)
    frac = np.linspace(0.0, 1.0, checkpoints)
    rel = floor[:, None] ** frac[None, :]
    rel = np.column_stack([rel, floor])  # the floor again, at the last checkpoint
    held = np.ones_like(rel, dtype=bool)
    held[:, -1] = False
    steps = np.arange(rel.shape[1])
    curves = complete_curves(pd.DataFrame({
        "run_id": np.repeat(runs["run_id"].to_numpy(), rel.shape[1]), "step": np.tile(steps, len(runs)),
        "t": np.tile(steps, len(runs)).astype(float), "rel_loss": rel.ravel(), "bound_held": held.ravel(),
        "lambda_min": np.repeat(runs["lambda_star"].to_numpy(float), rel.shape[1]),
    }))
    return curves.assign(rel_loss_interval_max=curves["rel_loss"], value_rel=curves["rel_loss"],
                         deriv_rel=curves["rel_loss"], value_rel_interval_max=curves["rel_loss"],
                         deriv_rel_interval_max=curves["rel_loss"])


def assert_judges_from_declared_columns(c, runs, curves, eps: float) -> None:
    """Criterion ``c`` judges ``runs`` from the columns it declares alone as from the whole tables,
    and the data tells runs apart (some succeed, some fail)."""
    import pandas as pd

    full = c.judge(runs, curves, eps)
    only = c.judge(runs[list(c.columns)], curves[list(c.curve_columns)] if c.needs_curves else None, eps)
    pd.testing.assert_series_equal(only, full)
    assert full.any() and not full.all()

