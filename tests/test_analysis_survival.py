import numpy as np
import pandas as pd
import pytest
from scipy import special

from analysis.survival import convergence_times, plot_survival, survival_table
from tests.answer_synth import LAMBDA_STAR, complete_answer_runs, runs_from_times

HORIZON = 48.0
TIMES = np.array([3.0, 8.0, 20.0, 48.0, 60.0])
PI, MEAN, TAU = 0.7, 10.0, 0.6  # mixture weight, mean convergence time, instance spread of logit(PI)


def _planted_mixture(rng, *, cells: int, instances: int, seeds: int, spread: float = TAU) -> pd.DataFrame:
    """Per run: converges with probability expit(logit(PI) + u_instance) at an exponential time of mean MEAN,
    else never; right-censored at HORIZON."""
    parts = []
    for cell in range(cells):
        inst = np.repeat(np.arange(instances), seeds)
        p = special.expit(special.logit(PI) + rng.normal(0, spread, instances))[inst]
        tau = np.where(rng.random(inst.size) < p, rng.exponential(MEAN, inst.size), np.inf)
        partial = pd.DataFrame({"n": cell, "k": 2, "delta": 0.5, "m": 256, "data_seed": inst,
                                "seed": np.arange(inst.size)})
        parts.append(runs_from_times(partial, tau, t_max=HORIZON))
    runs = pd.concat(parts, ignore_index=True)
    runs["run_id"] = [f"s{i:06d}" for i in range(len(runs))]
    return complete_answer_runs(runs)


def _truth(t):
    """The population fraction converged by t: E_u[expit(logit(PI) + u)] (1 - exp(-t / MEAN))."""
    z, w = np.polynomial.hermite_e.hermegauss(40)
    mean_p = np.sum(w / w.sum() * special.expit(special.logit(PI) + TAU * z))
    return mean_p * (1 - np.exp(-np.asarray(t) / MEAN))


def test_convergence_times_in_units_of_lambda_star():
    partial = pd.DataFrame({"n": [1, 1, 1], "data_seed": 0})
    runs = complete_answer_runs(runs_from_times(partial, np.array([8.0, 45.0, np.inf]), t_max=HORIZON)
                                .assign(run_id=list("abc")))
    out = convergence_times(runs, 1e-8)
    np.testing.assert_allclose(out["time"], [8.0, 45.0, np.inf])
    # the first stopped at 1e-10 at 10 (its horizon is the budget), the second reached 1e-8 but ran to the budget
    np.testing.assert_allclose(out["horizon"], [HORIZON] * 3)
    assert list(out["censored"]) == [False, False, True]
    assert list(runs["trend"]) == ["converged", "converging", "plateau"]
    np.testing.assert_allclose(convergence_times(runs, 1e-4)["time"], [4.0, 22.5, 2.0])


def test_planted_mixture_recovered_with_covering_intervals():
    rng = np.random.default_rng(0)
    runs = _planted_mixture(rng, cells=25, instances=10, seeds=12)
    table = survival_table(runs, 1e-8, TIMES, n_boot=300, seed=1)
    assert len(table) == 25 * len(TIMES) and (table["n_runs"] == 120).all() and (table["n_instances"] == 10).all()
    inside = table[table["t"] <= HORIZON]
    truth = _truth(inside["t"])
    # the estimates scatter around the planted curve, and their intervals cover it at about the nominal rate
    assert abs((inside["frac"] - truth).groupby(inside["t"]).mean()).max() < 0.03
    covered = (inside["lo"] <= truth) & (truth <= inside["hi"])
    assert covered.mean() >= 0.85, covered.mean()
    for off in (0.25, -0.25):
        wrong = (inside["lo"] <= truth + off) & (truth + off <= inside["hi"])
        assert wrong.mean() <= 0.1, (off, wrong.mean())
    # beyond the horizon: NaN, with a note, never the last value carried on
    beyond = table[table["t"] > HORIZON]
    assert beyond[["frac", "lo", "hi", "converged"]].isna().all().all()
    assert beyond["note"].str.contains("beyond the cell's shortest run horizon 48").all()
    # runs not converged at the horizon: the planted converging ones (exponential tail) vs the plateau
    one = table[table["n"] == 0].iloc[0]
    cell = runs[runs["n"] == 0]
    assert one["n_converging"] == ((cell["trend"] == "converging") & ~(cell["t_to_1e-8"] < np.inf)).sum()
    assert one["n_plateau"] == (cell["trend"] == "plateau").sum() > 0
    assert one["n_not_reached"] == one["n_plateau"] + one["n_converging"] + one["n_stopped"]


