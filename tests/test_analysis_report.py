"""The study report (analysis/report.py) on a planted multi-part study: the parts, the pooling across
budgets, each table against the tested function it is built from or the planted truth, and the CSVs."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.predict import predict_width
from analysis.report import (FILES, HORIZONS_COLUMNS, MECHANISM_COLUMNS, NOT_OBSERVED, STEP_COLUMNS,
                             SURVIVAL_CSV_COLUMNS, WIDTHS_COLUMNS, ReportSettings, StaleReportError, check_lazy_law,
                             has_report, mechanism_table, part_at_horizon, pool_through, read_report, report_results,
                             runs_fingerprint, split_study, study_report, trajectory_keys, write_report)
from analysis.survival import survival_table
from analysis.timed import t_to_columns, time_to
from analysis.widths import LAWS_COLUMNS, horizon_table, read_laws, study_horizon, width_thresholds
from tests.analysis_synth import write_results
from tests.answer_synth import complete_answer_runs, conv_probability, planted_curves, planted_study, pooled_crossing

SLOPE, A, T0, TAU = 3.0, 30.0, 8.0, 0.15
LAW = {"p": 1.5, "q": 1.0}
DRIFT = {"c": -0.5, "n": 1.0, "k": 0.5, "m": -0.5, "tau": 0.2, "sigma": 0.3}
PLANT = dict(A=A, T0=T0, slope=SLOPE, tau_inst=TAU, held={"slope": SLOPE}, drift=DRIFT)
HORIZONS, LONG, DRIFT_T, BIAS_T = (24.0, 48.0, 96.0), (192.0, 384.0), 12.0, (12.0, 24.0, 48.0)
N_BOOT = 50


def _cells(ns, ks):
    return [{"n": n, "k": k, "delta": 0.5, "m_inf": 8 * n ** LAW["p"] * max(k, 1) ** LAW["q"],
             "m_held": 32 * n ** LAW["p"] * max(k, 1) ** LAW["q"]} for n in ns for k in ks]


def _study():
    """main (t_max 96), long (t_max 384, the same trajectories as main), drift (t_max 24, wider), step
    (factor 1/4 beside main's cells), bias (t_max 24: shorter than some of its horizons)."""
    main = planted_study(_cells((8, 16, 32), (0, 1, 2, 4)), widths=2 ** np.arange(5, 15), instances=3, seeds=4,
                         rng_seed=1, t_max=96.0, **PLANT)
    long_ = planted_study(_cells((16, 32), (2,)), widths=2 ** np.arange(7, 12), instances=3, seeds=4, rng_seed=2,
                          t_max=384.0, **PLANT)
    drift = planted_study(_cells((8, 16, 32), (0, 2)), widths=2 ** np.arange(13, 17), instances=3, seeds=2,
                          rng_seed=3, t_max=24.0, **PLANT)
    step = planted_study(_cells((16,), (2,)), widths=2 ** np.arange(7, 11), instances=3, seeds=4, rng_seed=4,
                         t_max=96.0, **PLANT)
    bias = planted_study(_cells((8, 16), (2,)), widths=2 ** np.arange(5, 15), instances=3, seeds=4, rng_seed=5,
                         t_max=24.0, bias=True, **PLANT)
    runs = pd.concat([main.assign(step_factor=1.0), long_.assign(step_factor=1.0), drift.assign(step_factor=1.0),
                      step.assign(step_factor=0.25), bias.assign(step_factor=1.0)], ignore_index=True)
    rng = np.random.default_rng(7)
    # the mechanism: late_rate = 2 lambda_min_late - jump_rate_late + noise
    lam, jump = rng.uniform(0.2, 1.0, len(runs)), rng.uniform(0.0, 1.0, len(runs))
    runs = runs.assign(lambda_min_late=lam, jump_rate_late=jump, jump_energy_total=rng.lognormal(0, 1, len(runs)),
                       late_rate=2 * lam - jump + rng.normal(0, 0.05, len(runs)))
    return complete_answer_runs(runs)


@pytest.fixture(scope="module")
def study():
    runs = _study()
    return runs, planted_curves(runs)


@pytest.fixture(scope="module")
def report(study):
    runs, curves = study
    return study_report(runs, curves, horizons=HORIZONS, long_horizons=LONG, drift_horizon=DRIFT_T,
                        bias_horizons=BIAS_T, n_boot=N_BOOT)


def _settings():
    return ReportSettings(horizons=HORIZONS, long_horizons=LONG, drift_horizon=DRIFT_T, bias_horizons=BIAS_T,
                          n_boot=N_BOOT)


def test_pool_through_keeps_one_run_per_trajectory_and_relabels_the_budget(study):
    runs, _ = study
    plain = runs[~runs["bias"] & (runs["step_factor"] == 1.0)]
    pooled = pool_through(plain, DRIFT_T)
    keys = trajectory_keys(plain)
    assert "t_max" not in keys and {"n", "k", "m", "data_seed", "seed", "step_factor"} <= set(keys)
    assert len(pooled) == len(plain.drop_duplicates(keys)) < len(plain)
    assert not pooled.duplicated(keys).any() and (pooled["t_max"] == DRIFT_T).all()
    # of a trajectory run at budgets 96 and 384 the shortest is kept; at 24 and 96, the one at 24
    shared = pooled[(pooled["n"] == 16) & (pooled["k"] == 2) & (pooled["m"] == 256)]
    assert len(shared) == 12 and (shared["t_max_run"] == 96.0).all() and shared["run_id"].str.startswith("a1-").all()
    wide = pooled[(pooled["n"] == 16) & (pooled["k"] == 2) & (pooled["m"] == 2**13)]
    assert set(wide.groupby("seed")["t_max_run"].first()) == {24.0, 96.0}
    assert (wide[wide["seed"] < 2]["t_max_run"] == 24.0).all()
    # a budget shorter than the horizon is left out
    assert (pool_through(plain, 48.0)["t_max_run"] >= 48.0).all()
    assert set(pool_through(plain, 48.0)["t_max_run"]) == {96.0}  # every long trajectory is one of main's


def test_split_study_finds_each_part(study):
    runs, _ = study
    parts = split_study(runs, _settings())
    assert (parts["main"]["t_max"] == 96.0).all() and not parts["main"]["bias"].any()
    assert (parts["main"]["step_factor"] == 1.0).all() and len(parts["main"]) == 12 * 10 * 12
    assert (parts["long"]["t_max"] == 384.0).all() and len(parts["long"]) == 2 * 5 * 12
    assert parts.budget["drift"] == DRIFT_T and parts.budget["main"] == 96.0
    step = parts["step"]
    assert set(step["step_factor"]) == {1.0, 0.25} and set(step["m"]) == {128, 256, 512, 1024}
    assert step.groupby("step_factor").size().to_dict() == {0.25: 48, 1.0: 48}
    assert parts["bias"]["bias"].all() and parts.budget["bias"] == 24.0


def test_conv_widths_at_each_horizon_recover_the_planted_threshold(report, study):
    w = report.widths
    main = w[(w["subset"] == "main") & (w["quantity"] == "conv")].set_index(["n", "k", "horizon"])
    for cell in _cells((8, 16, 32), (0, 2)):
        for T in (48.0, 96.0):
            truth = pooled_crossing(lambda m, mi, T=T: conv_probability(m, mi, T, slope=SLOPE, A=A, T0=T0),
                                    cell["m_inf"], TAU)
            row = main.loc[(cell["n"], cell["k"], T)]
            assert row["censored"] == "none" and abs(np.log(row["estimate"] / truth)) < 0.6, (cell, T, row["label"])
    # the same numbers as the tested function on the main part alone
    runs, curves = study
    direct = width_thresholds(split_study(runs, _settings())["main"], curves, quantity="conv", horizon=48.0,
                              n_boot=N_BOOT)
    mine = w[(w["subset"] == "main") & (w["quantity"] == "conv") & (w["horizon"] == 48.0)]
    np.testing.assert_allclose(mine["estimate"].to_numpy(float), direct["estimate"].to_numpy(float))
    assert list(w.columns) == WIDTHS_COLUMNS


def test_lazy_direct_on_the_pool_and_from_the_drift_law(report, study):
    runs, _ = study
    w = report.widths
    lazy = w[(w["subset"] == "drift") & (w["quantity"] == "lazy")]
    assert set(lazy["method"]) == {"thresholds", "drift_law"} and (lazy["horizon"] == DRIFT_T).all()
    # the pool's widths reach 2^16 where the drift part adds them
    direct = lazy[lazy["method"] == "thresholds"].set_index(["n", "k"])
    assert direct.loc[(32, 2), "m_max"] == 2**16 and direct.loc[(32, 1), "m_max"] == 2**14
    law = lazy[lazy["method"] == "drift_law"].set_index(["n", "k"])
    s = np.hypot(DRIFT["tau"], DRIFT["sigma"])
    for n, k in [(8, 2), (16, 2), (32, 2), (16, 4)]:
        truth = np.exp((np.log(0.25) - DRIFT["c"] - DRIFT["n"] * np.log(n) - DRIFT["k"] * np.log(k)
                        - stats.norm.ppf(0.9) * s) / DRIFT["m"])
        assert abs(np.log(law.loc[(n, k), "estimate"] / truth)) < 0.5, (n, k)
    # a solve beyond the pool's widths is flagged, not given as a measurement
    beyond = law[law["estimate"] > law["m_max"]]
    assert beyond["extrapolated"].all() and beyond["label"].str.endswith("(extrapolated)").all()
    assert not law[law["estimate"] <= law["m_max"]]["extrapolated"].any()


def test_laws_csv_holds_every_headline_number(report):
    laws = report.laws
    assert list(laws.columns) == LAWS_COLUMNS
    at = report.horizon
    conv = laws[(laws["quantity"] == "conv") & (laws["k_group"] == "k>=1") & ~laws["bias"].astype(bool)]
    conv = conv.set_index("term")
    assert (conv["horizon"] == at).all() and (conv["criterion"] == f"conv@{at:g}").all()
    for term, planted in LAW.items():
        assert conv.loc[term, "lo"] <= planted <= conv.loc[term, "hi"], (term, conv.loc[term])
    # the drift law's own exponents: drift ~ n^a k^b m^-e
    drift = laws[(laws["quantity"] == "drift") & (laws["k_group"] == "k>=1") & ~laws["bias"].astype(bool)]
    drift = drift.set_index("term")
    for term, planted in (("a", DRIFT["n"]), ("b", DRIFT["k"]), ("e", -DRIFT["m"])):
        assert drift.loc[term, "lo"] <= planted <= drift.loc[term, "hi"], (term, drift.loc[term])
        assert drift.loc[term, "horizon"] == DRIFT_T
    assert drift.loc["e", "regressor"] == "m" and drift.loc["e", "estimate"] > 0
    # m_lazy's law, m_thm's exponents and the published laws are rows too; the bias part has its own
    assert {"lazy", "m_thm", "known", "rate", "rate_soft"} <= set(laws["quantity"])
    assert set(laws.loc[laws["quantity"] == "lazy", "method"]) == {"thresholds", "drift_law"}
    assert {"du_2019", "song_yang_2019", "oymak_soltanolkotabi_2020"} <= set(laws["method"])
    bias = laws[laws["bias"].astype(bool) & (laws["quantity"] == "conv")]
    assert len(bias) and (bias["horizon"] == 24.0).all()  # its longest observed horizon


def test_horizon_table_and_choice_match_the_tested_functions(report, study):
    runs, curves = study
    main = split_study(runs, _settings())["main"]
    table = horizon_table(main, curves, HORIZONS, quantities=("conv", "rate", "rate_soft"), n_boot=N_BOOT)
    mine = report.horizons[report.horizons["subset"] == "main"].drop(columns="subset").reset_index(drop=True)
    assert list(report.horizons.columns) == HORIZONS_COLUMNS
    key = ["kind", "quantity", "n", "k", "term", "horizon", "k_group"]
    a = mine.sort_values(key, ignore_index=True)
    b = table.reindex(columns=mine.columns).sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    choice = report.choice.set_index("subset")
    assert choice.loc["main", "chosen"] == study_horizon(table).horizon == report.horizon
    # planted m*(T) / m_inf = 1 + 30 e^(-T/8): 2.5 at 24, 1.07 at 48, 1.00 at 96
    assert report.horizon == 48.0
    assert choice.loc["long", "horizons"] == "24, 48, 96, 192, 384"
    assert choice.loc["drift", "horizons"] == "12, 24, 48, 96"


def test_a_horizon_beyond_the_budget_is_not_observed_not_an_error(report, study):
    w = report.widths
    late = w[(w["subset"] == "bias") & (w["horizon"] == 48.0)]
    assert len(late) == 2 * 3 and (late["label"] == NOT_OBSERVED).all() and late["estimate"].isna().all()
    assert late["note"].str.contains("beyond the runs' budget 24").all()
    runs, curves = study
    short = runs[(runs["t_max"] == 24.0) & ~runs["bias"]]
    at = part_at_horizon(short, curves, 96.0, ("conv", "lazy"), settings=_settings())
    assert at.laws.empty and (at.widths["label"] == NOT_OBSERVED).all()
    assert set(at.widths["quantity"]) == {"conv", "lazy"}


def test_step_fractions_against_an_independent_count(report, study):
    runs, _ = study
    step = report.step
    assert list(step.columns) == STEP_COLUMNS
    parts = split_study(runs, _settings())
    for T in HORIZONS:
        conv = step[(step["quantity"] == "conv") & (step["horizon"] == T)].set_index(["m", "step_factor"])
        count = (parts["step"].assign(ok=time_to(parts["step"], 1e-8) <= T)
                 .groupby(["m", "step_factor"])["ok"].agg(["sum", "size"]))
        assert (conv["successes"] == count["sum"]).all() and (conv["trials"] == count["size"]).all()
    w = report.widths
    assert set(w.loc[w["subset"] == "step", "step_factor"]) == {1.0, 0.25}


def test_mechanism_recovers_the_planted_coefficients(report):
    mech = report.mechanism
    assert list(mech.columns) == MECHANISM_COLUMNS
    reg = mech[(mech["fit"] == "late_rate") & (mech["k_group"] == "k>=1")].set_index("term")
    for term, planted in (("lambda_min_late", 2.0), ("jump_rate_late", -1.0)):
        assert abs(reg.loc[term, "estimate"] - planted) < 0.05 and reg.loc[term, "expected"] == planted
        assert reg.loc[term, "expected_in_interval"]
    assert {"jumps:jump_energy_total", "jumps:jump_rate_late"} <= set(mech["fit"])


def test_mechanism_table_leaves_out_what_it_cannot_fit():
    runs = complete_answer_runs(pd.DataFrame({"n": 8, "k": 2, "delta": 0.5, "bias": False, "m": [64] * 3,
                                              "data_seed": 0, "late_rate": 0.5, "lambda_min_late": 0.5,
                                              "jump_rate_late": 0.0, "jump_energy_total": 0.0}))
    mech = mechanism_table(runs, n_boot=10)
    assert mech["estimate"].isna().all() and mech["note"].str.contains("no fit").all()


def test_survival_is_the_tested_table_per_part(report, study):
    runs, _ = study
    surv = report.survival
    assert list(surv.columns) == SURVIVAL_CSV_COLUMNS
    main = surv[surv["subset"] == "main"]
    assert main["t"].max() == 96.0 and surv[surv["subset"] == "long"]["t"].max() == 384.0
    direct = survival_table(split_study(runs, _settings())["main"], 1e-8, sorted(main["t"].unique()), n_boot=N_BOOT)
    np.testing.assert_allclose(main["frac"].to_numpy(float), direct["frac"].to_numpy(float))
    assert (main["n_converging"] + main["n_plateau"] + main["n_stopped"] == main["n_not_reached"]).all()


def test_settings_are_checked_before_any_work(study):
    runs, curves = study
    for kwargs, name in (({"horizons": ()}, "horizons"), ({"drift_horizon": 0}, "drift_horizon"),
                         ({"delta_fail": 1.5}, "delta_fail"), ({"n_boot": -1}, "n_boot"), ({"eps": 2}, "eps"),
                         ({"long_horizons": (np.inf,)}, "long_horizons")):
        with pytest.raises(ValueError, match=name):
            study_report(runs, curves, **kwargs)
    with pytest.raises(ValueError, match="runs is empty"):
        study_report(runs.iloc[0:0], curves)


def test_write_report_and_predict_from_its_laws(report, tmp_path):
    written = write_report(report, tmp_path)
    assert set(written) == {*FILES, "meta"} and all(p.parent == tmp_path for p in written.values())
    laws = read_laws(tmp_path)
    assert len(laws) == len(report.laws)
    widths = pd.read_csv(written["widths"])
    assert list(widths.columns) == WIDTHS_COLUMNS and len(widths) == len(report.widths)
    conv = report.laws[(report.laws["quantity"] == "conv") & (report.laws["k_group"] == "k>=1")
                       & ~report.laws["bias"].astype(bool)].set_index("term")["estimate"]
    out = predict_width(16, 2, 0.5, d=6, quantity="conv", results=tmp_path)
    assert out.estimate == pytest.approx(np.exp(conv["c"] + conv["p"] * np.log(16) + conv["q"] * np.log(2)))
    assert out.horizon == report.horizon
    assert predict_width(16, 2, 0.5, d=6, quantity="lazy", results=tmp_path).method == "drift_law"


def test_report_results_reads_a_results_directory(study, tmp_path):
    runs, curves = study
    few = runs[(runs["n"] == 8) & ~runs["bias"]]
    write_results(tmp_path / "res", few, curves[curves["run_id"].isin(few["run_id"])])
    written = report_results(tmp_path / "res", tmp_path / "out", horizons=HORIZONS, long_horizons=LONG,
                             drift_horizon=DRIFT_T, n_boot=10)
    assert (tmp_path / "out" / "laws.csv").is_file() and set(written) == {*FILES, "meta"}


def test_a_drift_law_with_only_its_intercept_gives_laws_rows(study):
    """One n, one k, one delta: m_lazy's law has only ``c`` (regression: np.cov of one column is 0-d)."""
    runs, curves = study
    one = runs[(runs["n"] == 8) & (runs["k"] == 0) & (runs["t_max"] == 96.0)]
    at = part_at_horizon(one, curves, DRIFT_T, ("lazy",), settings=_settings())
    law = at.laws[(at.laws["quantity"] == "lazy") & (at.laws["method"] == "drift_law")]
    assert list(law["term"]) == ["c"] and np.isfinite(law["estimate"]).all() and law["se"].iloc[0] > 0


def test_read_report_round_trip_and_staleness(report, study, tmp_path):
    runs, _ = study
    assert not has_report(tmp_path)
    write_report(report, tmp_path)
    back = read_report(tmp_path, runs)
    assert back.horizon == report.horizon and back.settings == report.settings and back.notes == report.notes
    assert back.fingerprint == runs_fingerprint(runs) and back.n_runs == len(runs)
    for name, table in report.tables().items():
        mine = back.tables()[name]
        assert list(mine.columns) == list(table.columns) and len(mine) == len(table), name
    np.testing.assert_allclose(back.widths["estimate"].to_numpy(float), report.widths["estimate"].to_numpy(float))
    assert back.widths["bias"].dtype == bool and list(back.widths["label"]) == list(report.widths["label"])
    with pytest.raises(StaleReportError, match="rerun `python -m pipeline report"):
        read_report(tmp_path, runs.iloc[1:])


def test_pool_through_a_horizon_no_run_reaches_is_empty(study):
    runs, _ = study
    assert pool_through(runs, 10_000.0).empty


def test_runs_stopped_above_eps_prime_are_left_out_of_conv_and_counted(study):
    """A run that stopped at a training eps above eps' before T has an unknown conv@T outcome: left out of conv
    and rate (counted in the note), kept for rate_soft, which reads the run's own record."""
    runs, curves = study
    main = split_study(runs, _settings())["main"]
    cell = main[(main["n"] == 8) & (main["k"] == 2)]
    early = cell.index[(cell["status"] == "converged") & (cell["t"] * cell["lambda_star"] < 24)][:5]
    assert len(early) == 5
    coarse = cell.assign(eps=cell["eps"].where(~cell.index.isin(early), 1e-6))
    for eps, col in t_to_columns(coarse).items():
        if eps < 1e-6:
            coarse.loc[early, col] = np.inf
    at = part_at_horizon(coarse, curves, 24.0, ("conv", "rate_soft"), settings=_settings())
    conv = at.widths[at.widths["quantity"] == "conv"].iloc[0]
    soft = at.widths[at.widths["quantity"] == "rate_soft"].iloc[0]
    assert "5 run(s) stopped before T=24/lambda_* without a conclusion" in conv["note"]
    assert "without a conclusion" not in soft["note"]


@pytest.mark.parametrize("direct,law,flagged", [
    # measured above the widths, the law's solve inside them: the law does not fit this cell
    (("above", np.nan, np.nan, np.nan), 3000.0, "contradicted by the measurement"),
    (("above", np.nan, np.nan, np.nan), 30000.0, ""),            # both beyond: consistent
    (("none", 2000.0, 1500.0, 2600.0), 2400.0, ""),               # inside the measured interval
    (("none", 2000.0, 1500.0, 2600.0), 5000.0, "outside the measured interval [1500, 2600]"),
    (("below", np.nan, np.nan, np.nan), 900.0, "contradicted by the measurement"),
])
def test_check_lazy_law_against_the_measurement(direct, law, flagged):
    censored, est, lo, hi = direct
    common = {"subset": "drift", "n": 8, "k": 2, "delta": 0.25, "bias": False, "step_factor": 1.0, "horizon": 24.0,
              "quantity": "lazy", "m_min": 512, "m_max": 16384}
    table = pd.DataFrame([{**common, "method": "thresholds", "estimate": est, "lo": lo, "hi": hi, "censored": censored,
                           "note": ""},
                          {**common, "method": "drift_law", "estimate": law, "lo": law / 2, "hi": law * 2,
                           "censored": "none", "note": "from the drift law"}])
    out = check_lazy_law(table)
    note = out.loc[out["method"] == "drift_law", "note"].iloc[0]
    assert note.startswith("from the drift law") and (flagged in note if flagged else note == "from the drift law")
    assert out.loc[out["method"] == "thresholds", "note"].iloc[0] == ""
