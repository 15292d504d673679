"""The controls as grid axes, end to end on real components (issue: measurements): one sweep with
``mode: [relu, frozen]``, ``k: [0, 1, 2]`` and ``step_factor: [1.0, 0.5]`` trains every combination on
the same instances and seeds, into Parquet and MLflow, and the analysis reads it."""

import numpy as np
import pytest
from pipeline_helpers import mlflow_children, tiny_config

from analysis import control_comparison, criteria, load_results, run_success
from pipeline.driver import run_sweep
from pipeline.grid import plan

pytestmark = pytest.mark.slow  # a sweep of every control on a local Ray, into MLflow


def test_paired_controls_through_the_pipeline_and_the_analysis(local_ray, tmp_path):
    cfg = tiny_config(name="controls", grid=dict(n=[4], k=[0, 1, 2], m=[16], bias=[False], mode=["relu", "frozen"],
                                                  step_factor=[1.0, 0.5]),
                      seeds=dict(init=2), training=dict(t_max=3.0, max_steps=200, eps=1e-8, dtype="float64"))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = run_sweep(cfg, out=out, tracking_uri=uri, progress=False)
    total = plan(cfg)[1]
    assert total == 3 * 2 * 2 * 2 and (report.done, report.failed) == (total, 0)
    children = mlflow_children(uri, cfg.experiment_name())
    runs, curves = load_results(out, run_columns=None, curve_columns=None)
    assert set(children) == set(runs["run_id"]) and len(runs) == total
    assert {(c.data.params["mode"], c.data.params["step_factor"], c.data.params["k"]) for c in children.values()} == \
        {(m, str(s), str(k)) for m in ("relu", "frozen") for s in (1.0, 0.5) for k in (0, 1, 2)}
    # paired: every setting trains the same instances and seeds
    pairs = runs.groupby(["mode", "step_factor", "k"])[["data_seed", "seed"]].apply(
        lambda g: tuple(sorted(map(tuple, g.to_numpy()))))
    assert pairs.nunique() == 1
    # k = 0 has no derivative residual; the others have one
    assert runs.loc[runs["k"] == 0, "deriv_rel_final"].isna().all()
    assert runs.loc[runs["k"] > 0, "deriv_rel_final"].notna().all()
    # frozen patterns never flip
    assert (runs.loc[runs["mode"] == "frozen", "flips_gross_total"] == 0).all()
    assert (runs.loc[runs["mode"] == "relu", "flips_gross_total"] > 0).any()
    success = run_success(runs, curves, eps_grid=[1e-2], criteria=criteria(), strata=("mode", "step_factor"))
    assert set(success["criterion"]) == set(criteria()) and len(success) == total * len(criteria())
    ratio = control_comparison(runs[runs["step_factor"] == 1.0], factor="mode", reference="relu", other="frozen",
                               n_boot=20)
    assert len(ratio) == 3 and np.isfinite(ratio["ratio"]).all()  # one per k
