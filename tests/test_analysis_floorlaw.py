import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from analysis.floorlaw import beside_thresholds, fit_floor_law, hierarchical_weights, m_star_from_floor_law, tobit_batch
from tests.analysis_synth import planted_floor_runs

LAW = {"c": -3.0, "n": 2.0, "k": 1.0, "m": -1.5}
DESIGN = dict(ns=(4, 8, 16, 32), ks=(1, 2, 4), widths=2 ** np.arange(6, 13), instances=2, seeds=2, tau=0.5,
              sigma=0.3, train_eps=1e-4)


def _planted(rng_seed, **overrides):
    return planted_floor_runs(law=LAW, rng_seed=rng_seed, **{**DESIGN, **overrides})


def _direct_tobit(X, t, censored):
    """Maximum likelihood by a general-purpose optimiser on (beta, log sigma): the route the Newton
    solver in Olsen's parametrisation is checked against."""
    def nll(p):
        mu, sigma = X @ p[:-1], np.exp(p[-1])
        return -(stats.norm.logcdf((t[censored] - mu[censored]) / sigma).sum()
                 + (stats.norm.logpdf((t[~censored] - mu[~censored]) / sigma) - np.log(sigma)).sum())
    start = np.append(np.linalg.lstsq(X, t, rcond=None)[0], 0.0)
    res = optimize.minimize(nll, start, method="BFGS", options={"gtol": 1e-9})
    return res.x[:-1], np.exp(res.x[-1])


def test_tobit_solver_matches_direct_maximisation_and_weights_are_duplicates():
    rng = np.random.default_rng(1)
    X = np.column_stack([np.ones(60), rng.normal(size=60), rng.normal(size=60)])
    y = X @ [0.5, 1.0, -2.0] + rng.normal(0, 0.7, 60)
    censored = y < -0.5
    t = np.where(censored, -0.5, y)
    beta, sigma = _direct_tobit(X, t, censored)
    counts = rng.integers(0, 3, 60)
    W = np.vstack([np.ones(60), counts])
    b, s, ok = tobit_batch(X, t, censored, W)
    assert ok.all() and 10 < censored.sum() < 50
    np.testing.assert_allclose(b[0], beta, atol=1e-5)
    assert s[0] == pytest.approx(sigma, abs=1e-5)
    # an integer weight is the same as that many copies of the run
    rows = np.repeat(np.arange(60), counts)
    beta_dup, sigma_dup = _direct_tobit(X[rows], t[rows], censored[rows])
    np.testing.assert_allclose(b[1], beta_dup, atol=1e-5)
    assert s[1] == pytest.approx(sigma_dup, abs=1e-5)


def test_hierarchical_weights_resample_instances_then_seeds():
    instance = np.array([0, 0, 0, 0, 1, 1, 2])
    stratum = np.array([0, 0, 1, 1, 2, 2, 3])  # instance 0 at two widths, 2 seeds each
    W = hierarchical_weights(instance, stratum, 4000, np.random.default_rng(0))
    np.testing.assert_allclose(W.mean(axis=0), 1.0, atol=0.06)
    # a stratum's weights add up to (copies of its instance) x (its runs), the same copies for
    # both widths of instance 0: instances are drawn as units
    np.testing.assert_array_equal(W[:, :2].sum(axis=1), W[:, 2:4].sum(axis=1))
    assert set(np.unique(W[:, :2].sum(axis=1) % 2)) == {0}
    assert np.all(W.sum(axis=1) > 0)
    # seeds within a drawn instance are resampled too: not always equal weights
    assert (W[:, 0] != W[:, 1]).mean() > 0.3


def test_planted_law_covered_at_stated_coverage_and_wrong_values_excluded():
    """40 datasets with instance random effects and 20% of runs censored at the training eps."""
    wrong = {"n": 0.75, "k": 1.0, "m": 0.25}
    covered = {t: 0 for t in wrong}
    wrong_covered = {t: 0 for t in wrong}
    censored = []
    for r in range(40):
        fit = fit_floor_law(_planted(r), n_boot=150, seed=r).set_index("term")
        censored.append(fit.loc["m", "n_censored"] / fit.loc["m", "n_runs"])
        for t, off in wrong.items():
            lo, hi = fit.loc[t, "lo"], fit.loc[t, "hi"]
            covered[t] += lo <= LAW[t] <= hi
            wrong_covered[t] += (lo <= LAW[t] + off <= hi) or (lo <= LAW[t] - off <= hi)
    assert 0.1 < np.mean(censored) < 0.3
    assert fit.loc["m", "n_instances"] == 24 and fit.loc["m", "n_runs"] == 336
    for t in wrong:
        assert covered[t] >= 0.85 * 40, (t, covered)  # nominal 95%, 24 clusters
        assert wrong_covered[t] <= 0.1 * 40, (t, wrong_covered)


