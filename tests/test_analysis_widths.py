import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from analysis.defaults import ABOVE, BELOW, NOT_CENSORED
from analysis.widths import (LAWS_COLUMNS, drift_law, horizon_table, laws_table, mark_moves, read_laws, study_horizon,
                             width_thresholds, widths_table, write_laws)
from tests.answer_synth import TARGET, conv_probability, m_star_at, planted_curves, planted_study, pooled_crossing

SLOPE, A, T0, TAU = 3.0, 30.0, 8.0, 0.15
LAW = {"p": 1.5, "q": 1.0}
DRIFT = {"c": -0.5, "n": 1.0, "k": 0.5, "m": -0.5, "tau": 0.2, "sigma": 0.3}
WIDTHS = 2 ** np.arange(5, 16)
NORMAL = [dict(n=n, k=k, delta=0.5, m_inf=8 * n**LAW["p"] * k**LAW["q"]) for n in (8, 16, 32) for k in (1, 2, 4)]
SPECIAL = [dict(n=12, k=2, delta=0.5, flat=0.6),          # converges with probability 0.6 whatever m
           dict(n=12, k=1, delta=0.5, m_inf=2.0**18),     # beyond every studied width
           dict(n=12, k=4, delta=0.5, m_inf=2.0)]         # already there at the smallest
PLAIN = [dict(n=n, k=0, delta=0.5, m_inf=8 * n**LAW["p"]) for n in (8, 16, 32)]


@pytest.fixture(scope="module")
def study():
    cells = [{**c, "m_held": 4 * c.get("m_inf", 1.0)} for c in NORMAL + SPECIAL + PLAIN]
    return planted_study(cells, widths=WIDTHS, instances=6, seeds=6, rng_seed=0, A=A, T0=T0, slope=SLOPE,
                         tau_inst=TAU, held={"slope": SLOPE}, drift=DRIFT)


@pytest.fixture(scope="module")
def widths48(study):
    return widths_table(study, None, horizon=None, quantities=("rate", "lazy"), n_boot=200).pipe(
        lambda w: pd.concat([width_thresholds(study, quantity="conv", horizon=48.0, n_boot=200), w], ignore_index=True))


def _conv_truth(cell, T):
    return pooled_crossing(lambda m, mi: conv_probability(m, mi, T, slope=SLOPE, A=A, T0=T0), cell["m_inf"], TAU)


def _drift_truth(n, k, delta_fail=0.1):
    """The width where a fraction 1 - delta_fail of runs has drift <= 1/4: the normal quantile of the planted law."""
    s = np.hypot(DRIFT["tau"], DRIFT["sigma"])
    return np.exp((np.log(0.25) - DRIFT["c"] - DRIFT["n"] * np.log(n) - DRIFT["k"] * np.log(k)
                   - stats.norm.ppf(1 - delta_fail) * s) / DRIFT["m"])


def test_conv_thresholds_recover_the_planted_law_at_the_horizon(widths48):
    w = widths48[(widths48["quantity"] == "conv")].set_index(["n", "k"])
    truth = pd.Series({(c["n"], c["k"]): _conv_truth(c, 48.0) for c in NORMAL + PLAIN})
    est = w.loc[truth.index]
    assert (est["censored"] == NOT_CENSORED).all() and est["rises_with_m"].all()
    assert (np.abs(np.log(est["estimate"] / truth)) < 0.5).all()
    covered = (est["lo"] <= truth) & (truth <= est["hi"])
    assert covered.sum() >= len(truth) - 1, covered
    # the horizon matters: the planted threshold at 12/lambda_* is about 6 times the one at 48
    assert m_star_at(1.0, 12.0, A, T0) / m_star_at(1.0, 48.0, A, T0) > 6
    assert (est["hi"] < truth * m_star_at(1.0, 12.0, A, T0) / m_star_at(1.0, 48.0, A, T0)).all()


