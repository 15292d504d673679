"""Convergence as a function of flow time: per cell and width, the fraction of runs whose relative
loss reached ``eps'`` by flow time ``t`` (in units of ``1/lambda_*``), with an interval from a
bootstrap over data instances then seeds.

A run is observed up to its own horizon: its flow-time budget (``t_max``), or the time it stopped
without reaching ``eps'`` (``max_steps``, or a training ``eps`` above ``eps'``).  The fraction at
``t`` is reported only up to the shortest horizon of a cell's runs; beyond it some run's outcome is
unknown, and the fraction is NaN with a note, never extrapolated (no Kaplan-Meier step past the
data).  Runs that had not reached ``eps'`` at their horizon are counted by their ``trend``:
``converging`` (still falling at rate >= 0.1 lambda_*: likely to converge later) or ``plateau``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .columns import require_columns
from .defaults import CELL_KEYS, CONFIDENCE, FAILED_STATUSES
from .floorlaw import FLOOR_N_BOOT, hierarchical_weights
from .stats import cluster_percentile_interval, wilson_interval
from .timed import TIME_SLACK, budget_horizon, stop_time, time_to

SURVIVAL_COLUMNS = ["eps", "t", "n_runs", "n_instances", "horizon", "converged", "frac", "lo", "hi", "n_not_reached",
                    "n_converging", "n_plateau", "n_stopped", "n_diverged", "note"]


def convergence_times(runs: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Per run, the time to ``eps'`` and how long the run was followed, in units of ``1/lambda_*``.

    Args:
        runs: ``run_id, status, t, t_max, lambda_star, t_to_<eps'>`` (+ ``t_unit``).
        eps: the tolerance ``eps'`` (one of the recorded ``t_to`` tolerances).

    Returns:
        A frame indexed like ``runs``: ``run_id, time`` (``inf`` when not reached), ``reached``,
        ``horizon`` (the budget for runs that reached ``eps'`` or diverged, else ``min(stop, budget)``)
        and ``censored`` (not reached, not diverged: right-censored at ``horizon``).
    """
    require_columns(runs, ["run_id", "status"], "runs")
    time = time_to(runs, eps).fillna(np.inf)
    reached = np.isfinite(time)
    failed = runs["status"].isin(FAILED_STATUSES)
    budget = budget_horizon(runs)
    horizon = budget.where(reached | failed, np.minimum(stop_time(runs), budget))
    return pd.DataFrame({"run_id": runs["run_id"], "time": time.where(reached, np.inf), "reached": reached,
                         "horizon": horizon, "censored": ~reached & ~failed}, index=runs.index)