def test_censored_runs_are_not_taken_as_floors():
    runs = _planted(7, train_eps=1e-3)  # about half the runs stop at eps
    fit = fit_floor_law(runs, n_boot=200).set_index("term")
    naive = fit_floor_law(runs, n_boot=200, censor_col=None).set_index("term")
    assert 0.3 < fit.loc["m", "n_censored"] / fit.loc["m", "n_runs"] < 0.7
    assert fit.loc["m", "lo"] <= LAW["m"] <= fit.loc["m", "hi"]
    # reading eps as the floor flattens the law in m
    assert naive.loc["m", "hi"] < LAW["m"] + 0.0 or naive.loc["m", "lo"] > LAW["m"]
    assert naive.loc["m", "n_censored"] == 0


def test_k_zero_runs_form_their_own_group_without_a_k_term():
    runs = pd.concat([_planted(3), _planted(4, ks=(0,))], ignore_index=True)
    fit = fit_floor_law(runs, n_boot=100)
    plain = fit[fit["k_group"] == "k=0"].set_index("term")
    assert "k" not in plain.index and "dropped ['k', 'delta']" in plain["note"].iloc[0]
    assert plain.loc["n", "lo"] <= LAW["n"] <= plain.loc["n", "hi"]
    assert set(fit[fit["k_group"] == "k>=1"]["term"]) == {"c", "n", "k", "m", "sigma"}
    with pytest.raises(ValueError, match="k_group"):
        fit_floor_law(runs, by=("bias",), n_boot=10)


def test_too_few_observed_runs_give_a_note_not_a_number():
    runs = _planted(5, ns=(4,), ks=(1,), widths=(2**12,), instances=1, seeds=3, train_eps=0.5)
    fit = fit_floor_law(runs, n_boot=10)
    assert fit["estimate"].isna().all() and fit["note"].str.contains("uncensored").all()


def test_m_star_from_the_law_matches_its_closed_form_and_covers_the_truth():
    runs = _planted(11)
    fit = fit_floor_law(runs, n_boot=300, seed=1)
    cells = pd.DataFrame({"n": [8, 16], "k": [2, 4], "bias": False, "mode": "relu", "step_factor": 0.5,
                          "t_max": 12.0})
    est = fit.set_index("term")["estimate"]
    for rate in (0.5, 0.9):
        out = m_star_from_floor_law(fit, [1e-3, 1e-4], cells, rate=rate)
        assert len(out) == 4 and (out["rising_frac"] == 0).all()
        z = stats.norm.ppf(rate)
        for _, row in out.iterrows():
            closed = np.exp((np.log(row["eps"]) - est["c"] - est["n"] * np.log(row["n"])
                             - est["k"] * np.log(row["k"]) - z * est["sigma"]) / est["m"])
            assert row["m_star_floor"] == pytest.approx(closed, rel=1e-9)
            assert row["m_star_floor_lo"] < row["m_star_floor"] < row["m_star_floor_hi"]
    # the planted median width at eps' = 1e-3 in cell (8, 2)
    truth = np.exp((np.log(1e-3) - LAW["c"] - LAW["n"] * np.log(8) - LAW["k"] * np.log(2)) / LAW["m"])
    row = m_star_from_floor_law(fit, 1e-3, cells.iloc[:1]).iloc[0]
    assert row["m_star_floor_lo"] <= truth <= row["m_star_floor_hi"]


