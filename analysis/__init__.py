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
"""

from .defaults import CELL_KEYS, CONFIDENCE, EPS_GRID, N_BOOT, THEORY_EXPONENTS, THRESHOLD_KEYS
from .fits import fit_exponents
from .load import (CURVE_COLUMNS, RUN_COLUMNS, MissingColumnError, Results, load_curves, load_results,
                   load_runs, require_columns)
from .scaling import loglog_slopes, loss_floor, rate_vs_theory, width_medians
from .stats import firth_logistic, logistic_crossing, loglog_slope, ols, wilson_interval
from .success import (Criterion, UnjudgeableToleranceError, check_judgeable, criteria, criterion,
                      interpolation_success, regime_success, register, run_success, settled_both_success,
                      settled_success, success_rates)
from .thresholds import (ABOVE, BELOW, NOT_CENSORED, UNDEFINED, bootstrap_threshold, grid_threshold,
                         logistic_threshold, theory_gap, thresholds)

__all__ = [
    "CELL_KEYS", "CONFIDENCE", "EPS_GRID", "N_BOOT", "THEORY_EXPONENTS", "Criterion", "criteria", "criterion",
    "register", "settled_success", "settled_both_success",
    "THRESHOLD_KEYS", "fit_exponents", "CURVE_COLUMNS", "RUN_COLUMNS", "MissingColumnError", "Results",
    "load_curves", "load_results", "load_runs", "require_columns", "loglog_slopes", "loss_floor",
    "rate_vs_theory", "width_medians", "firth_logistic", "logistic_crossing", "loglog_slope", "ols",
    "wilson_interval", "UnjudgeableToleranceError", "check_judgeable", "interpolation_success",
    "regime_success", "run_success", "success_rates", "ABOVE", "BELOW", "NOT_CENSORED", "UNDEFINED",
    "bootstrap_threshold", "grid_threshold", "logistic_threshold", "theory_gap", "thresholds",
]
