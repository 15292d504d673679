import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analysis.fits import fit_exponents  # noqa: E402
from analysis.plots import (  # noqa: E402
    anchored_power_law,
    censor_legend_handles,
    exponent_table,
    fitted_power_law,
    interval_text,
    log_axis,
    logistic_plot_table,
    plot_ratio,
    plot_success_heatmap,
    plot_thresholds,
    plot_width_medians,
    threshold_labels,
)
from analysis.thresholds import ABOVE, BELOW, NOT_CENSORED  # noqa: E402
from tests.analysis_synth import TOL  # noqa: E402


def _exact_thresholds(p=6.0, q=3.0, C=0.05, ns=(3, 5, 8), ks=(1, 2, 3), bias=False):
    rows = [{"n": n, "k": k, "delta": 0.5, "bias": bias, "m_star": C * n**p * k**q, "censored": NOT_CENSORED}
            for n in ns for k in ks]
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_fitted_power_law_reproduces_an_exact_law():
    th = _exact_thresholds()
    fit = fit_exponents(th, terms=("p", "q"))
    pred = fitted_power_law(fit, th)
    np.testing.assert_allclose(pred, th["m_star"], rtol=1e-9)
    new = pd.DataFrame({"n": [20.0], "k": [4.0]})
    np.testing.assert_allclose(fitted_power_law(fit, new), 0.05 * 20**6 * 4**3, rtol=1e-9)


def test_fitted_power_law_skips_unfitted_terms_and_is_nan_without_fit():
    th = _exact_thresholds(ks=(2,))
    fit = fit_exponents(th, terms=("p", "q"))
    assert "q" not in set(fit["term"])  # k constant: left out of the fit
    np.testing.assert_allclose(fitted_power_law(fit, th), th["m_star"], rtol=1e-9)
    th.loc[:, "censored"] = ABOVE
    empty = fit_exponents(th, terms=("p", "q"))
    assert np.isnan(fitted_power_law(empty, th)).all()


def test_fitted_power_law_refuses_several_groups():
    th = pd.concat([_exact_thresholds(), _exact_thresholds(p=4, bias=True)], ignore_index=True)
    with pytest.raises(ValueError, match="one group"):
        fitted_power_law(fit_exponents(th, terms=("p", "q")), th)


def test_anchored_power_law():
    y = anchored_power_law([2.0, 4.0, 8.0], 4.0, 100.0, 6.0)
    np.testing.assert_allclose(y, [100 / 64, 100, 6400], rtol=TOL["float"])


def test_threshold_labels_show_bounds_for_censored_cells():
    th = pd.DataFrame({"m_star": [128.0, np.nan, np.nan, np.nan], "m_bound": [np.nan, 1024.0, 16.0, np.nan],
                       "censored": [NOT_CENSORED, ABOVE, BELOW, "undefined"]})
    assert threshold_labels(th).tolist() == ["128", "> 1024", "<= 16", "n/a"]
    gap = th.assign(log10_gap=np.log10(th["m_star"]) - 9, log10_gap_bound=np.log10(th["m_bound"]) - 9)
    labels = threshold_labels(gap, "log10_gap", "log10_gap_bound", "{:+.1f}")
    assert labels.tolist() == ["-6.9", "> -6.0", "<= -7.8", "n/a"]
    assert threshold_labels(th.iloc[:0]).empty


def test_exponent_table_explains_missing_fits_and_intervals():
    rng = np.random.default_rng(0)
    good = _exact_thresholds()
    good["m_star"] *= np.exp(rng.normal(0, 0.05, len(good)))
    exact = _exact_thresholds(ns=(3, 5), ks=(2,)).assign(bias=True)  # two cells, two parameters
    none = _exact_thresholds(bias=True).assign(censored=ABOVE, criterion="x")
    th = pd.concat([good.assign(criterion="x"), exact.assign(criterion="y"), none], ignore_index=True)
    table = exponent_table(fit_exponents(th, terms=("p", "q"))).set_index(["bias", "criterion"])
    row = table.loc[(False, "x")]
    assert row["p"].count("[") == 1 and row["note"] == ""
    est, rest = row["p"].split(" [")
    lo, hi = (float(v) for v in rest.rstrip("]").split(", "))
    assert lo < float(est) < hi and lo < 6 < hi
    assert row["theory_p"] == 6.0 and row["n_cells"] == 9
    row = table.loc[(True, "y")]
    assert "[" not in row["p"] and row["q"] == "-"
    assert "exact fit" in row["note"] and "k constant" in row["note"]
    row = table.loc[(True, "x")]
    assert row["p"] == "-" and row["q"] == "-"
    assert "not enough uncensored cells" in row["note"] and row["n_censored"] == 9
    assert row["theory_p"] == 6.0 and row["theory_q"] == 3.0  # the reference even without a fit


