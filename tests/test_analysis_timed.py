import numpy as np
import pandas as pd
import pytest

from analysis.success import criteria, criterion, run_success, timed_criteria
from analysis.timed import (conv_success, drift_until, late_rate_at, lazy_success, parse_horizon, rate_soft_success,
                            rate_success, t_to_column, time_to, timed_name)
from tests.answer_synth import complete_answer_curves, complete_answer_runs

LAM = 0.05  # lambda_*: absolute times are (1/lambda_*) / LAM


def _runs(**columns):
    base = {"lambda_star": LAM, "t_max": 48.0, "t_unit": "lambda_star", "eps": 1e-10}
    return complete_answer_runs(pd.DataFrame({**base, **columns}))


def test_t_to_names_and_units():
    assert [t_to_column(e) for e in (1e-4, 1e-8, 1e-10, 5e-5)] == ["t_to_1e-4", "t_to_1e-8", "t_to_1e-10", "t_to_5e-5"]
    runs = _runs(**{"t_to_1e-8": [100.0, np.inf], "t_to_1e-6": [50.0, 400.0]})
    np.testing.assert_allclose(time_to(runs, 1e-8), [5.0, np.inf])
    np.testing.assert_allclose(time_to(runs, 1.0e-6), [2.5, 20.0])
    recorded = [c for c in runs.columns if not c.startswith("t_to_1e") or c in ("t_to_1e-8", "t_to_1e-6")]
    with pytest.raises(ValueError, match=r"t_to_1e-9.*\[1e-08, 1e-06\]"):  # a table that records two tolerances
        time_to(runs[recorded], 1e-9)


def test_criterion_names_with_a_horizon():
    assert parse_horizon("conv@48") == ("conv", 48.0) and parse_horizon("lazy") == ("lazy", None)
    assert timed_name("rate", 96) == "rate@96" and timed_name("rate") == "rate"
    c = criterion("conv@1e2")
    assert c.name == "conv@1e2" and c.judge.keywords == {"horizon": 100.0} and not c.needs_curves
    assert criterion("lazy@12").needs_curves and not criterion("lazy").needs_curves
    for bad in ("conv@", "conv@-3", "conv@inf", "conv@x"):
        with pytest.raises(ValueError, match="positive flow time"):
            criterion(bad)
    with pytest.raises(ValueError, match=r"unknown; use one of interpolation.*conv\[@T\]"):
        criterion("converge@48")
    # the registry's own criteria are unchanged, and listed apart from the timed ones
    assert criteria() == ("interpolation", "settled", "settled_both", "regime")
    assert timed_criteria() == ("conv", "rate", "rate_soft", "lazy")
    assert criterion("interpolation").name == "interpolation"
    # the width search's configuration accepts them, and names a bad horizon
    from pipeline.config import Search

    assert Search(criterion="rate@96", eps=1e-8).criterion == "rate@96"
    with pytest.raises(ValueError, match="positive flow time"):
        Search(criterion="rate@0")


