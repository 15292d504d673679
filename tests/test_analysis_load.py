import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import success as success_module
from analysis.fits import fit_exponents
from analysis.load import (CURVE_COLUMNS, RUN_COLUMNS, MissingColumnError, curve_columns, load_curves, load_results,
                           load_runs, run_columns)
from analysis.success import criteria, declared_columns, run_success, success_rates
from analysis.thresholds import theory_gap, thresholds
from records.schema import (CELL_COLUMNS, CURVES_SCHEMA, IDENTITY_COLUMNS, INSTANCE_COLUMNS, PROVENANCE_COLUMNS,
                            TRAINING_COLUMNS)
from records.schema import RUNS_SCHEMA as RUN_SCHEMA
from sobolev.record import SUMMARY_FIELDS
from tests.analysis_synth import complete_curves, floor_curves, planted_floor_runs, planted_runs, write_results

DELTA_FAIL = 0.1


def _tables():
    runs = planted_runs(p=2, q=1, C=4.0, ns=(3, 5, 8, 13), ks=(1, 2, 4), seeds=8, slope=3.0,
                        delta_fail=DELTA_FAIL, rng_seed=5)
    # two checkpoints per run; the bound breaks at the end of the runs that do not converge, so
    # that both criteria agree
    converged = (runs["status"] == "converged").to_numpy()
    curves = complete_curves(pd.DataFrame({
        "run_id": np.repeat(runs["run_id"], 2), "step": np.tile([0, 100], len(runs)),
        "rel_loss": np.column_stack([np.ones(len(runs)), runs["min_rel_loss"]]).ravel(),
        "lambda_min": 1.0, "bound_held": np.column_stack([np.ones(len(runs), bool), converged]).ravel()}))
    return runs, curves


def _junk(path, runs):
    """A partial or temporary file the pipeline may leave next to finished ones."""
    pq.write_table(pa.Table.from_pandas(runs.head(3).assign(run_id="junk"), schema=RUN_SCHEMA,
                                        preserve_index=False), path)


def test_round_trip_ignores_partial_and_temporary_files(tmp_path):
    runs, curves = _tables()
    write_results(tmp_path, runs, curves)
    for name in (".task0009.parquet", "_task0010.parquet", "task0011.parquet.tmp"):
        _junk(tmp_path / "runs" / name, runs)
    loaded = load_results(tmp_path)
    pd.testing.assert_frame_equal(loaded.runs.sort_values("run_id", ignore_index=True),
                                  runs[list(RUN_COLUMNS)].sort_values("run_id", ignore_index=True))
    pd.testing.assert_frame_equal(loaded.curves, curves[list(CURVE_COLUMNS)].sort_values(
        ["run_id", "step"], ignore_index=True))
    assert list(load_runs(tmp_path, columns=None).columns) == RUN_SCHEMA.names


def test_curves_filtered_by_run_id(tmp_path):
    runs, curves = _tables()
    write_results(tmp_path, runs, curves)
    wanted = list(runs["run_id"].iloc[[7, 3]])
    got = load_curves(tmp_path, columns=["run_id", "step", "rel_loss"], run_ids=wanted)
    assert sorted(got["run_id"].unique()) == sorted(wanted) and len(got) == 4
    assert list(got["step"]) == [0, 100, 0, 100]


def test_file_of_an_older_version_reads_with_defaults_and_unknown_columns_are_named(tmp_path):
    runs, curves = _tables()
    write_results(tmp_path, runs, curves)
    # a file written before two columns existed: a training setting and a summary column
    old = runs.head(2).drop(columns=["step_factor", "min_rel_loss"]).assign(run_id=["x", "y"])
    pq.write_table(pa.Table.from_pandas(old, preserve_index=False), tmp_path / "runs" / "task0099.parquet")
    loaded = load_runs(tmp_path).set_index("run_id")
    from sobolev import TrainConfig

    assert (loaded.loc[["x", "y"], "step_factor"] == TrainConfig().step_factor).all()  # the setting's default
    assert loaded.loc[["x", "y"], "min_rel_loss"].isna().all()  # a measurement it never made: null
    with pytest.raises(MissingColumnError, match="no_such_column"):
        load_runs(tmp_path, columns=["run_id", "no_such_column"])


def test_duplicate_runs_and_empty_directories(tmp_path):
    runs, curves = _tables()
    write_results(tmp_path, runs, curves)
    pq.write_table(pa.Table.from_pandas(runs.head(1), schema=RUN_SCHEMA, preserve_index=False),
                   tmp_path / "runs" / "again.parquet")
    with pytest.raises(ValueError, match="duplicated run_id"):
        load_runs(tmp_path)
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "nowhere")


