"""Names and default knobs shared by the analysis modules, in one place.

Nothing here is a result: these are the cell keys the study is organised by (named as in
the paper), the statuses that count as failures, and default settings the notebooks may
override per call.
"""

from __future__ import annotations

from records.schema import CELL_COLUMNS, TRAINING_COLUMNS

# A threshold is a function of these (MATH.md: ``m*(n, k, delta_1, bias)``; ``delta`` is the
# requested separation, the sweep's control variable).
THRESHOLD_KEYS = ("n", "k", "delta", "bias")
# A success rate is estimated per width within a threshold cell.
CELL_KEYS = (*THRESHOLD_KEYS, "m")

# A diverged or failed run never counts as a success, whatever its losses say.
FAILED_STATUSES = ("diverged",)
# Runs with this status stopped when the relative loss reached their training ``eps``, so
# nothing is known about the lower tolerances they might have reached.
STOPPED_AT_EPS = "converged"

# Tolerances eps' at which thresholds are recomputed after the fact.
EPS_GRID = (1e-2, 1e-3, 1e-4, 1e-6)

# The columns whose values a cell's runs are drawn over: data instances and initialisations.
REPLICATE_COLUMNS = ("data_seed", "seed")
# Training settings that runs of one cell may differ in: ``check_every`` (the measurements do not depend
# on it) and ``eps`` (judged by ``check_judgeable``; in the success and threshold tables ``eps`` is eps').
POOLED_SETTINGS = ("check_every", "eps")
# Every other training setting makes another experiment (``TrainConfig``'s fields, so a new one counts).
EXPERIMENT_SETTINGS = tuple(c for c in TRAINING_COLUMNS if c not in POOLED_SETTINGS)

# Runs that share a cell must have been trained the same way; pooling a frozen-pattern control with
# ReLU runs (or two targets, dimensions, dtypes, step sizes, horizons) would silently mix different
# experiments: every cell column that is not a key or a replicate, and every experiment setting.
HOMOGENEOUS_COLUMNS = (*(c for c in CELL_COLUMNS if c not in (*CELL_KEYS, *REPLICATE_COLUMNS)), *EXPERIMENT_SETTINGS)

# Censoring of a threshold (analysis.thresholds, and the width search's answer).
NOT_CENSORED = "none"
ABOVE = "above"
BELOW = "below"
UNDEFINED = "undefined"

CONFIDENCE = 0.95
N_BOOT = 2000

# Theorems 1/2: ``m = Omega(n^6 k^3 ...)``.  Theorem 2's exponent of k is illegible in our
# copy of the paper (MATH.md), so the bias variant's ``q`` is an assumption.
THEORY_EXPONENTS = {False: {"p": 6.0, "q": 3.0}, True: {"p": 6.0, "q": 3.0}}
# Regressor behind each exponent of ``log m* = c + p log n + q log k + r log delta``.
EXPONENT_TERMS = {"p": "n", "q": "k", "r": "delta"}

# Lemma 4: weights move by at most ``R ~ 1/sqrt(m)``.
EXPECTED_WIDTH_SLOPES = {"max_weight_move": -0.5}