def test_conv_at_a_horizon_and_runs_with_unknown_outcomes():
    # reached at 48 exactly, just after 48, never (ran to 96), diverged after reaching early
    runs = _runs(run_id=list("abcd"), status=["converged", "converged", "budget", "diverged"],
                 t=np.array([50.0, 60.0, 96.0, 10.0]) / LAM, t_max=96.0,
                 min_rel_loss=[1e-10, 1e-10, 1e-5, 1e-9], **{"t_to_1e-8": np.array([48.0, 48.01, np.inf, 2.0]) / LAM})
    assert list(conv_success(runs, None, 1e-8, 48.0)) == [True, False, False, False]
    assert list(conv_success(runs, None, 1e-8, None)) == [True, True, False, False]
    assert list(criterion("conv@48").judge(runs, None, 1e-8)) == [True, False, False, False]
    # a run that ran out of budget at 24 has no outcome at 48: refused, naming it
    short = pd.concat([runs, _runs(run_id=["e"], status=["budget"], t=[24.0 / LAM], t_max=24.0,
                                   min_rel_loss=[1e-5], **{"t_to_1e-8": [np.inf]})], ignore_index=True)
    with pytest.raises(ValueError, match=r"1 run\(s\) stopped before T=48.*'e' at t=24"):
        conv_success(short, None, 1e-8, 48.0)
    assert list(conv_success(short, None, 1e-8, 24.0)) == [False, False, False, False, False]
    # a run stopped at a training eps above eps' is unjudgeable below it, at any horizon past its stop
    stopped = _runs(run_id=["f"], status=["converged"], eps=1e-6, t=[5.0 / LAM], min_rel_loss=[9e-7],
                    **{"t_to_1e-8": [np.inf]})
    with pytest.raises(ValueError, match="'f'"):
        conv_success(stopped, None, 1e-8, 48.0)
    with pytest.raises(ValueError, match="below the training eps"):
        conv_success(stopped, None, 1e-8, None)
    assert list(conv_success(stopped, None, 1e-8, 4.0)) == [False]


def test_rate_needs_the_bound_until_eps_prime():
    t_to = np.array([10.0, 10.0, 10.0, 10.0, np.inf]) / LAM
    runs = _runs(run_id=list("abcde"), status=["converged"] * 4 + ["budget"], t=np.array([20] * 4 + [48.0]) / LAM,
                 min_rel_loss=[1e-10] * 4 + [1e-5], bound_violation_t=[np.inf, 12 / LAM, 10 / LAM, 3 / LAM, np.inf],
                 **{"t_to_1e-8": t_to})
    # held throughout; broke after eps' (fine); broke at the step that reached it; broke before; never reached
    assert list(rate_success(runs, None, 1e-8, 48.0)) == [True, True, False, False, False]
    assert list(rate_success(runs, None, 1e-8, 5.0)) == [False] * 5
    nan = runs.assign(bound_violation_t=np.nan)
    assert not rate_success(nan, None, 1e-8, None).any()


def _curve(run_id, t, rel, drift=None, lam_min=None):
    t = np.asarray(t, dtype=float)
    return pd.DataFrame({"run_id": run_id, "step": np.arange(t.size), "t": t / LAM, "rel_loss": rel,
                         "H_drift_2": np.zeros(t.size) if drift is None else np.asarray(drift) * LAM,
                         "lambda_min": np.full(t.size, 0.9 * LAM) if lam_min is None else np.asarray(lam_min) * LAM})


def test_late_rate_at_a_horizon_from_the_checkpoints():
    rho = 0.7
    t = np.array([0.0, 1.0, 3.0, 7.0, 11.0, 19.0, 26.0, 40.0, 48.0])
    rng = np.random.default_rng(0)
    wiggly = np.exp(-0.3 * t + rng.normal(0, 0.5, t.size))
    curves = complete_answer_curves(pd.concat([_curve("exp", t, np.exp(-rho * t)),
                                               _curve("flat", t, np.full(t.size, 1e-5)), _curve("wiggly", t, wiggly)]))
    runs = _runs(run_id=["exp", "flat", "wiggly"], status="budget", t=48.0 / LAM, late_rate=[9.0, 9.0, 9.0])
    got = late_rate_at(runs, curves, 30.0)
    # t_end = 26 (last checkpoint <= 30), tau = 11 (last <= 13): a closed form for each curve
    assert got.iloc[0] == pytest.approx(rho, rel=1e-12) and got.iloc[1] == pytest.approx(0.0, abs=1e-15)
    assert got.iloc[2] == pytest.approx(np.log(wiggly[4] / wiggly[6]) / 15.0, rel=1e-12)
    # at the run's own horizon the summary's late_rate is used, before it the checkpoints
    assert list(rate_soft_success(runs, None, 1e-8)) == [True, True, True]
    assert list(rate_soft_success(runs, curves, 1e-8, 30.0)) == [True, False, got.iloc[2] >= 0.5]


