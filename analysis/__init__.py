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
    # the three widths of the theorem (issue 20): times to eps', horizons, laws, predictions
    surv = survival_table(runs, 1e-8, times=[12, 24, 48, 96])
    widths = widths_table(runs, curves, horizon=48)           # m_conv, m_rate, m_lazy (+ drift law)
    write_laws(laws_table(runs, curves, horizon=48), out)     # results/<study>/laws.csv
    choice = study_horizon(horizon_table(runs, curves, horizons=(24, 48, 96)))
    predict_width(32, 2, 0.5, d=16, quantity="conv")
    mech = fit_mechanism(runs)
"""

from .columns import MissingColumnError, require_columns
from .comparisons import control_comparison, theorem_exponents, threshold_ratio
from .defaults import CELL_KEYS, CONFIDENCE, EPS_GRID, EXPERIMENT_SETTINGS, N_BOOT, THEORY_EXPONENTS, THRESHOLD_KEYS
from .fits import fit_exponents
from .floorlaw import beside_thresholds, fit_floor_law, floor_group_columns, m_star_from_floor_law
from .judging import UnjudgeableToleranceError, check_judgeable
from .known import KNOWN_LAWS, known_laws
from .load import (CURVE_COLUMNS, DEFAULT_COLUMNS, RUN_COLUMNS, Results, curve_columns, load_curves, load_results,
                   load_runs, run_columns)
from .mechanism import Mechanism, fit_mechanism, plot_mechanism
from .predict import StudiedDomain, WidthPrediction, predict_width
from .scaling import loglog_slopes, loss_floor, rate_vs_theory, width_medians
from .sensitivity import floor_exponents, sensitivity_summary, sensitivity_table
from .stats import cluster_percentile_interval, firth_logistic, logistic_crossing, loglog_slope, ols, wilson_interval
from .success import (Criterion, criteria, criterion, declared_columns, interpolation_success, regime_success, register,
                      run_success, settled_both_success, settled_success, success_rates, timed_criteria)
from .survival import convergence_times, plot_survival, survival_table
from .thresholds import (ABOVE, BELOW, NOT_CENSORED, UNDEFINED, bootstrap_threshold, grid_threshold,
                         instance_thresholds, logistic_threshold, theory_gap, thresholds)
from .timed import (T_TO_EPS, budget_horizon, conv_success, drift_until, late_rate_at, lazy_success, observed_through,
                    parse_horizon, rate_soft_success, rate_success, reached_by, stop_time, t_to_column, time_to,
                    timed_name)
from .widths import (LAWS_COLUMNS, QUANTITIES, HorizonChoice, drift_law, drift_ratios, horizon_table, laws_table,
                     lazy_from_drift, mark_moves, read_laws, study_horizon, width_thresholds, widths_table, write_laws)

__all__ = [
    "CELL_KEYS", "CONFIDENCE", "EPS_GRID", "N_BOOT", "THEORY_EXPONENTS", "Criterion", "criteria", "criterion",
    "register", "settled_success", "settled_both_success",
    "THRESHOLD_KEYS", "fit_exponents", "CURVE_COLUMNS", "DEFAULT_COLUMNS", "RUN_COLUMNS", "curve_columns",
    "run_columns", "declared_columns", "EXPERIMENT_SETTINGS", "MissingColumnError", "Results",
    "load_curves", "load_results", "load_runs", "require_columns", "loglog_slopes", "loss_floor",
    "rate_vs_theory", "width_medians", "firth_logistic", "logistic_crossing", "loglog_slope", "ols",
    "wilson_interval", "UnjudgeableToleranceError", "check_judgeable", "interpolation_success",
    "regime_success", "run_success", "success_rates", "ABOVE", "BELOW", "NOT_CENSORED", "UNDEFINED",
    "bootstrap_threshold", "grid_threshold", "logistic_threshold", "theory_gap", "thresholds",
    "control_comparison", "theorem_exponents", "fit_floor_law", "floor_group_columns", "m_star_from_floor_law",
    "floor_exponents", "sensitivity_summary", "sensitivity_table", "cluster_percentile_interval",
    "instance_thresholds", "beside_thresholds", "threshold_ratio",
    # issue 20: the three widths
    "KNOWN_LAWS", "known_laws", "Mechanism", "fit_mechanism", "plot_mechanism", "StudiedDomain", "WidthPrediction",
    "predict_width", "timed_criteria", "convergence_times", "plot_survival", "survival_table", "T_TO_EPS",
    "budget_horizon", "conv_success", "drift_until", "late_rate_at", "lazy_success", "observed_through",
    "parse_horizon", "rate_soft_success", "rate_success", "reached_by", "stop_time", "t_to_column", "time_to",
    "timed_name", "LAWS_COLUMNS", "QUANTITIES", "HorizonChoice", "drift_law", "drift_ratios", "horizon_table",
    "laws_table", "lazy_from_drift", "mark_moves", "read_laws", "study_horizon", "width_thresholds",
    "widths_table", "write_laws",
]
