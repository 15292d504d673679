"""The result record of a training call: its fields (the pipeline's Parquet schema derives from
them) and :class:`TrainResult`. Importable without torch."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

import numpy as np

from .late import TOLERANCES, t_to_field
from .settings import TrainConfig

if typing.TYPE_CHECKING:
    from .network import Params

# One place for the output columns and their Python types (the pipeline's Parquet schema).
# Counts of pattern flips: "gross" sums the bits that changed between consecutive steps
# (every step); "net" counts the bits that differ between the patterns of consecutive
# checks (every check_every steps; back-and-forth flips within a check cancel; the patterns
# compared are those the last step before each check started from, as first recorded).
SUMMARY_FIELDS: dict[str, type] = {
    "status": str, "stopped_by": str, "steps": int, "t": float, "steps_to_eps": int, "t_to_eps": float,
    "final_rel_loss": float, "min_rel_loss": float, "value_rel_final": float, "deriv_rel_final": float,
    "loss0": float, "r0_sq": float, "decay_rate": float, "rate_ratio": float, "lambda_min_H0": float,
    "lambda_max_H0": float, "min_lambda_ratio": float, "max_weight_move": float, "flip_fraction": float,
    "max_H_drift": float, "bound_held": bool, "lambda_held": bool, "regime_held": bool,
    "bound_violation_step": int, "bound_violation_t": float, "flips_gross_total": int, "flips_net_total": int,
    "jump_norm_total": float, "lin_dist_final": float,
    # the late-time record (sobolev.late): the first flow time at each tolerance, the decay rate over
    # the last doubling of flow time and the trend it gives, the spectral drift, the flips' injection
    **{t_to_field(eps): float for eps in TOLERANCES},
    "late_rate": float, "trend": str, "lambda_min_late": float, "max_H_drift_2": float,
    "jump_energy_total": float, "jump_share": float, "jump_rate_late": float, "flow_rate_late": float,
}
CURVE_FIELDS: dict[str, type] = {
    "replica": int, "step": int, "t": float, "eta": float, "loss": float, "rel_loss": float,
    "rel_loss_interval_max": float, "rel_loss_interval_min": float, "e_sq": float, "S_sq": float,
    "value_rel": float, "deriv_rel": float, "value_rel_interval_max": float, "deriv_rel_interval_max": float,
    "lambda_min": float, "lambda_max": float, "H_drift": float,
    "max_weight_move": float, "flip_fraction": float, "bound": float, "bound_held": bool, "lin_dist": float,
    "flips_gross": int, "flips_net": int, "flips_distinct": int, "jump_norm": float, "H_drift_2": float,
    "jump_energy": float,
}
NUMPY_TYPE = {int: np.int64, float: np.float64, bool: np.bool_, str: str}


@dataclass(frozen=True, eq=False)
class TrainResult:
    """``summary``: one array (R,) per ``SUMMARY_FIELDS`` entry. ``curves``: long format, one
    row per (replica, checkpoint), ``CURVE_FIELDS``; column ``replica`` indexes the batch.
    ``params``: final weights, in the config's dtype."""

    summary: dict[str, np.ndarray]
    curves: dict[str, np.ndarray]
    params: Params
    lambda_star: float
    config: TrainConfig = field(repr=False)
