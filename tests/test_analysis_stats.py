import numpy as np
import pytest
from scipy import optimize, special, stats

from analysis.stats import firth_logistic, logistic_crossing, loglog_slope, ols, wilson_interval
from tests.analysis_synth import TOL


def test_wilson_known_values():
    lo, hi = wilson_interval([0, 5, 10], [10, 10, 10], 0.95)
    # closed forms: 0/n -> (0, z^2/(n+z^2)), n/n -> (n/(n+z^2), 1); 5/10 from the textbook table
    z2 = stats.norm.ppf(0.975) ** 2
    np.testing.assert_allclose(lo, [0.0, 0.2366, 10 / (10 + z2)], atol=TOL["wilson"])
    np.testing.assert_allclose(hi, [z2 / (10 + z2), 0.7634, 1.0], atol=TOL["wilson"])


@pytest.mark.parametrize("s,n,conf", [(1, 10, 0.95), (7, 23, 0.9), (50, 60, 0.99)])
def test_wilson_bounds_solve_the_score_equation(s, n, conf):
    # Wilson's interval is the set of p with |s/n - p| <= z sqrt(p(1-p)/n); its ends solve it with equality
    z = stats.norm.ppf(0.5 + conf / 2)
    for p in wilson_interval(s, n, conf):
        assert abs(s / n - p) == pytest.approx(z * np.sqrt(p * (1 - p) / n), abs=TOL["float"])


def test_wilson_no_trials_is_nan():
    lo, hi = wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)


def test_ols_matches_linregress():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = 2.0 - 0.7 * x + rng.normal(scale=0.3, size=30)
    fit = ols(np.column_stack([np.ones_like(x), x]), y, ["c", "b"], 0.95)
    ref = stats.linregress(x, y)
    assert fit["estimate"]["b"] == pytest.approx(ref.slope, rel=1e-10)
    assert fit["se"]["b"] == pytest.approx(ref.stderr, rel=1e-10)
    half = stats.t.ppf(0.975, 28) * ref.stderr
    assert fit["lo"]["b"] == pytest.approx(ref.slope - half, rel=1e-10)
    assert fit["dof"] == 28


def test_ols_rank_deficient_raises():
    X = np.column_stack([np.ones(4), np.ones(4)])
    with pytest.raises(ValueError, match="rank deficient"):
        ols(X, np.arange(4.0), ["c", "b"])


def test_loglog_slope_recovers_power_and_drops_nonpositive():
    rng = np.random.default_rng(2)
    m = 2.0 ** np.arange(3, 15)
    y = 3 * m**-0.5 * np.exp(rng.normal(scale=0.05, size=m.size))
    y[0] = 0.0
    fit = loglog_slope(m, y)
    assert fit["n_points"] == m.size - 1
    assert fit["lo"] <= -0.5 <= fit["hi"]
    assert abs(fit["slope"] + 0.5) < TOL["slope_abs"]


def test_logistic_crossing_recovers_planted_crossing():
    x = np.linspace(-3, 3, 13)
    trials = np.full(x.size, 10**6)
    successes = np.round(trials * special.expit(1.7 * (x - 0.4)))
    fit = logistic_crossing(x, successes, trials, target=0.9)
    assert fit["x_cross"] == pytest.approx(0.4 + special.logit(0.9) / 1.7, abs=1e-3)
    assert fit["lo"] < fit["x_cross"] < fit["hi"]


def test_firth_is_finite_under_complete_separation():
    x = np.arange(6.0)
    trials = np.full(6, 5)
    successes = np.array([0, 0, 0, 5, 5, 5])
    beta, cov = firth_logistic(x, successes, trials)
    assert np.all(np.isfinite(beta)) and np.all(np.isfinite(cov))
    assert beta[1] > 0
    assert 2 < -beta[0] / beta[1] < 3  # the 50% crossing lies between the separated widths


@pytest.mark.parametrize("successes", [[0, 0, 0, 5, 5, 5], [0, 1, 3, 2, 4, 5]])
def test_firth_maximises_the_penalised_likelihood(successes):
    # Firth's estimate maximises l(beta) + 1/2 log det I(beta); check against a generic optimiser
    x, trials, s = np.arange(6.0) - 2.5, np.full(6, 5.0), np.asarray(successes, float)
    X = np.column_stack([np.ones_like(x), x])

    def negative(beta):
        eta = X @ beta
        w = trials * special.expit(eta) * special.expit(-eta)
        ll = np.sum(s * special.log_expit(eta) + (trials - s) * special.log_expit(-eta))
        return -(ll + 0.5 * np.linalg.slogdet(X.T @ (w[:, None] * X))[1])

    reference = optimize.minimize(negative, np.zeros(2), method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 10000}).x
    np.testing.assert_allclose(firth_logistic(x, s, trials)[0], reference, atol=1e-5)


def test_batched_firth_matches_the_single_fit_replicate_by_replicate():
    from analysis.stats import firth_logistic_batch

    rng = np.random.default_rng(0)
    x = np.linspace(-2, 2, 7)
    n = rng.integers(0, 12, size=(60, 7))
    n[:5, 3:] = 0  # a few replicates with zero-trial widths
    s = rng.binomial(n, special.expit(1.5 * x))
    s[5] = np.where(x > 0, n[5], 0)  # complete separation: Firth stays finite
    beta, ok = firth_logistic_batch(x, s, n)
    assert ok.all()
    for b in range(len(s)):
        keep = n[b] > 0
        single, _ = firth_logistic(x[keep], s[b][keep], n[b][keep])
        np.testing.assert_allclose(beta[b], single, atol=1e-7)
    _, ok_one = firth_logistic_batch(x, np.where(np.arange(7) == 2, s, 0), np.where(np.arange(7) == 2, n, 0))
    assert not ok_one.any()  # one width: no slope to fit


def test_wilson_interval_holds_the_proportion_exactly():
    """At 0 and at every success the interval ends exactly at the proportion (a plotted error bar is
    never negative), and lo <= p <= hi for every count."""
    for n in (1, 7, 24, 1000):
        s = np.arange(n + 1)
        lo, hi = wilson_interval(s, n)
        assert lo[0] == 0.0 and hi[-1] == 1.0
        assert np.all(lo <= s / n) and np.all(s / n <= hi)
    lo, hi = wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)