def test_plot_thresholds_draws_censored_cells_as_triangles_at_the_bound():
    th = pd.DataFrame({"n": [2, 4, 8, 16], "m_star": [16.0, 64.0, np.nan, np.nan],
                       "m_star_lo": [16.0, 16.0, np.nan, np.nan], "m_star_hi": [64.0, np.inf, np.nan, np.nan],
                       "m_bound": [np.nan, np.nan, 1024.0, 4.0],
                       "censored": [NOT_CENSORED, NOT_CENSORED, ABOVE, BELOW]})
    fig, ax = plt.subplots()
    counts = plot_thresholds(ax, th, "n", label="k=1")
    assert counts == {NOT_CENSORED: 2, ABOVE: 1, BELOW: 1}
    markers = {line.get_marker(): line for line in ax.get_lines()}
    assert markers["^"].get_ydata().tolist() == [1024.0]
    assert markers["v"].get_ydata().tolist() == [4.0]
    assert markers["o"].get_ydata().tolist() == [16.0, 64.0]
    assert len(censor_legend_handles()) == 2


def test_plot_success_heatmap_and_width_medians():
    rates = pd.DataFrame({"n": [4, 4, 8, 8], "m": [16, 128, 16, 128], "successes": [0, 4, 1, 3],
                          "trials": [4, 4, 4, 4]}).assign(rate=lambda d: d["successes"] / d["trials"])
    fig, ax = plt.subplots()
    image = plot_success_heatmap(ax, rates)
    data = np.asarray(image.get_array())
    assert data.shape == (2, 2) and data[0, 1] == 0.25 and data[1, 0] == 1.0  # rows m, columns n
    assert sorted(t.get_text() for t in ax.texts) == ["0/4", "1/4", "3/4", "4/4"]
    medians = pd.DataFrame({"m": [16, 128, 1024], "median": [1.0, 0.3, 0.1], "q25": [0.8, 0.2, 0.05],
                            "q75": [1.2, 0.4, 0.2], "censored": [False, False, True]})
    fig, ax = plt.subplots()
    line = plot_width_medians(ax, medians, label="x")
    assert line.get_ydata().tolist() == [1.0, 0.3, 0.1]
    hollow = [ln for ln in ax.get_lines() if ln.get_markerfacecolor() == "white"]
    assert len(hollow) == 1 and hollow[0].get_xdata().tolist() == [1024.0]


def test_exponent_table_shows_requested_terms_even_when_unfitted():
    th = _exact_thresholds(ns=(5,), ks=(1, 2, 3))  # n constant: only q fitted
    fit = fit_exponents(th, terms=("p", "q"))
    assert exponent_table(fit).columns[:2].tolist() == ["bias", "q"]
    row = exponent_table(fit, terms=["p", "q"]).iloc[0]
    assert row["p"] == "-" and row["q"].startswith("3.00") and "n constant" in row["note"]
    one = exponent_table(fit_exponents(th.iloc[:1], terms=("p", "q")), terms=["p", "q"]).iloc[0]
    assert one["p"] == one["q"] == "-" and one["note"].startswith("not enough uncensored cells to fit an exponent")


def test_plot_thresholds_accepts_other_columns_for_the_gap():
    th = pd.DataFrame({"n": [4, 8], "log10_gap": [-9.0, np.nan], "log10_gap_bound": [np.nan, -8.0],
                       "censored": [NOT_CENSORED, ABOVE]})
    fig, ax = plt.subplots()
    assert plot_thresholds(ax, th, "n", m_col="log10_gap", bound_col="log10_gap_bound", interval=False) == {
        NOT_CENSORED: 1, ABOVE: 1, BELOW: 0}
    assert {ln.get_marker(): ln.get_ydata().tolist() for ln in ax.get_lines()}["^"] == [-8.0]