def test_instance_scatter_widens_the_interval_beyond_seeds():
    """Instances whose convergence probabilities differ widely (logit sd 2): the fraction's scatter is mostly
    between instances, which an interval over seeds alone (about the Wilson one) would miss."""
    from analysis.stats import wilson_interval

    rng = np.random.default_rng(3)
    runs = _planted_mixture(rng, cells=10, instances=8, seeds=20, spread=2.0)
    table = survival_table(runs, 1e-8, [20.0], n_boot=300)
    w_lo, w_hi = wilson_interval(table["converged"], table["n_runs"])
    assert ((table["hi"] - table["lo"]) >= (w_hi - w_lo) - 1e-12).all()
    assert ((table["hi"] - table["lo"]) > 1.8 * (w_hi - w_lo)).mean() > 0.7


def test_shortest_horizon_and_early_stops_limit_the_curve():
    tau = np.array([5.0, 10.0, 30.0, np.inf, np.inf, 70.0])
    partial = pd.DataFrame({"n": 1, "k": 1, "delta": 0.5, "m": 64, "data_seed": [0, 0, 0, 1, 1, 1],
                            "seed": np.arange(6)})
    runs = runs_from_times(partial, tau, t_max=96.0)
    runs.loc[4, ["t_max", "t"]] = [24.0, 24.0 / LAMBDA_STAR]           # a shorter budget
    runs.loc[5, ["status", "trend"]] = ["diverged", "plateau"]          # diverged: a failure at every time
    runs = complete_answer_runs(runs.assign(run_id=[f"r{i}" for i in range(6)]))
    out = survival_table(runs, 1e-8, [4.0, 10.0, 24.0, 30.0], n_boot=50).set_index("t")
    assert out["horizon"].iloc[0] == 24.0 and out["n_diverged"].iloc[0] == 1
    assert list(out["converged"].iloc[:3]) == [0, 2, 2] and np.isnan(out.loc[30.0, "frac"])
    assert out.loc[10.0, "frac"] == pytest.approx(2 / 6)
    # a run that stopped at its training eps 1e-6 before reaching 1e-8 is censored at its stop
    stop = runs.copy()
    stop.loc[2, ["status", "eps", "t", "t_to_1e-8", "trend"]] = ["converged", 1e-6, 6.0 / LAMBDA_STAR, np.inf,
                                                                "converged"]
    out = survival_table(stop, 1e-8, [4.0, 6.0, 10.0], n_boot=50).set_index("t")
    assert out["horizon"].iloc[0] == 6.0 and out["n_stopped"].iloc[0] == 1
    assert out.loc[6.0, "converged"] == 1 and np.isnan(out.loc[10.0, "frac"])


def test_all_converged_keeps_a_seeds_interval_and_one_instance_is_said():
    partial = pd.DataFrame({"n": 1, "k": 1, "delta": 0.5, "m": 64, "data_seed": 0, "seed": np.arange(10)})
    runs = complete_answer_runs(runs_from_times(partial, np.full(10, 4.0), t_max=48.0)
                                .assign(run_id=[f"r{i}" for i in range(10)]))
    out = survival_table(runs, 1e-8, [2.0, 5.0], n_boot=50)
    assert list(out["frac"]) == [0.0, 1.0] and out["hi"].iloc[0] > 0.2 and out["lo"].iloc[1] < 0.8
    assert out["note"].str.contains("one data instance").all()
    with pytest.raises(ValueError, match="times"):
        survival_table(runs, 1e-8, [-1.0])


def test_plot_survival_stops_each_line_at_its_horizon():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame({"m": [64] * 3 + [128] * 3, "t": [1.0, 2.0, 3.0] * 2,
                          "frac": [0.1, 0.5, np.nan, 0.2, 0.6, 0.9], "lo": 0.0, "hi": 1.0})
    fig, ax = plt.subplots()
    lines = plot_survival(ax, table)
    assert [len(line.get_xdata()) for line in lines] == [2, 3] and lines[0].get_label() == "m=64"
    plt.close(fig)
    with pytest.raises(ValueError, match="one cell"):
        plot_survival(ax, pd.concat([table, table]))
