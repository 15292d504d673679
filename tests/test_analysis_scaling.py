import numpy as np
import pandas as pd
import pytest

from analysis.load import MissingColumnError
from analysis.scaling import loglog_slopes, loss_floor, rate_vs_theory, width_medians
from tests.analysis_synth import TOL, complete_runs

WIDTHS = 2 ** np.arange(4, 15)
SEEDS = 6


def _scaling_runs(rng_seed=0):
    """Movement ~ 2 m^-1/2, flip fraction ~ 0.5 m^-1 and loss floor ~ 10 m^-1, with 5%
    log-normal noise, in two bias variants; one diverged run per width with absurd values."""
    rng = np.random.default_rng(rng_seed)
    m = np.tile(np.repeat(WIDTHS, SEEDS), 2)
    bias = np.repeat([False, True], WIDTHS.size * SEEDS)
    noise = lambda: np.exp(rng.normal(scale=0.05, size=m.size))  # noqa: E731
    df = pd.DataFrame({"m": m, "bias": bias, "status": "budget", "max_weight_move": 2 * m**-0.5 * noise(),
                       "flip_fraction": 0.5 / m * noise(), "min_rel_loss": 10.0 / m * noise()})
    diverged = df.groupby(["bias", "m"]).head(1).index
    df.loc[diverged, ["status", "max_weight_move", "flip_fraction", "min_rel_loss"]] = ["diverged", 1e6, 1.0, 1e-30]
    return complete_runs(df)


def test_movement_and_flip_slopes():
    med = width_medians(_scaling_runs(), ["max_weight_move", "flip_fraction"])
    assert set(med["n_runs"]) == {SEEDS - 1}  # diverged runs left out
    slopes = loglog_slopes(med).set_index(["bias", "quantity"])
    for bias in (False, True):
        move = slopes.loc[(bias, "max_weight_move")]
        assert move["expected"] == -0.5 and move["expected_in_interval"]
        assert abs(move["slope"] + 0.5) < TOL["slope_abs"]
        flips = slopes.loc[(bias, "flip_fraction")]
        assert flips["lo"] <= -1 <= flips["hi"] and not flips["lo"] <= -0.5 <= flips["hi"]
        assert np.isnan(flips["expected"]) and flips["n_widths"] == WIDTHS.size


def test_loss_floor_leaves_out_widths_that_stopped_at_eps():
    runs = _scaling_runs()
    # where the floor 10/m is below the training eps = 1e-2 (from m = 2^10 on), runs stop at eps:
    # their min_rel_loss is eps, not the floor
    stopped = (runs["m"] >= 2**10) & (runs["status"] == "budget")
    runs.loc[stopped, ["status", "min_rel_loss"]] = ["converged", 9e-3]
    floor = loss_floor(runs)
    assert list(floor.loc[floor["censored"], "m"].unique()) == [2**10, 2**11, 2**12, 2**13, 2**14]
    slope = loglog_slopes(floor).set_index("bias").loc[False]
    assert slope["n_widths"] == WIDTHS.size - 5
    assert slope["lo"] <= -1 <= slope["hi"]
    # without the censoring the flat tail would bias the slope towards 0
    naive = loglog_slopes(floor.drop(columns="censored")).set_index("bias").loc[False]
    assert not naive["lo"] <= -1 <= naive["hi"]


def test_rate_vs_theory_ratios():
    runs = complete_runs(pd.DataFrame({
        "m": [64, 64, 64, 128], "status": ["budget", "converged", "diverged", "budget"],
        "decay_rate": [0.06, 0.08, 50.0, 0.1], "lambda_star": 0.1, "lambda_min_H0": [0.08, 0.08, 0.08, 0.1],
        "min_lambda_ratio": [0.6, 0.8, 0.0, 0.9], "prop1_bound": [0.001, 0.001, 0.001, 0.2],
        "bound_held": [True, False, False, True], "lambda_held": True}))
    out = rate_vs_theory(runs).set_index("m")
    assert out.loc[64, "n_runs"] == 2
    assert out.loc[64, "rate_ratio"] == pytest.approx(0.7)
    assert out.loc[64, "rate_over_lambda0"] == pytest.approx(0.875)
    assert out.loc[64, "lambda0_ratio"] == pytest.approx(0.8)
    assert out.loc[64, "min_lambda_ratio"] == pytest.approx(0.7)
    assert out.loc[64, "prop1_ratio"] == pytest.approx(0.01)
    assert out.loc[64, "bound_held_frac"] == 0.5
    assert out.loc[128, "prop1_held_frac"] == 0.0  # lambda_star = 0.1 < bound 0.2


def test_missing_column_named():
    with pytest.raises(MissingColumnError, match="flip_fraction"):
        width_medians(_scaling_runs().drop(columns="flip_fraction"), ["flip_fraction"])