def test_end_to_end_from_parquet(tmp_path):
    runs, curves = _tables()
    write_results(tmp_path, runs, curves)
    runs, curves = load_results(tmp_path)
    rates = success_rates(run_success(runs, curves, eps_grid=[1e-2, 1e-4]))
    th = theory_gap(thresholds(rates, delta_fail=DELTA_FAIL, n_boot=200), runs)
    # both criteria at both tolerances give the same thresholds
    assert th.groupby(["n", "k"])["m_star"].nunique().eq(1).all()
    fit = fit_exponents(th, m_col="m_logistic").set_index(["criterion", "eps", "term"])
    assert len(fit) == 2 * 2 * 3
    for (criterion, eps, term), row in fit.iterrows():
        truth = {"c": np.log(4.0), "p": 2.0, "q": 1.0}[term]
        assert row["lo"] <= truth <= row["hi"]
    np.testing.assert_allclose(th["log10_gap"], np.log10(th["m_star"] / th["m_thm"]))


def test_the_default_columns_derive_from_the_schema_and_the_criteria():
    read = set(run_columns())
    for group in (IDENTITY_COLUMNS, CELL_COLUMNS, TRAINING_COLUMNS, SUMMARY_FIELDS, INSTANCE_COLUMNS):
        assert set(group) <= read
    assert not read & set(PROVENANCE_COLUMNS)  # how a run was made: read on request (columns=None)
    runs_declared, curves_declared = declared_columns()
    assert {c for c in runs_declared if c in RUN_SCHEMA.names} <= read
    assert set(curve_columns()) == {"run_id", "step"} | {c for c in curves_declared if c in CURVES_SCHEMA.names}
    assert {"value_rel_interval_max", "deriv_rel_interval_max"} <= set(curve_columns())  # settled_both's


def test_every_registered_criterion_judges_what_the_loaders_read_by_default(tmp_path):
    """No column patched in by hand: the default read is enough for every registered criterion."""
    runs = planted_floor_runs(law={"c": -3.0, "n": 2.0, "k": 1.0, "m": -1.5}, ns=(4, 8), ks=(1, 2),
                              widths=2 ** np.arange(6, 12), instances=2, seeds=2, tau=0.3, sigma=0.3, rng_seed=4,
                              train_eps=1e-6)
    write_results(tmp_path, runs, floor_curves(runs))
    runs, curves = load_results(tmp_path)
    success = run_success(runs, curves, eps_grid=[1e-3], criteria=criteria())
    assert set(success["criterion"]) == set(criteria()) and success["success"].any()


def test_a_criterion_registered_later_is_read_by_default(tmp_path):
    runs, curves = _tables()
    write_results(tmp_path, runs, curves)
    assert "H_drift" not in load_curves(tmp_path).columns and "git_commit" not in load_runs(tmp_path).columns
    success_module.register("drifting", columns=("status", "git_commit"), curve_columns=("run_id", "step", "H_drift"))(
        lambda runs, curves, eps: pd.Series(True, index=runs.index))
    try:
        assert "H_drift" in load_curves(tmp_path).columns and "git_commit" in load_runs(tmp_path).columns
        assert "git_commit" not in RUN_COLUMNS  # the constant holds the defaults at import
    finally:
        del success_module._REGISTRY["drifting"]
    with pytest.raises(TypeError, match="list of column names"):
        load_runs(tmp_path, columns="run_id")


@pytest.mark.parametrize("name", ["conv", "rate", "rate_soft", "lazy", "conv@48", "rate@48", "rate_soft@48", "lazy@48"])
def test_every_criterion_with_a_horizon_judges_what_the_loaders_read_by_default(tmp_path, name):
    from analysis.success import criterion
    from tests.answer_synth import planted_curves, planted_study

    runs = planted_study([dict(n=8, k=1, delta=0.5, m_inf=64.0, m_held=128.0)], widths=2 ** np.arange(4, 10),
                         instances=2, seeds=4, rng_seed=3, A=8.0, held={"slope": 3.0},
                         drift=dict(c=1.0, n=0.0, k=0.0, m=-0.5, tau=0.1, sigma=0.2))
    curves = planted_curves(runs)
    write_results(tmp_path, runs, curves)
    loaded, loaded_curves = load_results(tmp_path)
    judge = criterion(name).judge
    expected = judge(runs, curves, 1e-8).set_axis(runs["run_id"]).sort_index()
    got = judge(loaded, loaded_curves, 1e-8).set_axis(loaded["run_id"]).sort_index()
    pd.testing.assert_series_equal(got, expected)
