import numpy as np
import pandas as pd
import pytest

from analysis.mechanism import fit_mechanism, plot_mechanism
from tests.answer_synth import complete_answer_runs

JUMPS = {"c": 1.0, "n": 0.5, "k": 1.0, "m": -0.5}


def _planted(rng_seed, *, flow=2.0, jumps=-1.0, ks=(1, 2, 4), instances=5, seeds=4, instance_sd=0.1):
    """late_rate = flow * min_lambda_ratio + jumps * jump_rate_late + u_instance + noise, the jump rate
    following the power law JUMPS with its own instance effect (k = 0: no flips, no jumps)."""
    rng = np.random.default_rng(rng_seed)
    n, k, inst, m, seed = (a.ravel() for a in np.meshgrid((8, 16, 32), ks, np.arange(instances), 2 ** np.arange(8, 14),
                                                          np.arange(seeds), indexing="ij"))
    cell_inst = np.unique(np.column_stack([n, k, inst]), axis=0, return_inverse=True)[1].ravel()
    u = rng.normal(0, 0.2, cell_inst.max() + 1)[cell_inst]
    log_k = np.log(np.where(k > 0, k, 1))
    jump = np.exp(JUMPS["c"] + JUMPS["n"] * np.log(n) + JUMPS["k"] * log_k + JUMPS["m"] * np.log(m) + u
                  + rng.normal(0, 0.3, n.size))
    jump = np.where(k > 0, jump, 0.0)
    lam = rng.uniform(0.3, 1.0, n.size)
    late = (flow * lam + jumps * jump + rng.normal(0, instance_sd, cell_inst.max() + 1)[cell_inst]
            + rng.normal(0, 0.1, n.size))
    runs = pd.DataFrame({"n": n, "k": k, "delta": 0.5, "data_seed": inst, "m": m, "seed": seed, "status": "budget",
                         "min_lambda_ratio": lam, "jump_rate_late": jump, "late_rate": late})
    runs["run_id"] = [f"j{i:05d}" for i in range(len(runs))]
    return complete_answer_runs(runs)


def test_late_rate_is_the_flow_minus_the_jumps():
    fit = fit_mechanism(_planted(0), n_boot=200)
    reg = fit.regression.set_index("term")
    assert list(reg.index) == ["c", "min_lambda_ratio", "jump_rate_late"]
    assert reg["expected_in_interval"].all(), reg
    assert (reg["hi"] - reg["lo"]).max() < 0.5 and reg["r2"].iloc[0] > 0.8
    assert (reg["n_instances"] == 45).all() and (reg["n_runs"] == 3 * 3 * 5 * 6 * 4).all()
    # another planted mechanism is told apart: the flow at half the rate is outside the interval
    other = fit_mechanism(_planted(1, flow=1.0), n_boot=200).regression.set_index("term")
    assert not other.loc["min_lambda_ratio", "expected_in_interval"]
    assert other.loc["min_lambda_ratio", "lo"] <= 1.0 <= other.loc["min_lambda_ratio", "hi"]


def test_the_interval_resamples_data_instances():
    """An offset shared by the runs of a data instance (sd 0.5 over 45 instances) puts a standard error of
    about 0.5 / sqrt(45) = 0.075 on the intercept; resampling runs alone would see about 0.1 / sqrt(1080)."""
    reg = fit_mechanism(_planted(6, instance_sd=0.5), n_boot=300).regression.set_index("term")
    half = (reg.loc["c", "hi"] - reg.loc["c", "lo"]) / 2
    assert 0.1 < half < 0.3 and reg.loc["c", "lo"] <= 0.0 <= reg.loc["c", "hi"]


def test_the_jumps_scaling_law():
    runs = pd.concat([_planted(2), _planted(3, ks=(0,)).assign(run_id=lambda d: "z" + d["run_id"])],
                     ignore_index=True)
    jumps = fit_mechanism(runs, n_boot=200).jumps
    law = jumps[jumps["k_group"] == "k>=1"].set_index("term")
    for term in ("n", "k", "m"):
        half = (law.loc[term, "hi"] - law.loc[term, "lo"]) / 2
        assert abs(law.loc[term, "estimate"] - JUMPS[term]) <= 1.5 * half < 0.25, law.loc[term]
    # k = 0: no jumps at all, left out of the law and said so
    plain = jumps[jumps["k_group"] == "k=0"]
    assert plain["estimate"].isna().all() and plain["note"].str.contains("without a positive jump_rate_late").all()


def test_non_finite_runs_are_left_out_and_counted():
    runs = _planted(4)
    runs.loc[:9, "late_rate"] = np.nan
    runs.loc[10, "status"] = "diverged"
    reg = fit_mechanism(runs, n_boot=20).regression
    assert (reg["n_runs"] == len(runs) - 11).all() and reg["note"].str.contains("10 run").all()
    with pytest.raises(Exception, match="late_rate"):
        fit_mechanism(runs.drop(columns="late_rate"))


def test_plot_mechanism_draws_every_run():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _planted(5)
    fig, ax = plt.subplots()
    points = plot_mechanism(ax, runs)
    assert points.get_offsets().shape == (len(runs), 2)
    np.testing.assert_allclose(points.get_offsets()[:, 1], runs["late_rate"])
    plt.close(fig)
