"""Analysis of a results directory of the scaling study (pure pandas/numpy/scipy).

Typical use::

    from analysis import *
    runs, curves = load_results(out)
    success = run_success(runs, curves, eps_grid=EPS_GRID)
    rates = success_rates(success)
    th = theory_gap(thresholds(rates, delta_fail=0.1), runs)
    exps = fit_exponents(th)                       # or an external thresholds table
    floor = loglog_slopes(loss_floor(runs))
    moves = loglog_slopes(width_medians(runs, ["max_weight_move", "flip_fraction"]))
    flow = rate_vs_theory(runs)
    law = fit_floor_law(runs)                      # censored floor law, instance bootstrap
    m_floor = m_star_from_floor_law(law, 1e-3, cells, rate=0.9)
    th_inst = instance_thresholds(success, runs, delta_fail=0.1)
    table = sensitivity_table(runs, curves); summary = sensitivity_summary(table)
    frozen = control_comparison(runs, factor="mode", reference="relu", other="frozen")
    thm = theorem_exponents(runs)
"""

from .comparisons import control_comparison, theorem_exponents, threshold_ratio
from .defaults import CELL_KEYS, CONFIDENCE, EPS_GRID, N_BOOT, THEORY_EXPONENTS, THRESHOLD_KEYS
from .fits import fit_exponents
from .floorlaw import beside_thresholds, fit_floor_law, floor_group_columns, m_star_from_floor_law
from .load import (CURVE_COLUMNS, RUN_COLUMNS, MissingColumnError, Results, load_curves, load_results,
                   load_runs, require_columns)
from .sensitivity import floor_exponents, sensitivity_summary, sensitivity_table
from .scaling import loglog_slopes, loss_floor, rate_vs_theory, width_medians
from .stats import cluster_percentile_interval, firth_logistic, logistic_crossing, loglog_slope, ols, wilson_interval
from .success import (Criterion, UnjudgeableToleranceError, check_judgeable, criteria, criterion,
                      interpolation_success, regime_success, register, run_success, settled_both_success,
                      settled_success, success_rates)
from .thresholds import (ABOVE, BELOW, NOT_CENSORED, UNDEFINED, bootstrap_threshold, grid_threshold,
                         instance_thresholds, logistic_threshold, theory_gap, thresholds)

__all__ = [
    "CELL_KEYS", "CONFIDENCE", "EPS_GRID", "N_BOOT", "THEORY_EXPONENTS", "Criterion", "criteria", "criterion",
    "register", "settled_success", "settled_both_success",
    "THRESHOLD_KEYS", "fit_exponents", "CURVE_COLUMNS", "RUN_COLUMNS", "MissingColumnError", "Results",
    "load_curves", "load_results", "load_runs", "require_columns", "loglog_slopes", "loss_floor",
    "rate_vs_theory", "width_medians", "firth_logistic", "logistic_crossing", "loglog_slope", "ols",
    "wilson_interval", "UnjudgeableToleranceError", "check_judgeable", "interpolation_success",
    "regime_success", "run_success", "success_rates", "ABOVE", "BELOW", "NOT_CENSORED", "UNDEFINED",
    "bootstrap_threshold", "grid_threshold", "logistic_threshold", "theory_gap", "thresholds",
    "control_comparison", "theorem_exponents", "fit_floor_law", "floor_group_columns", "m_star_from_floor_law",
    "floor_exponents", "sensitivity_summary", "sensitivity_table", "cluster_percentile_interval",
    "instance_thresholds", "beside_thresholds", "threshold_ratio",
]
