import numpy as np
import pandas as pd
import pytest

from analysis.judging import UnjudgeableToleranceError
from analysis.load import MissingColumnError
from analysis.stats import wilson_interval
from analysis.success import interpolation_success, regime_success, run_success, success_rates
from tests.analysis_synth import complete_curves, complete_runs

LAMBDA_STAR = 0.2


def _runs(**columns):
    return complete_runs(pd.DataFrame(columns).assign(lambda_star=LAMBDA_STAR))


def _curve(run_id, rel_loss, bound_held, lambda_min=None):
    rel_loss = np.asarray(rel_loss, dtype=float)
    lam = np.full(rel_loss.size, LAMBDA_STAR) if lambda_min is None else np.asarray(lambda_min, dtype=float)
    return pd.DataFrame({"run_id": run_id, "step": np.arange(rel_loss.size) * 10, "rel_loss": rel_loss,
                         "bound_held": bound_held, "lambda_min": lam})


def test_interpolation_uses_min_rel_loss_and_fails_diverged_runs():
    runs = _runs(status=["budget", "budget", "diverged", "diverged", "converged"],
                 min_rel_loss=[5e-3, 5e-2, 1e-8, np.nan, 1e-7], eps=1e-6)
    assert list(interpolation_success(runs, None, 1e-2)) == [True, False, False, False, True]


def test_tolerance_below_training_eps_raises_for_converged_runs():
    runs = _runs(status=["converged", "budget"], min_rel_loss=[9e-5, 3e-4], eps=1e-4)
    # a budget run never reached its eps, so it is judged at any eps'; the converged one is not
    with pytest.raises(UnjudgeableToleranceError, match="5e-05"):
        interpolation_success(runs, None, 5e-5)
    with pytest.raises(UnjudgeableToleranceError):
        run_success(runs, eps_grid=[1e-2, 1e-6], criteria=["interpolation"])
    # ... unless it went below eps' on its last step
    runs.loc[0, "min_rel_loss"] = 5e-7
    assert list(interpolation_success(runs, None, 1e-6)) == [True, False]


BREAK = [True, True, False, True, True, True]


@pytest.mark.parametrize("name,curve,expected", [
    # bound breaks at checkpoint 2, eps'=1e-3 first reached at checkpoint 4
    ("breaks_before_eps", _curve("r", [1, .5, .1, .01, 5e-4, 1e-4], BREAK), False),
    # reaches eps' at checkpoint 1, bound breaks later at checkpoint 2 (the flip floor)
    ("breaks_after_eps", _curve("r", [1, 5e-4, 1e-4, 2e-4, 1e-4, 1e-4], BREAK), True),
    # the checkpoint that first reaches eps' is itself checked
    ("breaks_at_eps", _curve("r", [1, .5, 5e-4, 1e-4, 1e-4, 1e-4], BREAK), False),
    # lambda_min drops below lambda_star / 2 before eps'
    ("spectrum_before_eps", _curve("r", [1, .5, .1, .01, 5e-4, 1e-4], True,
                                   [.2, .2, .09, .2, .2, .2]), False),
    # a NaN lambda_min is "not measured", not a violation
    ("spectrum_unmeasured", _curve("r", [1, .5, .1, .01, 5e-4, 1e-4], True,
                                   [.2, np.nan, np.nan, .2, .2, .2]), True),
    # never reaches eps': every checkpoint counts
    ("never_reaches_holds", _curve("r", [1, .5, .1, .05, .02, .01], True), True),
    ("never_reaches_breaks_last", _curve("r", [1, .5, .1, .05, .02, .01], [True] * 5 + [False]), False),
])
def test_regime_on_hand_made_curves(name, curve, expected):
    runs = _runs(run_id=["r"], status=["budget"], min_rel_loss=[curve["rel_loss"].min()])
    assert list(regime_success(runs, complete_curves(curve), 1e-3)) == [expected]


