"""What the controls say, and the theorem compared by scaling.

- :func:`control_comparison`: the loss floor of one arm over another's, per cell and width, with an
  interval from the bootstrap over data instances then seeds: ReLU vs the frozen-pattern control (how
  much of the floor is the flip floor), ``k = 0`` vs ``k >= 1`` at the same ``n`` (what Sobolev
  training costs), one step factor vs another (is it the flow or the discretisation?).
- :func:`threshold_ratio`: the same comparisons on the width thresholds themselves.
- :func:`theorem_exponents`: the exponents of ``m_thm`` over the studied cells.  The theorem's
  constant is unknown (the pipeline takes ``C = 1``), so only its scaling compares with the
  measured exponents; "orders of magnitude below ``m_thm``" inherits that constant.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .columns import require_columns
from .defaults import CONFIDENCE, FAILED_STATUSES, STOPPED_AT_EPS, THRESHOLD_KEYS
from .fits import fit_exponents
from .floorlaw import FLOOR_N_BOOT, hierarchical_weights
from .stats import cluster_percentile_interval
from .thresholds import instance_counts, instance_threshold_draws, logistic_log_m, with_instances

CONTROL_CELL = ("n", "k", "delta", "bias", "m")
THEOREM_CAVEAT = "m_thm with C = 1: the theorem's constant is unknown, compare exponents only"


def _arm_stats(log_loss: np.ndarray, arm: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Weighted mean log loss of the ``other`` arm minus the ``reference`` arm, per row of ``W``."""
    means = []
    for a in (True, False):
        w = W[:, arm == a]
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append((w * log_loss[arm == a]).sum(axis=1) / w.sum(axis=1))
    return means[0] - means[1]


