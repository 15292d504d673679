import numpy as np
import pandas as pd
import pytest

from analysis.fits import fit_exponents
from analysis.load import MissingColumnError
from analysis.success import run_success, success_rates
from analysis.thresholds import ABOVE, BELOW, NOT_CENSORED, thresholds
from tests.analysis_synth import TOL, planted_runs

DELTA_FAIL = 0.1
NS, KS = (3, 5, 8, 13, 20), (1, 2, 3, 4)


def _thresholds(runs, n_boot=200):
    rates = success_rates(run_success(runs, eps_grid=[1e-2], criteria=["interpolation"]))
    return thresholds(rates, delta_fail=DELTA_FAIL, n_boot=n_boot, seed=0)


@pytest.fixture(scope="module")
def planted():
    """Two bias variants drawn from different laws: m* = 0.05 n^6 k^3 and m* = 2 n^4 k^2."""
    runs = pd.concat([
        planted_runs(p=6, q=3, C=0.05, ns=NS, ks=KS, seeds=8, slope=3.0, delta_fail=DELTA_FAIL, rng_seed=0),
        planted_runs(p=4, q=2, C=2.0, ns=NS, ks=KS, seeds=8, slope=3.0, delta_fail=DELTA_FAIL, rng_seed=1,
                     bias=True),
    ], ignore_index=True)
    return runs, _thresholds(runs)


@pytest.mark.parametrize("m_col,tol", [("m_star", TOL["exponent_abs"]), ("m_logistic", TOL["exponent_abs_smooth"])])
def test_planted_exponents_recovered_per_bias_variant(planted, m_col, tol):
    _, th = planted
    fit = fit_exponents(th, m_col=m_col, n_boot=300).set_index(["bias", "term"])
    for bias, truth in ((False, {"p": 6, "q": 3}), (True, {"p": 4, "q": 2})):
        for term, value in truth.items():
            row = fit.loc[(bias, term)]
            assert row["lo"] <= value <= row["hi"], (bias, term, row["estimate"], row["lo"], row["hi"])
            assert abs(row["estimate"] - value) < tol
            # the interval is informative: a wrong exponent one unit off lies outside it
            assert not row["lo"] <= value - 1 <= row["hi"] and not row["lo"] <= value + 1 <= row["hi"]
            assert row["boot_lo"] <= row["estimate"] <= row["boot_hi"]
        assert row["n_cells"] == len(NS) * len(KS) and row["n_censored"] == 0
    # the theorem's exponents: consistent for the no-bias law, not for the bias law planted at p=4, q=2
    assert fit.loc[(False, "p"), "theory_in_interval"] and not fit.loc[(True, "p"), "theory_in_interval"]
    assert fit.loc[(False, "q"), "theory"] == 3.0
    assert "r" not in fit.index.get_level_values("term")  # delta was not varied


def test_censored_cells_excluded(planted):
    runs, _ = planted
    # cut the tested widths so that cells at the ends of the n range fall outside them
    cut = runs[(runs["m"] >= 2**8) & (runs["m"] <= 2**20) & ~runs["bias"]]
    th = _thresholds(cut)
    censored = th["censored"] != NOT_CENSORED
    assert set(th.loc[censored, "censored"]) == {ABOVE, BELOW}
    fit = fit_exponents(th).set_index("term")
    assert fit.loc["p", "n_censored"] == censored.sum() and fit.loc["p", "n_cells"] == (~censored).sum()
    assert fit.loc["p", "lo"] <= 6 <= fit.loc["p", "hi"]


def _external(p=6.0, q=3.0, r=-2.0):
    """An exact power law with a few censored rows whose m_star holds their bound, as an external
    search might write them."""
    n, k, delta = np.meshgrid([4, 8, 16], [1, 2, 4], [0.25, 0.5], indexing="ij")
    df = pd.DataFrame({"n": n.ravel(), "k": k.ravel(), "delta": delta.ravel(), "bias": False,
                       "criterion": "interpolation", "eps": 1e-3})
    df["m_star"] = 3.0 * df["n"] ** p * df["k"] ** q * df["delta"] ** r
    df["censored"] = ""
    df.loc[df.index[:3], "censored"] = ABOVE
    df.loc[df.index[:3], "m_star"] = 1.0  # a bound, not a threshold: must not enter the fit
    df.loc[df.index[3], "censored"] = None
    return df


def test_external_thresholds_table_with_delta_term():
    fit = fit_exponents(_external()).set_index("term")
    np.testing.assert_allclose(fit.loc[["p", "q", "r"], "estimate"], [6, 3, -2], atol=1e-9)
    assert fit.loc["c", "estimate"] == pytest.approx(np.log(3.0))
    assert fit.loc["p", "n_censored"] == 3 and fit.loc["p", "n_cells"] == 15
    assert fit.loc["r", "regressor"] == "delta" and np.isnan(fit.loc["r", "theory"])
    # without the delta term the fit is per (criterion, eps) group still, over n and k only
    assert set(fit_exponents(_external(), terms=("p", "q"))["term"]) == {"c", "p", "q"}


def test_too_few_or_collinear_cells_give_a_note_not_a_number():
    df = _external()
    collinear = df[df["n"] == 4 * df["k"]]  # n and k move together: p and q not separable
    fit = fit_exponents(collinear, terms=("p", "q"))
    assert fit["estimate"].isna().all() and fit["note"].str.contains("rank deficient|fewer").all()


def test_missing_column_named():
    with pytest.raises(MissingColumnError, match="m_star"):
        fit_exponents(_external().drop(columns="m_star"))


def test_exact_fits_have_no_interval_not_a_zero_width_one():
    # an exact power law: residuals vanish, so the t-interval would have zero width
    fit = fit_exponents(_external(), n_boot=50).set_index("term")
    np.testing.assert_allclose(fit.loc["p", "estimate"], 6.0, atol=1e-9)
    assert fit[["se", "lo", "hi", "boot_lo", "boot_hi"]].isna().all().all()
    assert fit["interval_note"].str.contains("exact").all() and not fit["theory_in_interval"].any()
    # as many cells as parameters: no residual degrees of freedom
    df = _external()
    df = df[(df["delta"] == 0.5) & df["censored"].isin(["", None]) & df["n"].isin([8, 16])]
    df = df.assign(m_star=df["m_star"] * np.exp(np.random.default_rng(0).normal(0, 0.1, len(df))))
    three = df[((df["n"] == 8) & (df["k"] <= 2)) | ((df["n"] == 16) & (df["k"] == 1))]  # (8, 1), (8, 2), (16, 1)
    assert three["n"].nunique() == 2 and three["k"].nunique() == 2
    tight = fit_exponents(three, terms=("p", "q"))
    assert (tight["dof"] == 0).all() and tight["lo"].isna().all()
    assert tight["interval_note"].str.contains("no residual degrees of freedom").all()
    # with noise and spare cells the interval is back
    loose = fit_exponents(df, terms=("p", "q"))
    assert (loose["dof"] > 0).all() and loose["lo"].notna().all() and (loose["interval_note"] == "").all()