def test_interval_text():
    text = interval_text([1.234, 2.0, np.nan], [1.0, np.nan, 0.0], [1.5, 3.0, 1.0], digits=2)
    assert text.tolist() == ["1.23 [1.00, 1.50]", "2.00", "-"]


def test_logistic_plot_table_bounds_censored_cells_at_the_tested_widths():
    th = pd.DataFrame({"n": [4, 8, 16], "k": 1, "delta": 0.5, "bias": False, "mode": "relu", "eps": 1e-3,
                       "m_logistic": [300.0, np.nan, np.nan], "logistic_censored": [NOT_CENSORED, ABOVE, BELOW],
                       "m_lo": [200.0, np.nan, np.nan], "m_hi": [450.0, np.nan, np.nan]})
    # per cell its own widths; "eps" of the runs is the training eps and must not be matched
    runs = pd.DataFrame({"n": [4, 4, 8, 8, 8, 16, 16], "k": 1, "delta": 0.5, "bias": False, "mode": "relu",
                         "eps": 1e-9, "m": [128, 1024, 64, 256, 2048, 32, 512]})
    out = logistic_plot_table(th, runs)
    assert out["m_star"].iloc[0] == 300.0 and np.isnan(out["m_bound"].iloc[0])
    assert out["m_bound"].iloc[1:].tolist() == [2048.0, 32.0]
    assert out["censored"].tolist() == [NOT_CENSORED, ABOVE, BELOW]
    assert (out["m_star_lo"].iloc[0], out["m_star_hi"].iloc[0]) == (200.0, 450.0)
    assert threshold_labels(out).tolist() == ["300", "> 2048", "<= 32"]
    assert len(out) == len(th) and (out["eps"] == 1e-3).all()


def test_plot_thresholds_draws_no_bar_without_an_interval():
    th = pd.DataFrame({"n": [2, 4], "m_star": [16.0, 64.0], "m_star_lo": [np.nan, 32.0],
                       "m_star_hi": [np.nan, 128.0], "m_bound": np.nan, "censored": NOT_CENSORED})
    fig, ax = plt.subplots()
    plot_thresholds(ax, th, "n")
    bars = [c for c in ax.containers if c.has_yerr]
    assert len(bars) == 1  # only the closed interval of n = 4 (no open arrow for the NaN one)
    segments = bars[0].lines[2][0].get_segments()
    assert len(segments) == 1 and np.allclose(segments[0][:, 1], [32.0, 128.0])


def test_plot_ratio_skips_missing_ratios_and_draws_intervals():
    table = pd.DataFrame({"m": [1024, 256, 512], "ratio": [0.5, 2.0, np.nan], "lo": [0.25, np.nan, np.nan],
                          "hi": [1.0, np.nan, np.nan]})
    fig, ax = plt.subplots()
    line = plot_ratio(ax, table, "m", label="frozen / relu")
    assert line.get_xdata().tolist() == [256.0, 1024.0] and line.get_ydata().tolist() == [2.0, 0.5]
    bars = [c for c in ax.containers if c.has_yerr]
    assert len(bars) == 1 and np.allclose(bars[0].lines[2][0].get_segments()[0][:, 1], [0.25, 1.0])
    assert plot_ratio(ax, table.assign(ratio=np.nan), "m") is None


def test_log_axis_ticks_at_the_studied_values():
    fig, ax = plt.subplots()
    ax.plot([16, 64, 1024], [1, 2, 3])
    log_axis(ax, "x", [16, 64, 1024], "m")
    log_axis(ax, "y")
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert list(ax.get_xticks()) == [16, 64, 1024] and [t.get_text() for t in ax.get_xticklabels()] == ["16", "64", "1024"]
    assert ax.get_xlabel() == "m (log scale)" and ax.get_ylabel() == ""
    plt.close(fig)