def control_comparison(runs: pd.DataFrame, *, factor: str, reference, other, loss_col: str = "final_rel_loss",
                       cell: Sequence[str] = CONTROL_CELL, n_boot: int = FLOOR_N_BOOT, seed: int = 0,
                       confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Ratio of geometric-mean ``loss_col`` between ``factor == other`` and ``factor == reference``,
    per cell (``cell`` without ``factor``), with an instance-then-seed bootstrap interval.

    Examples: ``factor="mode", reference="relu", other="frozen"``; ``factor="k", reference=0,
    other=2`` (cells ``n, delta, bias, m``); ``factor="step_factor", reference=0.5, other=0.125``.
    Instances are ``data_seed`` values, drawn together for both arms (the arms of a control share
    their data; for ``k`` they do not, and the pairing is only a resampling scheme).  A run stopped at
    its training ``eps`` enters at ``eps``: with such runs the ratio is a bound, counted in
    ``n_censored_*`` and said in ``note``.  Diverged/failed runs are left out.

    Returns the cell columns, ``factor, reference, other, ratio, lo, hi, n_reference, n_other,
    n_instances, n_censored_reference, n_censored_other, note``.
    """
    keys = [c for c in cell if c != factor]
    require_columns(runs, [factor, loss_col, "status", "data_seed", *keys], "runs")
    runs = runs[~runs["status"].isin(FAILED_STATUSES) & runs[factor].isin([reference, other])]
    for level in (reference, other):
        if not (runs[factor] == level).any():
            raise ValueError(f"{factor}={level!r} has no usable runs; present: {sorted(runs[factor].unique())}")
    rng = np.random.default_rng(seed)
    rows = []
    for key, group in runs.groupby(keys, sort=True, dropna=False):
        arm = (group[factor] == other).to_numpy()
        stopped = (group["status"] == STOPPED_AT_EPS).to_numpy()
        row = {**dict(zip(keys, key)), "factor": factor, "reference": reference, "other": other,
               "n_reference": int((~arm).sum()), "n_other": int(arm.sum()),
               "n_censored_reference": int((stopped & ~arm).sum()), "n_censored_other": int((stopped & arm).sum()),
               "ratio": np.nan, "lo": np.nan, "hi": np.nan, "note": ""}
        inst = group["data_seed"].to_numpy()
        row["n_instances"] = int(np.unique(inst).size)
        if row["n_reference"] == 0 or row["n_other"] == 0:
            rows.append({**row, "note": "one arm has no runs in this cell"})
            continue
        log_loss = np.log(group[loss_col].to_numpy(float))
        W = np.vstack([np.ones(len(group)), hierarchical_weights(inst, inst * 2 + arm, n_boot, rng)])
        diff = _arm_stats(log_loss, arm, W)
        row["ratio"] = float(np.exp(diff[0]))
        draws = diff[1:][np.isfinite(diff[1:])]
        notes = ["censored runs enter at eps: the ratio is a bound"] if stopped.any() else []
        if row["n_instances"] >= 2 and draws.size >= 2 and np.ptp(draws) > 0:
            lo, hi = cluster_percentile_interval(diff[0], draws, row["n_instances"], confidence)
            row["lo"], row["hi"] = float(np.exp(lo)), float(np.exp(hi))
        else:
            notes.append("no interval: fewer than 2 instances or identical replicates")
        rows.append({**row, "note": "; ".join(notes)})
    return pd.DataFrame(rows)


def threshold_ratio(success: pd.DataFrame, runs: pd.DataFrame | None = None, *, factor: str, reference, other,
                    delta_fail: float, instance_col: str = "data_seed", n_boot: int = 400, seed: int = 0,
                    confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Ratio of logistic thresholds ``m*(other) / m*(reference)`` per cell (every key column of
    ``success`` but ``factor``), with an interval from bootstrapping each arm over its data instances
    then seeds (:func:`analysis.thresholds.instance_thresholds`), widened for the smaller arm's
    number of instances.

    success: a :func:`analysis.success.run_success` table holding ``factor`` (a cell key such as
    ``k``, or a stratum: ``run_success(..., strata=("mode",))``).  E.g. ``factor="k", reference=0,
    other=2``: the width Sobolev training costs at the same ``n``.  A replicate whose threshold is
    censored above counts as infinite; a ratio is NaN where an arm's own estimate is censored (said in
    ``note``); cells where one arm has no runs are left out.  Returns the cell columns, ``factor, reference, other, m_reference, m_other, ratio, lo,
    hi, n_instances_reference, n_instances_other, note``.
    """
    success = with_instances(success, runs, instance_col)
    require_columns(success, [factor], "success")
    keys = [c for c in success.columns if c not in ("m", "run_id", "seed", "success", instance_col, factor)]
    target = 1 - delta_fail
    rng = np.random.default_rng(seed)
    rows = []
    for key, cell in success[success[factor].isin([reference, other])].groupby(keys, sort=True, dropna=False):
        if not ((cell[factor] == reference).any() and (cell[factor] == other).any()):
            continue  # a cell where only one arm was trained (e.g. the control ran on a subset): nothing to compare
        row = {**dict(zip(keys, key)), "factor": factor, "reference": reference, "other": other}
        point, draws, n_inst = {}, {}, {}
        for name, level in (("reference", reference), ("other", other)):
            counts = instance_counts(cell[cell[factor] == level], instance_col)
            pooled = counts.groupby("m")[["successes", "trials"]].sum()
            point[name] = logistic_log_m(pooled.index.to_numpy(float), *(pooled[c].to_numpy() for c in pooled), target)
            draws[name] = instance_threshold_draws(counts, target, rng, n_boot)
            n_inst[name] = counts["_instance"].nunique()
        row.update(m_reference=np.exp(point["reference"]), m_other=np.exp(point["other"]), ratio=np.nan, lo=np.nan,
                   hi=np.nan, n_instances_reference=n_inst["reference"], n_instances_other=n_inst["other"], note="")
        diff = draws["other"] - draws["reference"]
        diff = diff[~np.isnan(diff)]
        finite = diff[np.isfinite(diff)]
        if not all(np.isfinite(v) and n_inst[k] > 0 for k, v in point.items()):
            row["note"] = "an arm's threshold is censored or undefined: no ratio"
        elif min(n_inst.values()) < 2 or diff.size < 2 or finite.size == 0 or np.ptp(finite) == 0:
            row["ratio"] = float(np.exp(point["other"] - point["reference"]))
            row["note"] = "no interval: fewer than 2 instances per arm or identical replicates"
        else:
            centre = point["other"] - point["reference"]
            lo, hi = cluster_percentile_interval(centre, diff, min(n_inst.values()), confidence)
            row.update(ratio=float(np.exp(centre)), lo=float(np.exp(lo)), hi=float(np.exp(hi)))
        rows.append(row)
    return pd.DataFrame(rows)


def theorem_exponents(runs: pd.DataFrame, *, terms: Sequence[str] = ("p", "q", "r"), by: Sequence[str] = ("bias",),
                      confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Exponents of the theorem's width over the studied cells: ``log m_thm`` (median over a cell's
    runs: it depends on the data through ``lambda_star`` and ``gamma``) regressed on ``log n, log k,
    log delta``, to set beside the measured ``p, q, r``.  A :func:`analysis.fits.fit_exponents`
    table (``theory`` there is the theorem's nominal exponent, e.g. 6 for ``p``), with ``caveat``."""
    require_columns(runs, [*THRESHOLD_KEYS, "m_thm", *by], "runs")
    if (runs["k"] < 1).any():
        raise ValueError("runs include k = 0, where the theorem says nothing: pass runs[runs['k'] >= 1]")
    cells = runs.groupby([*THRESHOLD_KEYS, *[b for b in by if b not in THRESHOLD_KEYS]], dropna=False)["m_thm"]
    cells = cells.median().reset_index()
    return fit_exponents(cells, m_col="m_thm", terms=terms, by=list(by), confidence=confidence).assign(
        caveat=THEOREM_CAVEAT)