def test_cells_that_do_not_rise_never_get_there_or_start_there_are_said_so(widths48):
    w = widths48[widths48["quantity"] == "conv"].set_index(["n", "k"])
    flat, above, below = w.loc[(12, 2)], w.loc[(12, 1)], w.loc[(12, 4)]
    assert flat["censored"] == ABOVE and not flat["rises_with_m"] and np.isnan(flat["estimate"])
    assert "does not rise with m" in flat["note"] and flat["slope_lo"] < 0 < flat["slope_hi"]
    assert flat["label"] == "> 32768" and flat["bound"] == 2**15
    assert above["censored"] == ABOVE and above["label"] == "> 32768" and np.isnan(above["estimate"])
    assert below["censored"] == BELOW and below["label"] == "<= 32" and np.isnan(below["estimate"])
    assert "does not rise" not in below["note"]
    normal = w.loc[(16, 2)]
    assert normal["rises_with_m"] and normal["slope_lo"] > 0
    assert normal["label"].startswith(f"{normal['estimate']:.0f} [")


def test_a_crossing_that_does_not_rise_is_labelled_and_left_out_of_the_law():
    """A weakly rising cell (planted slope 0.3, few seeds) whose logistic fit still crosses the target inside
    the widths: a positive slope whose interval includes 0 does not make a threshold."""
    weak = planted_study([dict(n=4, k=1, delta=0.5, m_inf=2.0**9)], widths=2 ** np.arange(5, 12), instances=3,
                         seeds=4, rng_seed=2, slope=0.3)
    w = width_thresholds(weak, quantity="conv", n_boot=0).iloc[0]
    assert w["censored"] == NOT_CENSORED and w["slope"] > 0 > w["slope_lo"]
    assert not w["rises_with_m"] and w["label"].endswith("(not rising)") and "does not rise with m" in w["note"]
    cells = [dict(n=n, k=1, delta=0.5, m_inf=8 * n**LAW["p"]) for n in (8, 16, 32)]
    rest = planted_study(cells, widths=WIDTHS, instances=3, seeds=6, rng_seed=3, slope=SLOPE)
    both = pd.concat([width_thresholds(weak, quantity="conv", n_boot=0),
                      width_thresholds(rest, quantity="conv", n_boot=0)], ignore_index=True)
    law = laws_table(pd.concat([weak, rest], ignore_index=True), widths=both, quantities=("conv",), theorem=False,
                     known=False).set_index("term")
    assert law.loc["p", "n_cells"] == 3 and law.loc["p", "n_censored"] == 1
    assert "1 cell(s) whose fraction does not rise with m left out" in law.loc["p", "note"]


def test_rate_thresholds_recover_the_product_of_both_laws(widths48):
    w = widths48[widths48["quantity"] == "rate"].set_index(["n", "k"])
    for c in NORMAL[::2]:
        def prob(m, mi):
            held = special.expit(SLOPE * (np.log(m) - np.log(4 * mi)) + special.logit(TARGET))
            return conv_probability(m, mi, 96.0, slope=SLOPE, A=A, T0=T0) * held
        truth = pooled_crossing(prob, c["m_inf"], TAU)
        row = w.loc[(c["n"], c["k"])]
        assert abs(np.log(row["estimate"] / truth)) < 0.5, (c, row["estimate"], truth)
        # and it lies well above the convergence threshold: the bound is the harder condition
        assert row["estimate"] > 2 * _conv_truth(c, 96.0)