def test_floor_law_widths_beside_direct_thresholds_for_every_criterion():
    from analysis.success import run_success, success_rates
    from analysis.thresholds import thresholds
    from tests.analysis_synth import floor_curves

    runs = _planted(12, widths=2 ** np.arange(4, 15), seeds=6, train_eps=1e-6)
    success = run_success(runs, floor_curves(runs), eps_grid=[1e-2, 1e-3], criteria=["interpolation", "regime"])
    th = thresholds(success_rates(success), delta_fail=0.1, n_boot=0)
    out = beside_thresholds(fit_floor_law(runs, n_boot=200), th)
    assert len(out) == len(th) and set(out["criterion"]) == {"interpolation", "regime"}
    ok = out["m_logistic"].notna()
    assert ok.mean() > 0.8 and out["m_star_floor"].notna().all()
    # the law's width at rate 0.9 and the direct logistic estimate answer the same question
    ratio = np.log(out.loc[ok, "m_logistic"] / out.loc[ok, "m_star_floor"])
    assert abs(ratio.median()) < 0.3, ratio.describe()
    with pytest.raises(ValueError, match="mode"):
        beside_thresholds(fit_floor_law(pd.concat([runs, runs.assign(mode="frozen", run_id=runs["run_id"] + "f")]),
                                        n_boot=5), th)


def test_runs_without_a_positive_loss_are_left_out_and_counted_per_group():
    runs = _planted(13)
    runs.loc[runs.index[:5], "final_rel_loss"] = np.nan
    runs.loc[runs.index[5], "status"] = "diverged"
    fit = fit_floor_law(runs, n_boot=20).set_index("term")
    assert fit.loc["m", "n_runs"] == len(runs) - 6 and "5 run(s) without a positive final_rel_loss" in fit.loc["m", "note"]


def test_bad_input_named_before_any_work():
    runs = _planted(14)
    with pytest.raises(ValueError, match=r"\['delta'\].*<= 0"):
        fit_floor_law(runs.assign(delta=np.where(runs["n"] == 4, 0.0, 0.5)), n_boot=5)
    with pytest.raises(Exception, match="final_rel_loss"):
        fit_floor_law(runs.drop(columns="final_rel_loss"))


def test_a_singular_replicate_fails_alone():
    """A replicate whose Newton matrix is singular is marked failed; the others are solved."""
    from analysis.floorlaw import _solve_each

    M = np.stack([np.eye(2) * 2.0, np.zeros((2, 2)), np.array([[1.0, 1.0], [0.0, 1.0]])])
    b = np.array([[2.0, 4.0], [1.0, 1.0], [3.0, 1.0]])
    ok = np.ones(3, dtype=bool)
    x = _solve_each(M, b, ok)
    assert list(ok) == [True, False, True]
    np.testing.assert_allclose(x[[0, 2]], [[1.0, 2.0], [2.0, 1.0]])
    np.testing.assert_array_equal(x[1], [0.0, 0.0])


def test_the_bootstrap_keeps_each_instance_s_widths_so_its_offset_cannot_leak_into_the_slope():
    """Planted: a large offset per data instance (tau = 2) and a small scatter per seed (sigma = 0.05),
    every instance at every width with the same seeds.  With a common intercept, the offsets then leave
    the slope a_m alone: its sampling sd is the seeds' alone, sigma / sqrt(sum (log m - mean)^2) (the
    closed form of least squares; no run is censored).  Resampling seeds within instance x width keeps
    every instance's widths balanced, so the bootstrap sees that; resampling an instance's runs across
    its widths would let its offset tilt the slope (an sd ~20-50 times larger on this design)."""
    widths, instances, seeds, sigma = 2 ** np.arange(6, 11), 8, 4, 0.05
    x = np.log(widths)
    sd_slope = sigma / np.sqrt(instances * seeds * np.sum((x - x.mean()) ** 2))
    for rng_seed in (21, 22):
        runs = planted_floor_runs(law=LAW, ns=(8,), ks=(2,), widths=widths, instances=instances, seeds=seeds,
                                  tau=2.0, sigma=sigma, rng_seed=rng_seed, train_eps=1e-300)
        m = fit_floor_law(runs, n_boot=400, seed=rng_seed).set_index("term").loc["m"]
        assert m["n_censored"] == 0 and m["n_instances"] == instances
        # two-stage resampling counts the seed scatter about twice: se ~ sqrt(2) sd_slope
        assert 0.7 * sd_slope < m["se"] < 2.0 * sd_slope, m["se"] / sd_slope
        assert m["lo"] <= LAW["m"] <= m["hi"] and m["hi"] - m["lo"] < 2 * 1.96 * 3 * sd_slope
