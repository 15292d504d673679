"""The adaptive search on real Ray and Parquet: it shares runs with the grid both ways and
finds the grid's thresholds."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import tiny_config

from analysis import load_results, run_success, success_rates, thresholds
from pipeline.driver import run_sweep
from pipeline.search import run_search
from records.tables import read_table

pytestmark = pytest.mark.slow  # a search and a grid on a local Ray


def search_config(m=(16,)):
    return tiny_config(grid=dict(n=[4, 6], k=[1], m=list(m), bias=[False, True]), seeds=dict(init=4),
                       training=dict(t_max=3.0, max_steps=300, eps=1e-3),
                       search=dict(m_min=8, m_max=128, gallop_octaves=1, eps=0.05, extra_seeds=2, chunk=2))


def test_search_matches_grid_and_reuses_runs(local_ray, work_log, tmp_path):
    cfg = search_config()
    out = tmp_path / "out"
    mark = len(work_log.read_text().splitlines())
    report, table = run_search(cfg, out=out, mlflow=False, progress=False)
    trained = work_log.read_text().splitlines()[mark:]
    assert report.failed == 0 and len(table) == 4
    assert sorted(trained) == sorted(read_table(out, "runs").column("run_id").to_pylist())
    assert table["runs_trained"].sum() == len(trained) == report.done
    files = list((out / "thresholds").glob("*.parquet"))
    assert len(files) == 1 and len(pq.read_table(files[0])) == 4

    # the full grid over the same ladder and seeds reuses every run the search made
    widths = sorted({w for ws in table["widths"] for w in json.loads(ws)})
    grid_cfg = search_config(m=(8, 16, 32, 64, 128))
    mark = len(work_log.read_text().splitlines())
    grid = run_sweep(grid_cfg, out=out, mlflow=False, progress=False)
    assert grid.skipped == len(trained) and grid.done == len(work_log.read_text().splitlines()) - mark
    assert set(widths) <= {8, 16, 32, 64, 128}

    # the grid's thresholds (analysis package, same seeds 0..3) equal the search's
    res = load_results(out)
    runs = res.runs[res.runs["seed"] < 4]
    rates = success_rates(run_success(runs, res.curves, eps_grid=(0.05,), criteria=("interpolation",)))
    th = thresholds(rates, delta_fail=cfg.delta_fail, n_boot=0)
    merged = th.merge(table, on=["n", "k", "delta", "bias"], suffixes=("_grid", "_search"))
    assert len(merged) == 4
    for _, row in merged.iterrows():
        assert row["censored_grid"] == row["censored_search"], row
        if row["censored_grid"] == "none":
            assert row["m_star_grid"] == row["m_star_search"], row

    # a repeated search trains nothing
    mark = len(work_log.read_text().splitlines())
    _, again = run_search(cfg, out=out, mlflow=False, progress=False)
    assert len(work_log.read_text().splitlines()) == mark
    pd.testing.assert_frame_equal(again.drop(columns=["wall_time", "runs_trained"]),
                                  table.drop(columns=["wall_time", "runs_trained"]))