def test_drift_law_and_its_m_lazy(study, widths48):
    law = drift_law(study, n_boot=200)
    fit = law[law["k_group"] == "k>=1"].set_index("term")
    for term in ("n", "k", "m"):  # within 1.5 half-widths (coverage itself: tests/test_analysis_floorlaw.py)
        half = (fit.loc[term, "hi"] - fit.loc[term, "lo"]) / 2
        assert abs(fit.loc[term, "estimate"] - DRIFT[term]) <= 1.5 * half < 0.25, (term, fit.loc[term])
    lazy = widths48[widths48["quantity"] == "lazy"]
    solved = lazy[(lazy["method"] == "drift_law") & (lazy["k"] >= 1) & (lazy["n"] != 12)].set_index(["n", "k"])
    truth = pd.Series({(n, k): _drift_truth(n, k) for n, k in solved.index})
    assert (np.abs(np.log(solved["estimate"] / truth)) < 0.3).all()
    assert ((solved["lo"] <= truth) & (truth <= solved["hi"])).mean() >= 0.75
    # beyond the studied widths the solve is labelled, never silently a measurement
    assert (solved["extrapolated"] == (solved["estimate"] > 2**15)).all() and 0 < solved["extrapolated"].sum() < 9
    assert solved.loc[solved["extrapolated"], "label"].str.endswith("(extrapolated)").all()
    assert solved.loc[solved["extrapolated"], "note"].str.contains("beyond the largest studied width 32768").all()
    # where the widths reach it, the direct threshold measures the same width
    direct = lazy[lazy["method"] == "thresholds"].set_index(["n", "k"]).loc[solved.index]
    inside = direct["censored"] == NOT_CENSORED
    assert inside.sum() >= 4 and (direct.loc[inside, "censored"] == NOT_CENSORED).all()
    ratio = np.log(direct.loc[inside, "estimate"] / truth[inside])
    assert np.abs(ratio).max() < 0.5, ratio
    assert (direct.loc[~inside, "censored"] == ABOVE).all() and (truth[~inside] > 2**14).all()


def test_lazy_at_a_horizon_reads_the_drift_until_then(study):
    runs = study[(study["n"] == 8) & (study["k"] >= 1)]
    curves = planted_curves(runs, times=(0.0, 0.25, 0.5, 1.0, 48.0, 96.0))
    early = width_thresholds(runs, curves, quantity="lazy", horizon=0.5, n_boot=50).set_index("k")
    full = width_thresholds(runs, curves, quantity="lazy", n_boot=50).set_index("k")
    # the drift at 0.5/lambda_* is (1 - e^-0.5) of its final value: the lazy regime holds at smaller widths
    assert (early["estimate"] < full["estimate"]).all() and (early["criterion"] == "lazy@0.5").all()
    with pytest.raises(ValueError, match="needs the curves|need the curves"):
        width_thresholds(runs, None, quantity="lazy", horizon=0.5, n_boot=0)


def test_laws_against_the_planted_exponents_and_the_theorem(study, widths48):
    laws = laws_table(study, widths=widths48, quantities=("conv", "rate", "lazy"), n_boot=200)
    assert list(laws.columns) == LAWS_COLUMNS
    conv = laws[(laws["quantity"] == "conv") & (laws["k_group"] == "k>=1")].set_index("term")
    for term in ("p", "q"):  # one planted data set: within 1.5 half-widths of its 95% interval
        half = (conv.loc[term, "hi"] - conv.loc[term, "lo"]) / 2
        assert abs(conv.loc[term, "estimate"] - LAW[term]) <= 1.5 * half < 0.5, conv.loc[term]
    # the three n = 12 cells are censored (or do not rise): left out and counted
    assert conv.loc["p", "n_cells"] == 9 and conv.loc["p", "n_censored"] == 3
    assert conv.loc["p", "criterion"] == "conv@48" and conv.loc["p", "horizon"] == 48.0
    # the domain it was measured on
    assert conv.loc["p", ["n_min", "n_max", "k_min", "k_max", "d_min", "d_max", "m_min", "m_max"]].tolist() == \
        [8, 32, 1, 4, 6, 6, 32, 2**15]
    # the covariance recorded for predictions is the OLS one (its diagonal: the fit's standard errors)
    for term in ("c", "p", "q"):
        assert conv.loc[term, f"cov_{term}"] == pytest.approx(conv.loc[term, "se"] ** 2, rel=1e-9)
    plain = laws[(laws["quantity"] == "conv") & (laws["k_group"] == "k=0")].set_index("term")
    assert "q" not in plain.index and abs(plain.loc["p", "estimate"] - LAW["p"]) < 0.5
    # m_thm over the same (uncensored, k >= 1) cells: planted as n^6 k^3 / delta^3
    thm = laws[(laws["quantity"] == "m_thm") & (laws["criterion"] == "conv@48")].set_index("term")
    assert thm.loc["p", "estimate"] == pytest.approx(6.0) and thm.loc["q", "estimate"] == pytest.approx(3.0)
    assert thm.loc["p", "n_cells"] == 9
    # m_lazy's law from the drift law: p = -a_n / a_m, q = -a_k / a_m
    lazy = laws[(laws["quantity"] == "lazy") & (laws["method"] == "drift_law") & (laws["k_group"] == "k>=1")]
    lazy = lazy.set_index("term")
    for term, planted in (("p", 2.0), ("q", 1.0)):
        half = (lazy.loc[term, "hi"] - lazy.loc[term, "lo"]) / 2
        assert abs(lazy.loc[term, "estimate"] - planted) <= 1.5 * half < 0.5, lazy.loc[term]
    known = laws[laws["quantity"] == "known"].set_index(["method", "term"])["estimate"]
    assert known[("du_2019", "p")] == 6 and known[("song_yang_2019", "p")] == 2
    assert known[("oymak_soltanolkotabi_2020", "p")] == 1


