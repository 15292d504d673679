import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from analysis.success import run_success, success_rates
from analysis.thresholds import (ABOVE, BELOW, NOT_CENSORED, grid_threshold, instance_thresholds, logistic_threshold,
                                 theory_gap, thresholds)
from tests.analysis_synth import TOL, complete_runs, planted_cell, planted_runs, success_probability

DELTA_FAIL = 0.1
TARGET = 1 - DELTA_FAIL


def _rates(runs):
    return success_rates(run_success(runs, eps_grid=[1e-2], criteria=["interpolation"]))


def test_grid_threshold_must_stay_above_target():
    m = [8, 16, 32, 64, 128]
    # 16 reaches the target but 32 drops below it again: the threshold is 64
    assert grid_threshold(m, [0.0, 1.0, 0.5, 0.95, 1.0], TARGET) == {"m_star": 64.0, "censored": NOT_CENSORED,
                                                                    "m_bound": pytest.approx(np.nan, nan_ok=True)}
    # exactly at the target counts (9/10 against 1 - 0.1)
    assert grid_threshold(m, [0.0, 0.0, 0.9, 0.9, 1.0], TARGET)["m_star"] == 32.0
    # order of the input does not matter
    assert grid_threshold(m[::-1], [1.0, 0.95, 0.5, 1.0, 0.0], TARGET)["m_star"] == 64.0


@pytest.mark.parametrize("rate,censored,bound", [([0, .2, .5, .8, .85], ABOVE, 128), ([.9, 1, 1, 1, 1], BELOW, 8),
                                                 ([1, 1, 1, 1, .5], ABOVE, 128)])
def test_grid_threshold_censored(rate, censored, bound):
    out = grid_threshold([8, 16, 32, 64, 128], rate, TARGET)
    assert out["censored"] == censored and out["m_bound"] == bound and np.isnan(out["m_star"])


def test_never_and_always_succeeding_cells_are_censored_not_numbers():
    widths = np.repeat(2 ** np.arange(7, 14), 6)
    never = pd.DataFrame({"n": 4, "m": widths, "status": "budget", "min_rel_loss": 0.5})
    always = pd.DataFrame({"n": 5, "m": widths, "status": "converged", "min_rel_loss": 1e-7})
    normal = planted_cell(2**10, seeds=6, slope=3.0, target=TARGET, rng=np.random.default_rng(0), span=3, n=6)
    runs = complete_runs(pd.concat([never, always, normal]))
    th = thresholds(_rates(runs), delta_fail=DELTA_FAIL, n_boot=200).set_index("n")
    assert th.loc[4, "censored"] == ABOVE and th.loc[4, "m_bound"] == 2**13
    assert th.loc[5, "censored"] == BELOW and th.loc[5, "m_bound"] == 2**7
    assert th.loc[6, "censored"] == NOT_CENSORED and th.loc[6, "m_star"] > 0
    assert th.loc[[4, 5], "m_star"].isna().all()
    assert list(th.loc[[4, 5], "logistic_censored"]) == [ABOVE, BELOW]
    assert th.loc[[4, 5], "m_logistic"].isna().all()
    assert th.loc[4, "m_star_hi"] == np.inf and th.loc[4, "boot_above_frac"] == 1.0


def test_logistic_threshold_recovers_planted_crossing():
    m_star = 2**9 * 1.3
    runs = complete_runs(planted_cell(m_star, seeds=200, slope=2.0, target=TARGET,
                                      rng=np.random.default_rng(3), span=4))
    rates = _rates(runs)
    out = logistic_threshold(rates["m"], rates["successes"], rates["trials"], TARGET)
    assert out["logistic_censored"] == NOT_CENSORED
    assert abs(np.log(out["m_logistic"] / m_star)) < TOL["log_m_logistic"]
    assert out["m_logistic_lo"] <= m_star <= out["m_logistic_hi"]
    assert out["logistic_slope"] == pytest.approx(2.0, rel=0.3)


def test_logistic_crossing_outside_tested_widths_is_censored():
    out = logistic_threshold([8, 16, 32], [1, 2, 3], [10, 10, 10], TARGET)
    assert out["logistic_censored"] == ABOVE and np.isnan(out["m_logistic"])


def test_bootstrap_interval_covers_the_true_grid_threshold():
    # P(m) crosses the target at m* = 1.3 * 2^7, so the population grid threshold is 2^8
    m_star = 2**7 * 1.3
    runs = complete_runs(planted_cell(m_star, seeds=50, slope=3.0, target=TARGET,
                                      rng=np.random.default_rng(4), span=4))
    th = thresholds(_rates(runs), delta_fail=DELTA_FAIL, n_boot=2000, seed=1).iloc[0]
    assert th["m_star_lo"] <= 2**8 <= th["m_star_hi"]
    assert th["m_star_hi"] <= 2**9  # and the interval is informative


def test_bootstrap_coverage_over_many_cells():
    runs = planted_runs(p=6, q=3, C=0.05, ns=(3, 5, 8, 13, 20), ks=(1, 2, 3, 4), seeds=8, slope=3.0,
                        delta_fail=DELTA_FAIL, rng_seed=0)
    th = thresholds(_rates(runs), delta_fail=DELTA_FAIL, n_boot=1000, seed=0)
    truth = 2.0 ** np.ceil(np.log2(0.05 * th["n"] ** 6 * th["k"] ** 3))
    covered = (th["m_star_lo"] <= truth) & (truth <= th["m_star_hi"])
    assert covered.mean() >= 0.8  # nominal 0.95 on a discrete statistic from 8 seeds per width
    assert (th["censored"] == NOT_CENSORED).all()