def test_lazy_up_to_a_horizon_from_the_curves():
    t = [0.0, 1.0, 2.0, 6.0, 12.0, 24.0, 48.0]
    late = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4]   # crosses 1/4 between 12 and 24
    curves = complete_answer_curves(pd.concat([
        _curve("late", t, np.ones(7), drift=late),
        _curve("dip", t, np.ones(7), lam_min=[0.9, 0.9, 0.45, 0.9, 0.9, 0.9, 0.9]),
        _curve("unmeasured", t, np.ones(7), drift=[0, np.nan, np.nan, 0.1, 0.1, 0.2, 0.2]),
        _curve("stopped", t[:4], np.ones(4), drift=[0.0, 0.3, 0.3, 0.3])]))
    runs = _runs(run_id=["late", "dip", "unmeasured", "stopped"], status=["budget"] * 3 + ["converged"],
                 t=np.array([48.0, 48.0, 48.0, 6.0]) / LAM, max_H_drift_2=np.array([0.4, 0.0, 0.2, 0.3]) * LAM,
                 min_lambda_ratio=[0.9, 0.45, 0.9, 0.9])
    assert list(lazy_success(runs, None, 1e-8)) == [False, False, True, False]
    assert list(lazy_success(runs, curves, 1e-8, 12.0)) == [True, False, True, False]
    assert list(lazy_success(runs, curves, 1e-8, 1.0)) == [True, True, True, False]
    early = drift_until(runs, curves, 12.0)
    np.testing.assert_allclose(early["drift_ratio"], [0.2, 0.0, 0.1, 0.3])
    np.testing.assert_allclose(early["lambda_ratio"], [0.9, 0.45, 0.9, 0.9])
    # NaN in the runs' summary is a run never measured: it fails
    assert not lazy_success(runs.assign(max_H_drift_2=np.nan), None, 1e-8).any()


def test_timed_criteria_in_the_success_table():
    runs = _runs(run_id=["a", "b"], n=4, k=1, m=[64, 128], seed=[0, 1], status=["converged", "budget"],
                 t=np.array([10.0, 48.0]) / LAM, min_rel_loss=[1e-10, 1e-3], bound_violation_t=np.inf,
                 **{"t_to_1e-8": np.array([8.0, np.inf]) / LAM, "t_to_1e-4": np.array([2.0, 30.0]) / LAM})
    success = run_success(runs, None, eps_grid=[1e-4, 1e-8], criteria=["conv@12", "rate", "interpolation"])
    got = success.set_index(["criterion", "eps", "run_id"])["success"]
    assert not got[("conv@12", 1e-4, "b")] and got[("conv@12", 1e-8, "a")]
    assert got[("rate", 1e-4, "b")] and not got[("interpolation", 1e-8, "b")]


@pytest.mark.parametrize("name", ["conv", "rate", "rate_soft", "lazy", "conv@48", "rate@48", "rate_soft@48", "lazy@48"])
def test_a_timed_criterion_judges_from_the_columns_it_declares(name):
    """What a criterion declares is what the loaders read for it: its judge needs nothing else."""
    from tests.analysis_synth import assert_judges_from_declared_columns
    from tests.answer_synth import planted_curves, planted_study

    runs = planted_study([dict(n=8, k=1, delta=0.5, m_inf=64.0, m_held=128.0)], widths=2 ** np.arange(4, 10),
                         instances=2, seeds=4, rng_seed=3, A=8.0, held={"slope": 3.0},
                         drift=dict(c=1.0, n=0.0, k=0.0, m=-0.5, tau=0.1, sigma=0.2))
    curves = planted_curves(runs)
    assert_judges_from_declared_columns(criterion(name), runs, curves, 1e-8)