def test_laws_csv_round_trip(study, widths48, tmp_path):
    laws = laws_table(study, widths=widths48, quantities=("conv", "lazy"), n_boot=50)
    path = write_laws(laws, tmp_path)
    assert path == tmp_path / "laws.csv" and not list(tmp_path.glob(".*tmp"))
    back = read_laws(tmp_path)
    assert back["bias"].isin([False]).sum() == laws["bias"].isin([False]).sum()
    num = ["estimate", "lo", "hi", "cov_p", "n_min", "m_max"]
    np.testing.assert_allclose(back[num].to_numpy(float), laws[num].to_numpy(float), rtol=1e-12)
    with pytest.raises(Exception, match="estimate"):
        write_laws(laws.drop(columns="estimate"), tmp_path)


def test_the_horizon_rule_picks_the_planted_stable_horizon(study):
    runs = study[study["k"].isin([1, 2]) & (study["n"] != 12)]
    table = horizon_table(runs, horizons=(12, 24, 48, 96), quantities=("conv",), n_boot=200)
    choice = study_horizon(table)
    # planted: m*(T) / m_inf = 1 + 30 e^(-T/8) = 6.0, 2.5, 1.07, 1.00 at T = 12, 24, 48, 96
    assert choice.horizon == 48.0, (choice, table[table["moves_later"]])
    assert choice.moving[12.0] > 0 and choice.moving[24.0] > 0 and choice.moving[48.0] == 0
    assert not table.loc[table["horizon"] == 96.0, "moves_later"].any()
    # the exponents do not move (the horizon scales every cell alike): the widths decide
    assert not table[(table["kind"] == "exponent") & (table["horizon"] >= 24)]["moves_later"].any()
    # a study that is still moving at its longest horizon has none
    assert study_horizon(table[table["horizon"] <= 24.0].pipe(mark_moves)).horizon is None


def _hand(kind, horizon, estimate, lo, hi, censored="none", term=""):
    return {"kind": kind, "quantity": "conv", "method": "thresholds", "n": 8, "k": 1, "delta": 0.5, "bias": False,
            "k_group": "k>=1", "term": term, "horizon": horizon, "estimate": estimate, "lo": lo, "hi": hi,
            "censored": censored}


