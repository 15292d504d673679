import numpy as np
import pandas as pd
import pytest

from analysis.sensitivity import sensitivity_summary, sensitivity_table
from tests.analysis_synth import floor_curves, planted_floor_runs

# floor law: log L = c + 2 log n + log k - 1.5 log m, so m*(eps') ~ n^(2/1.5) k^(1/1.5) at every eps'
LAW = {"c": -3.0, "n": 2.0, "k": 1.0, "m": -1.5}
TRUTH = {"p": 2.0 / 1.5, "q": 1.0 / 1.5}
EPS = (1e-2, 1e-3, 1e-4)
CRITERIA = ("interpolation", "settled", "settled_both", "regime")  # every registered criterion


@pytest.fixture(scope="module")
def planted():
    """The same law at two horizons, two instances per cell, runs that settle on their floor and keep
    the bound until they reach it (so every criterion agrees with 'floor <= eps'')."""
    design = dict(law=LAW, ns=(4, 8, 16, 32), ks=(1, 2, 4), widths=2 ** np.arange(4, 17), instances=2, seeds=8,
                  tau=0.2, sigma=0.3, train_eps=1e-6)
    runs = pd.concat([planted_floor_runs(rng_seed=1, t_max=12.0, **design),
                      planted_floor_runs(rng_seed=2, t_max=6.0, **design)], ignore_index=True)
    curves = floor_curves(runs)
    return runs, curves


@pytest.mark.slow  # a floor-law fit per variant on a planted study: over 10 s
def test_planted_law_reproduced_under_every_variant(planted):
    table = sensitivity_table(*planted, criteria=CRITERIA, eps_grid=EPS, floor_n_boot=100)
    variants = {"all", "without n=4", "without n=32", "without data_seed=0", "without data_seed=1"}
    assert set(table["variant"]) == variants and set(table["horizon"]) == {6.0, 12.0}
    threshold = table[table["source"] == "threshold"]
    assert set(threshold["criterion"]) == set(CRITERIA) and set(threshold["eps"]) == set(EPS)
    assert len(threshold) == len(variants) * 2 * len(CRITERIA) * len(EPS) * 2  # x horizons x terms p, q
    assert len(table[table["source"] == "floor"]) == len(variants) * 2 * 2
    assert table["estimate"].notna().all() and table["lo"].notna().all()
    truth = table["term"].map(TRUTH)
    assert (abs(table["estimate"] - truth) < 0.25).all(), table.assign(err=table["estimate"] - truth).sort_values("err")
    # rows share their data (variants overlap, criteria agree), so this is no independent coverage
    # count: one unlucky draw of instance effects moves many rows together
    covered = (table["lo"] <= truth) & (truth <= table["hi"])
    assert covered.mean() >= 0.8, covered.mean()
    # the criteria agree run by run, so their exponents are identical
    pivot = threshold.pivot_table(index=["variant", "horizon", "eps", "term"], columns="criterion", values="estimate")
    np.testing.assert_allclose(pivot["interpolation"], pivot["regime"], rtol=1e-12)
    # a wrong exponent is excluded: the theorem's p = 6 lies outside every interval
    summary = sensitivity_summary(table).set_index(["source", "term"])
    assert summary.loc[("threshold", "p"), "theory_excluded_everywhere"]
    assert summary.loc[("floor", "p"), "estimate_min"] < TRUTH["p"] < summary.loc[("floor", "p"), "estimate_max"]
    assert "excluded in every one" in summary.loc[("threshold", "p"), "statement"]


def test_tolerance_below_training_eps_is_a_note_and_bad_input_named(planted):
    runs, curves = planted
    one = runs[(runs["t_max"] == 12.0) & (runs["data_seed"] == 0)]
    table = sensitivity_table(one, curves, criteria=("interpolation",), eps_grid=(1e-7,), leave_out=(),
                              floor_loss_col=None)
    assert len(table) == 1 and table["note"].iloc[0].startswith("not judgeable") and table["estimate"].isna().all()
    both = sensitivity_table(one, curves, criteria=(), leave_out=(), floor_loss_col=("final_rel_loss", "min_rel_loss"),
                             floor_n_boot=50)
    assert set(both["criterion"]) == {"floor:final_rel_loss", "floor:min_rel_loss"} and len(both) == 4
    with pytest.raises(ValueError, match="k = 0"):
        sensitivity_table(one.assign(k=0), curves)
    with pytest.raises(ValueError, match="leave_out"):
        sensitivity_table(one, curves, leave_out=("n_middle",))
    with pytest.raises(ValueError, match="t_max=3"):
        sensitivity_table(one, curves, horizons=(3.0,))