def survival_table(runs: pd.DataFrame, eps: float, times: Sequence[float], *, by: Sequence[str] = CELL_KEYS,
                   instance_col: str = "data_seed", n_boot: int = FLOOR_N_BOOT, seed: int = 0,
                   confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Fraction of runs converged to ``eps'`` by each flow time, per group ``by``.

    Args:
        runs: ``by, instance_col, run_id, status, t, t_max, lambda_star, trend, t_to_<eps'>``.
        eps: the tolerance ``eps'``.
        times: flow times in units of ``1/lambda_*``.
        by: the group columns (default ``n, k, delta, bias, m``).
        instance_col: the data instance within a group; the bootstrap draws instances, then runs
            within each drawn instance.
        n_boot, seed, confidence: the bootstrap.

    Returns:
        One row per group and time: ``*by, eps, t, n_runs, n_instances, horizon`` (the group's shortest
        run horizon), ``converged`` (count), ``frac, lo, hi``, ``n_not_reached`` (runs that had not
        reached ``eps'`` at their horizon, diverged ones excluded), of which ``n_converging``,
        ``n_plateau`` (by ``trend``) and ``n_stopped`` (stopped at a training ``eps`` above ``eps'``),
        ``n_diverged``, ``note``.  Beyond ``horizon``: ``frac, lo, hi`` NaN and a note.  The interval is
        the instance-then-seed percentile interval (widened for few instances), and never narrower
        than the Wilson interval on the group's runs: at a fraction of 0 or 1 every replicate agrees,
        which is no evidence of certainty.  With one instance it is the Wilson interval, said in
        ``note``.
    """
    by = list(by)
    require_columns(runs, [*by, instance_col, "trend"], "runs")
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or not np.all(np.isfinite(times) & (times >= 0)):
        raise ValueError(f"times must be finite flow times >= 0 in units of 1/lambda_*, got {times}")
    per_run = convergence_times(runs, eps)
    data = pd.concat([runs[[*by, instance_col, "status", "trend"]], per_run.drop(columns="run_id")], axis=1)
    rng = np.random.default_rng(seed)
    rows = []
    for key, group in data.groupby(by, sort=True, dropna=False):
        key = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        rows += _group_rows(key, group, float(eps), times, instance_col, n_boot, rng, confidence)
    return pd.DataFrame(rows, columns=[*by, *SURVIVAL_COLUMNS])


def _group_rows(key: dict, group: pd.DataFrame, eps: float, times: np.ndarray, instance_col: str, n_boot: int,
                rng: np.random.Generator, confidence: float) -> list[dict]:
    n = len(group)
    inst = pd.factorize(group[instance_col], use_na_sentinel=False)[0]
    n_inst = int(np.unique(inst).size)
    horizon = float(group["horizon"].min())
    censored = group["censored"].to_numpy()
    trend = group["trend"].to_numpy()
    common = {**key, "eps": eps, "n_runs": n, "n_instances": n_inst, "horizon": horizon,
              "n_not_reached": int(censored.sum()), "n_converging": int((censored & (trend == "converging")).sum()),
              "n_plateau": int((censored & (trend == "plateau")).sum()),
              "n_stopped": int((censored & (trend == "converged")).sum()),
              "n_diverged": int(group["status"].isin(FAILED_STATUSES).sum())}
    hit = group["time"].to_numpy(float)[:, None] <= times[None, :] * (1 + TIME_SLACK)  # (runs, times)
    count = hit.sum(axis=0)
    frac = count / n
    w_lo, w_hi = wilson_interval(count, np.full(count.shape, n), confidence)
    lo, hi = w_lo, w_hi
    note = ""
    if n_inst >= 2 and n_boot > 0:
        W = hierarchical_weights(inst, inst, n_boot, rng)
        draws = (W @ hit) / W.sum(axis=1)[:, None]
        b_lo, b_hi = cluster_percentile_interval(frac, draws, n_inst, confidence)
        lo, hi = np.minimum(np.clip(b_lo, 0, 1), w_lo), np.maximum(np.clip(b_hi, 0, 1), w_hi)
    else:
        note = ("one data instance: seeds-only (Wilson) interval" if n_inst < 2
                else "no bootstrap asked for: seeds-only (Wilson) interval")
    beyond = times > horizon * (1 + TIME_SLACK)
    rows = []
    for j, t in enumerate(times):
        if beyond[j]:
            rows.append({**common, "t": float(t), "converged": np.nan, "frac": np.nan, "lo": np.nan, "hi": np.nan,
                         "note": f"beyond the cell's shortest run horizon {horizon:.4g}/lambda_*: not extrapolated"})
        else:
            rows.append({**common, "t": float(t), "converged": int(count[j]), "frac": float(frac[j]),
                         "lo": float(lo[j]), "hi": float(hi[j]), "note": note})
    return rows


def plot_survival(ax, table: pd.DataFrame, *, line_by: str = "m", cmap: str = "viridis", band: bool = True,
                  label_fmt: str = "{col}={value:g}") -> list:
    """Draw the fraction converged against flow time, one line per value of ``line_by``.

    Args:
        ax: a matplotlib Axes.
        table: rows of :func:`survival_table` for one cell (filter the other group columns first).
        line_by: the column that separates the lines (default the width ``m``).
        band: shade each line's interval.

    Returns:
        The line artists, in the order of ``line_by``'s values.  Times beyond a line's horizon (NaN)
        are not drawn: the line ends at its horizon.
    """
    require_columns(table, [line_by, "t", "frac", "lo", "hi"], "survival")
    if table.duplicated([line_by, "t"]).any():
        raise ValueError(f"survival table has several rows per ({line_by}, t): filter it to one cell first")
    import matplotlib.pyplot as plt

    values = sorted(table[line_by].unique())
    colors = plt.get_cmap(cmap)(np.linspace(0.0, 0.9, max(len(values), 1)))
    lines = []
    for color, value in zip(colors, values):
        part = table[table[line_by] == value].sort_values("t")
        part = part[part["frac"].notna()]
        (line,) = ax.plot(part["t"], part["frac"], drawstyle="steps-post", color=color,
                          label=label_fmt.format(col=line_by, value=value))
        if band:
            ax.fill_between(part["t"], part["lo"], part["hi"], step="post", color=color, alpha=0.15, linewidth=0)
        lines.append(line)
    ax.set_xlabel(r"flow time $t\,\lambda_*$")
    ax.set_ylabel("fraction converged")
    ax.set_ylim(-0.02, 1.02)
    return lines