@pytest.mark.parametrize("rows,moves", [
    # a width inside its earlier interval stays; outside it moves; a change of censoring moves
    ([_hand("width", 1, 100, 80, 130), _hand("width", 2, 125, 100, 150)], [False, False]),
    ([_hand("width", 1, 100, 80, 130), _hand("width", 2, 135, 100, 150)], [True, False]),
    ([_hand("width", 1, np.nan, np.nan, np.nan, "above"), _hand("width", 2, 500, 400, 600)], [True, False]),
    ([_hand("width", 1, np.nan, np.nan, np.nan, "above"), _hand("width", 2, np.nan, np.nan, np.nan, "above")],
     [False, False]),
    # no interval: any change moves
    ([_hand("width", 1, 100, np.nan, np.nan), _hand("width", 2, 101, np.nan, np.nan)], [True, False]),
    # an exponent moves by its half-width or more
    ([_hand("exponent", 1, 2.0, 1.6, 2.4, "", "p"), _hand("exponent", 2, 2.39, 1.9, 2.5, "", "p")], [False, False]),
    ([_hand("exponent", 1, 2.0, 1.6, 2.4, "", "p"), _hand("exponent", 2, 1.59, 1.3, 1.9, "", "p")], [True, False]),
    # moving later than the next horizon counts too
    ([_hand("width", 1, 100, 80, 130), _hand("width", 2, 110, 90, 150), _hand("width", 3, 140, 120, 160)],
     [True, False, False]),
    # an entry that disappears moves
    ([_hand("width", 1, 100, 80, 130), {**_hand("width", 2, 100, 80, 130), "n": 16}], [True, False]),
])
def test_the_horizon_rule_on_hand_made_tables(rows, moves):
    table = mark_moves(pd.DataFrame(rows))
    assert list(table["moves_later"]) == moves


def test_strata_split_cells_and_laws(study):
    """The step-factor check: the same cells at two step factors are two sets of widths and two laws."""
    base = study[study["k"].isin([1, 2]) & (study["n"] != 12)]
    runs = pd.concat([base.assign(step_factor=1.0), base.assign(step_factor=0.25, run_id="q" + base["run_id"])],
                     ignore_index=True)
    w = widths_table(runs, quantities=("conv", "lazy"), strata=("step_factor",), n_boot=0)
    assert set(w["step_factor"]) == {1.0, 0.25} and len(w) == 2 * 6 * 3  # conv, lazy direct, lazy drift law
    laws = laws_table(runs, widths=w, quantities=("conv", "lazy"), strata=("step_factor",), n_boot=50, known=False)
    assert list(laws.columns[:LAWS_COLUMNS.index("k_group") + 2])[-1] == "step_factor"
    p = laws[(laws["term"] == "p") & (laws["method"] == "thresholds") & (laws["quantity"] == "conv")]
    assert len(p) == 2 and p["estimate"].nunique() == 1  # the same runs at both: the same law
    with pytest.raises(ValueError, match="step_factor"):
        widths_table(runs, quantities=("conv",), n_boot=0)


def test_a_drift_law_per_separation_gives_one_m_lazy_law_per_separation(study):
    """The report fits the drift law apart per separation (its slope in m bends at delta = 0.25): each
    separation gets its own m_lazy law, in laws.csv's delta column, over its own cells."""
    runs = study[study["k"] >= 1]
    other = runs.assign(delta=0.25, run_id=runs["run_id"] + "-q")
    both = pd.concat([runs, other], ignore_index=True)
    law = drift_law(both, by=("bias", "delta"), n_boot=100)
    assert sorted(law["delta"].unique()) == [0.25, 0.5]
    laws = laws_table(both, quantities=("lazy",), drift=law, theorem=False, known=False, n_boot=100)
    lazy = laws[laws["method"] == "drift_law"]
    assert sorted(lazy["delta"].unique()) == [0.25, 0.5] and not lazy.duplicated(["delta", "term"]).any()
    for delta, g in lazy.groupby("delta"):
        g = g.set_index("term")
        assert (g["delta_min"] == delta).all() and (g["delta_max"] == delta).all()
        for term, planted in (("p", 2.0), ("q", 1.0)):  # the planted law holds at both separations
            assert abs(g.loc[term, "estimate"] - planted) < 0.5, (delta, g.loc[term])
    direct = laws[laws["method"] == "thresholds"]
    assert direct["delta"].isna().all()  # the threshold laws span the separations