def test_regime_depends_on_eps():
    curve = _curve("r", [1, 5e-3, 5e-4, 1e-4, 1e-4, 1e-4], BREAK)
    runs = _runs(run_id=["r"], status=["budget"], min_rel_loss=[1e-4])
    assert list(regime_success(runs, curve, 1e-2)) == [True]   # reached at checkpoint 1
    assert list(regime_success(runs, curve, 1e-3)) == [False]  # reached at 2, where it breaks


def test_regime_fails_diverged_and_needs_curves():
    runs = _runs(run_id=["a", "b"], status=["diverged", "budget"], min_rel_loss=[1e-5, 1e-5])
    curves = _curve("a", [1, 1e-5], True)
    with pytest.raises(ValueError, match="no checkpoints"):
        regime_success(runs, curves, 1e-3)
    curves = pd.concat([curves, _curve("b", [1, 1e-5], True)])
    assert list(regime_success(runs, curves, 1e-3)) == [False, True]


def test_run_success_and_rates():
    runs = _runs(m=[16] * 4 + [32] * 4, status=["budget"] * 8, min_rel_loss=[1e-3, 1, 1, 1, 1e-3, 1e-3, 1e-3, 1])
    success = run_success(runs, eps_grid=[1e-2], criteria=["interpolation"])
    assert list(success.columns) == ["n", "k", "delta", "bias", "criterion", "eps", "m", "run_id", "seed", "success"]
    rates = success_rates(success, confidence=0.9)
    assert list(rates["m"]) == [16, 32]
    assert list(rates["successes"]) == [1, 3] and list(rates["trials"]) == [4, 4]
    lo, hi = wilson_interval([1, 3], [4, 4], 0.9)
    np.testing.assert_allclose(rates["rate_lo"], lo)
    np.testing.assert_allclose(rates["rate_hi"], hi)


def test_mixed_modes_in_a_cell_raise_unless_stratified():
    runs = _runs(mode=["relu", "frozen"], status="budget", min_rel_loss=1e-3)
    with pytest.raises(ValueError, match="mode"):
        run_success(runs, eps_grid=[1e-2], criteria=["interpolation"])
    rates = success_rates(run_success(runs, eps_grid=[1e-2], criteria=["interpolation"], strata=("mode",)))
    assert sorted(rates["mode"]) == ["frozen", "relu"]


def test_missing_column_is_named():
    runs = _runs(status=["budget"], min_rel_loss=[1e-3]).drop(columns="min_rel_loss")
    with pytest.raises(MissingColumnError, match="min_rel_loss"):
        run_success(runs, eps_grid=[1e-2], criteria=["interpolation"])
    with pytest.raises(ValueError, match="curves"):
        run_success(_runs(status=["budget"], min_rel_loss=[1e-3]), eps_grid=[1e-2])


def test_registry_names_every_criterion_and_refuses_unknown_ones_in_one_line():
    from analysis.success import criteria, criterion, register

    assert set(criteria()) >= {"interpolation", "settled", "settled_both", "regime"}
    with pytest.raises(ValueError, match="criterion 'settle' is unknown; use one of interpolation, settled") as info:
        criterion("settle")
    assert "\n" not in str(info.value)
    # a new criterion is one function and one registration, and run_success uses it at once
    register("never", columns=("status",))(lambda runs, curves, eps: pd.Series(False, index=runs.index))
    try:
        runs = _runs(status=["budget"], min_rel_loss=[1e-3])
        assert not run_success(runs, eps_grid=[1e-2], criteria=["never"])["success"].any()
    finally:
        from analysis import success

        del success._REGISTRY["never"]


def _settling_curve(run_id, rel_loss, interval_max, value=None, deriv=None):
    rel = np.asarray(rel_loss, dtype=float)
    cols = {"run_id": run_id, "step": np.arange(rel.size) * 10, "rel_loss": rel,
            "rel_loss_interval_max": np.asarray(interval_max, dtype=float)}
    for name, v in (("value_rel", value), ("deriv_rel", deriv)):
        v = rel if v is None else np.asarray(v, dtype=float)
        cols[name], cols[f"{name}_interval_max"] = v, v
    return complete_curves(pd.DataFrame(cols))