def test_theory_gap_in_orders_of_magnitude():
    th = pd.DataFrame({"n": [4, 8, 16], "k": 2, "delta": 0.5, "bias": False, "m_star": [100.0, np.nan, np.nan],
                       "censored": [NOT_CENSORED, ABOVE, BELOW], "m_bound": [np.nan, 1e4, 10.0]})
    runs = complete_runs(pd.DataFrame({"n": [4, 4, 4, 8, 16], "k": 2, "m_thm": [1e6, 1e5, 1e7, 1e8, 1e9]}))
    out = theory_gap(th, runs)
    np.testing.assert_allclose(out["m_thm"], [1e6, 1e8, 1e9])  # median over the cell's runs
    np.testing.assert_allclose(out["log10_gap"], [-4, np.nan, np.nan])
    np.testing.assert_allclose(out["log10_gap_bound"], [np.nan, -4, -8])


def _instances_cell(m_star, *, instances, tau, seeds, slope, rng, span=4, **columns):
    """One cell whose data instances shift the threshold by a factor exp(u), u ~ N(0, tau)."""
    parts = [planted_cell(m_star * np.exp(rng.normal(0, tau)), seeds=seeds, slope=slope, target=TARGET, rng=rng,
                          span=span, data_seed=i, **columns) for i in range(instances)]
    widths = sorted(set.intersection(*(set(p["m"]) for p in parts)))
    return pd.concat([p[p["m"].isin(widths)] for p in parts], ignore_index=True)


def _mixture_crossing(m_star, tau, slope):
    """Width where the success probability averaged over instances crosses the target (Gauss-Hermite
    quadrature over u, then a root in log m): the threshold the pooled fit estimates."""
    u, w = np.polynomial.hermite_e.hermegauss(40)
    w = w / w.sum()
    rate = lambda x: np.sum(w * success_probability(np.exp(x), m_star * np.exp(tau * u), slope, TARGET)) - TARGET
    return np.exp(optimize.brentq(rate, np.log(m_star) - 10, np.log(m_star) + 10))


def test_instance_bootstrap_covers_planted_threshold():
    rng = np.random.default_rng(0)
    m_star, tau, slope = 2**8 * 1.3, 0.3, 3.0
    truth = _mixture_crossing(m_star, tau, slope)
    cells = [_instances_cell(m_star, instances=8, tau=tau, seeds=16, slope=slope, rng=rng, n=j) for j in range(30)]
    runs = complete_runs(pd.concat(cells, ignore_index=True))
    success = run_success(runs, eps_grid=[1e-2], criteria=["interpolation"])
    th = instance_thresholds(success, runs, delta_fail=DELTA_FAIL, n_boot=400, seed=1)
    assert len(th) == 30 and (th["n_instances"] == 8).all() and (th["interval_note"] == "").all()
    assert (th["trials_near"] >= 16 * 8).all()
    covered = (th["m_lo"] <= truth) & (truth <= th["m_hi"])
    assert covered.mean() >= 0.85, covered.mean()
    wrong = ((th["m_lo"] <= 2 * truth) & (2 * truth <= th["m_hi"])) | ((th["m_lo"] <= truth / 2) & (truth / 2 <= th["m_hi"]))
    assert wrong.mean() <= 0.1, wrong.mean()
    # seeds alone (the per-width delta-method interval) understate the scatter between instances
    seeds_only = (th["m_hi"] / th["m_lo"]).median()
    rates = _rates(runs)
    delta = thresholds(rates, delta_fail=DELTA_FAIL, n_boot=0)
    assert (delta["m_logistic_hi"] / delta["m_logistic_lo"]).median() < seeds_only


def test_no_interval_for_one_instance_or_identical_replicates():
    widths = np.repeat(2 ** np.arange(6, 12), 16)
    sharp = pd.DataFrame({"n": 4, "m": widths, "data_seed": np.tile([0, 1], widths.size // 2),
                          "status": np.where(widths >= 2**9, "converged", "budget"),
                          "min_rel_loss": np.where(widths >= 2**9, 1e-7, 0.5)})
    one = planted_cell(2**8, seeds=16, slope=3.0, target=TARGET, rng=np.random.default_rng(2), span=3, n=5)
    runs = complete_runs(pd.concat([sharp, one], ignore_index=True))
    th = instance_thresholds(run_success(runs, eps_grid=[1e-2], criteria=["interpolation"]), runs,
                             delta_fail=DELTA_FAIL, n_boot=100).set_index("n")
    assert th.loc[4, "logistic_censored"] == NOT_CENSORED and 2**8 < th.loc[4, "m_logistic"] < 2**9
    assert th.loc[4, "interval_note"].endswith("same value") and np.isnan(th.loc[4, "m_lo"])
    assert "one data instance" in th.loc[5, "interval_note"] and np.isnan(th.loc[5, "m_hi"])
    never = complete_runs(pd.DataFrame({"n": 6, "m": widths, "data_seed": np.tile([0, 1], widths.size // 2),
                                        "status": "budget", "min_rel_loss": 0.5}))
    out = instance_thresholds(run_success(never, eps_grid=[1e-2], criteria=["interpolation"]), never,
                              delta_fail=DELTA_FAIL, n_boot=50).iloc[0]
    assert out["logistic_censored"] == ABOVE and "censored (above)" in out["interval_note"]
    assert out["boot_above_frac"] == 1.0 and np.isnan(out["m_lo"])
    with pytest.raises(ValueError, match="data_seed"):
        instance_thresholds(run_success(runs, eps_grid=[1e-2], criteria=["interpolation"]), delta_fail=0.1)
