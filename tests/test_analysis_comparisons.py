import numpy as np
import pandas as pd
import pytest

from analysis.comparisons import control_comparison, theorem_exponents, threshold_ratio
from tests.analysis_synth import complete_runs, planted_floor_runs

LAW = {"c": -3.0, "n": 2.0, "k": 1.0, "m": -1.5}
DESIGN = dict(ns=(4, 8, 16), ks=(1, 2), widths=(256, 1024, 4096), instances=4, seeds=4, tau=0.5, sigma=0.3,
              train_eps=1e-9)


def test_frozen_control_floor_ratio_recovered_per_cell():
    relu = planted_floor_runs(law=LAW, rng_seed=1, **DESIGN)
    rng = np.random.default_rng(2)
    # same instances, a floor 100x lower with its own run-level noise: planted ratio 0.01
    frozen = relu.assign(mode="frozen", run_id=relu["run_id"] + "-frozen",
                         final_rel_loss=relu["final_rel_loss"] * 0.01 * np.exp(rng.normal(0, 0.3, len(relu))))
    out = control_comparison(pd.concat([relu, frozen], ignore_index=True), factor="mode", reference="relu",
                             other="frozen", n_boot=300)
    assert len(out) == 3 * 2 * 3 and (out["n_instances"] == 4).all() and (out["n_other"] == 16).all()
    covered = (out["lo"] <= 0.01) & (0.01 <= out["hi"])
    assert covered.mean() >= 0.85, covered.mean()
    assert ((out["lo"] <= 0.03) & (0.03 <= out["hi"])).mean() <= 0.1  # a wrong ratio is excluded
    assert (out["hi"] / out["lo"] < 4.0).all()  # instance effects cancel between the arms


def test_k_zero_against_k_two_at_the_same_n():
    runs = pd.concat([planted_floor_runs(law=LAW, rng_seed=3, **{**DESIGN, "ks": (0,)}),
                      planted_floor_runs(law=LAW, rng_seed=4, **{**DESIGN, "ks": (2,)})], ignore_index=True)
    out = control_comparison(runs, factor="k", reference=0, other=2, n_boot=300)
    assert "k" not in out.columns and len(out) == 3 * 3
    # planted: k = 2 multiplies the floor by 2^1; the instances differ between arms, so wider intervals
    covered = (out["lo"] <= 2.0) & (2.0 <= out["hi"])
    assert covered.mean() >= 0.85
    assert (out["note"] == "").all()
    with pytest.raises(ValueError, match="k=8"):
        control_comparison(runs, factor="k", reference=0, other=8)


def test_censored_arm_flagged_as_a_bound():
    runs = planted_floor_runs(law=LAW, rng_seed=5, **{**DESIGN, "train_eps": 1e-4})
    runs = pd.concat([runs, runs.assign(step_factor=0.125, run_id=runs["run_id"] + "-small")], ignore_index=True)
    out = control_comparison(runs, factor="step_factor", reference=0.5, other=0.125, n_boot=50)
    censored = out["n_censored_other"] > 0
    assert censored.any() and out.loc[censored, "note"].str.contains("bound").all()
    np.testing.assert_allclose(out["ratio"], 1.0)  # identical arms
    has = out["lo"].notna()
    assert ((out.loc[has, "lo"] <= 1) & (1 <= out.loc[has, "hi"])).all()
    # where every run of both arms stopped at eps nothing varies: no interval, said so
    flat = (out["n_censored_other"] == out["n_other"])
    assert flat.any() and out.loc[flat, "lo"].isna().all() and out.loc[flat, "note"].str.contains("no interval").all()


def test_theorem_exponents_over_the_cells():
    n, k, delta, data_seed = (a.ravel() for a in np.meshgrid([4, 8, 16, 32], [1, 2, 4], [0.25, 0.5], [0, 1],
                                                             indexing="ij"))
    rng = np.random.default_rng(0)
    # m_thm ~ n^6 k^3 delta^-3 times a data-dependent factor (lambda_star, gamma) that does not scale
    m_thm = 1e3 * n**6.0 * k**3.0 * delta**-3.0 * np.exp(rng.normal(0, 0.2, n.size))
    runs = complete_runs(pd.DataFrame({"n": n, "k": k, "delta": delta, "data_seed": data_seed, "m_thm": m_thm}))
    fit = theorem_exponents(runs).set_index("term")
    for term, value in {"p": 6.0, "q": 3.0, "r": -3.0}.items():
        assert fit.loc[term, "lo"] <= value <= fit.loc[term, "hi"] and abs(fit.loc[term, "estimate"] - value) < 0.2
    assert fit.loc["p", "n_cells"] == 24 and fit["caveat"].str.contains("constant is unknown").all()


def test_threshold_ratio_of_k_zero_and_k_two_recovered():
    from analysis.success import run_success
    from tests.analysis_synth import planted_cell

    rng = np.random.default_rng(6)
    parts = []
    for n in range(6):  # six cells, each with a k = 0 arm at m* = 2^7 and a k = 2 arm at 4 x 2^7
        for k, m_star in ((0, 2.0**7), (2, 4 * 2.0**7)):
            for i in range(4):  # data instances shift the threshold by exp(u), u ~ N(0, 0.2)
                parts.append(planted_cell(m_star * np.exp(rng.normal(0, 0.2)), seeds=16, slope=3.0, target=0.9,
                                          rng=rng, span=5, n=n + 4, k=k, data_seed=i))
    runs = complete_runs(pd.concat(parts, ignore_index=True))
    runs = runs[runs["m"].between(2**4, 2**12)]
    success = run_success(runs, eps_grid=[1e-2], criteria=["interpolation"])
    out = threshold_ratio(success, runs, factor="k", reference=0, other=2, delta_fail=0.1, n_boot=80)
    assert len(out) == 6 and (out["n_instances_other"] == 4).all() and (out["note"] == "").all()
    assert ((out["lo"] <= 4) & (4 <= out["hi"])).mean() >= 5 / 6
    assert not ((out["lo"] <= 1) & (1 <= out["hi"])).any()  # "no cost" is excluded
    assert np.median(np.log(out["ratio"] / 4)) == pytest.approx(0, abs=0.25)
    # a cell where only one arm was trained is left out, not an error
    one_arm = success[~((success["n"] == 4) & (success["k"] == 2))]
    assert set(threshold_ratio(one_arm, runs, factor="k", reference=0, other=2, delta_fail=0.1, n_boot=10)["n"]) == \
        {5, 6, 7, 8, 9}