@pytest.mark.parametrize("name,curve,status,interpolation,settled", [
    # touches 1e-4 mid-run, ends above eps' = 1e-3: interpolation says yes, settled says no
    ("transient", _settling_curve("r", [1, 1e-2, 5e-3], [1, 1e-4, 8e-3]), "budget", True, False),
    # below eps' at every step of the last interval: settled
    ("settles", _settling_curve("r", [1, 1e-2, 5e-4], [1, 1e-2, 9e-4]), "budget", True, True),
    # below at the last checkpoint but not over the whole last interval
    ("spike_in_last", _settling_curve("r", [1, 1e-2, 5e-4], [1, 1e-2, 2e-3]), "budget", True, False),
    # stopped on reaching the training eps: settled, whatever the interval held before
    ("stopped_at_eps", _settling_curve("r", [1, 1e-2, 1e-7], [1, 1e-2, 5e-1]), "converged", True, True),
])
def test_settled_against_interpolation(name, curve, status, interpolation, settled):
    from analysis.success import settled_success

    runs = _runs(run_id=["r"], status=[status], eps=1e-7,
                 min_rel_loss=[min(curve["rel_loss"].min(), curve["rel_loss_interval_max"].min())])
    assert list(interpolation_success(runs, None, 1e-3)) == [interpolation]
    assert list(settled_success(runs, curve, 1e-3)) == [settled]


def test_settled_both_judges_values_and_derivatives_separately():
    from analysis.success import settled_both_success, settled_success

    # total settled at 5e-4, but the value residual (a small part of the loss) is still at 1e-2
    curve = _settling_curve("r", [1, 1e-2, 5e-4], [1, 1e-2, 9e-4], value=[1, 5e-2, 1e-2], deriv=[1, 1e-2, 4e-4])
    runs = _runs(run_id=["r"], status=["budget"], min_rel_loss=[5e-4])
    assert list(settled_success(runs, curve, 1e-3)) == [True]
    assert list(settled_both_success(runs, curve, 1e-3)) == [False]
    # k = 0: no derivative residual (NaN), judged on the values alone
    plain = _settling_curve("r", [1, 1e-2, 5e-4], [1, 1e-2, 9e-4], deriv=[np.nan] * 3)
    assert list(settled_both_success(runs, plain, 1e-3)) == [True]


def test_regime_uses_the_per_step_bound_when_recorded():
    curve = complete_curves(_curve("r", [1, .5, .1, .01, 5e-4, 1e-4], True).assign(t=np.arange(6) * 1.0))
    # every checkpoint held, but a step between checkpoints 2 and 3 broke the bound (t = 2.5)
    broke = _runs(run_id=["r"], status=["budget"], min_rel_loss=[1e-4], bound_violation_t=[2.5])
    assert list(regime_success(broke, curve, 1e-3)) == [False]
    # the violation came after eps' = 0.1 was reached at checkpoint 2 (t = 2): in the regime until then
    assert list(regime_success(broke, curve, 0.1)) == [True]
    never = broke.assign(bound_violation_t=np.inf)
    assert list(regime_success(never, curve, 1e-3)) == [True]


@pytest.mark.parametrize("name", ["interpolation", "settled", "settled_both", "regime"])
def test_a_criterion_judges_from_the_columns_it_declares(name):
    """What a criterion declares is what the loaders read for it: its judge needs nothing else."""
    from analysis.success import criterion
    from tests.analysis_synth import assert_judges_from_declared_columns, floor_curves, planted_floor_runs

    runs = planted_floor_runs(law={"c": -3.0, "n": 2.0, "k": 1.0, "m": -1.5}, ns=(4, 8), ks=(1, 2),
                              widths=2 ** np.arange(6, 12), instances=2, seeds=2, tau=0.3, sigma=0.3, rng_seed=4,
                              train_eps=1e-6)
    curves = floor_curves(runs)
    assert_judges_from_declared_columns(criterion(name), runs, curves, 1e-3)
