"""End to end on real components: a local Ray, MLflow (SQLite file and a real server),
Parquet files (`ray job submit` to a cluster started with `ray start --head`: tests/test_deploy.py)."""

import os
import subprocess
import sys

import pytest
from pipeline_helpers import free_port, mlflow_children, tiny_config, wait_http

from pipeline.driver import run_sweep
from pipeline.grid import plan
from pipeline.tracking import PARAM_FIELDS
from records.schema import CURVES_SCHEMA, RUNS_SCHEMA
from records.tables import read_table

pytestmark = pytest.mark.slow  # end to end: a local Ray, MLflow (a real server too), Parquet


def work_done(work_log, since: int) -> list[str]:
    return work_log.read_text().splitlines()[since:]


def check_results(cfg, out, uri):
    runs, curves = read_table(out, "runs"), read_table(out, "curves")
    tasks, total = plan(cfg)
    assert runs.num_rows == total
    assert runs.schema.equals(RUNS_SCHEMA) and curves.schema.equals(CURVES_SCHEMA)
    ids = runs.column("run_id").to_pylist()
    assert len(set(ids)) == len(ids) == total
    assert ids and set(curves.column("run_id").to_pylist()) == set(ids)
    children = mlflow_children(uri, cfg.experiment_name())
    assert set(children) == set(ids)
    for rec in runs.to_pylist():
        params = children[rec["run_id"]].data.params
        assert {f: params[f] for f in PARAM_FIELDS} == {f: str(rec[f]) for f in PARAM_FIELDS}
        assert children[rec["run_id"]].data.tags["sweep"] == cfg.name
        metrics = children[rec["run_id"]].data.metrics
        assert metrics["final_rel_loss"] == pytest.approx(rec["final_rel_loss"])
    return runs


def test_sweep_end_to_end_then_resume(local_ray, work_log, tmp_path):
    cfg = tiny_config()
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = len(work_done(work_log, 0))
    report = run_sweep(cfg, out=out, tracking_uri=uri, progress=False)
    total = plan(cfg)[1]
    assert (report.done, report.skipped, report.failed) == (total, 0, 0)
    assert sorted(work_done(work_log, before)) == sorted(read_table(out, "runs").column("run_id").to_pylist())
    check_results(cfg, out, uri)
    # the curves of a run hold its checkpoints up to its stop
    runs = read_table(out, "runs").to_pandas().set_index("run_id")
    curves = read_table(out, "curves").to_pandas()
    last = curves.sort_values("step").groupby("run_id").last()
    assert (last["step"] == runs.loc[last.index, "steps"]).all()

    # rerun into the same output: no training, no new rows, no new MLflow runs
    mark = len(work_done(work_log, 0))
    again = run_sweep(cfg, out=out, tracking_uri=uri, progress=False)
    assert (again.done, again.skipped, again.tasks) == (0, total, 0)
    assert work_done(work_log, mark) == []
    check_results(cfg, out, uri)

    # a grown grid computes only the new runs
    bigger = tiny_config(grid=dict(m=[16, 64, 32]))
    grown = run_sweep(bigger, out=out, tracking_uri=uri, progress=False)
    assert grown.done == total // 2 and grown.skipped == total
    assert len(work_done(work_log, mark)) == total // 2
    check_results(bigger, out, uri)


def test_force_recomputes_and_replaces(local_ray, work_log, tmp_path):
    cfg = tiny_config(grid=dict(n=[4], m=[16], bias=[False]))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_sweep(cfg, out=out, tracking_uri=uri, progress=False)
    mark = len(work_done(work_log, 0))
    report = run_sweep(cfg, out=out, tracking_uri=uri, progress=False, force=True)
    assert report.done == 3 and len(work_done(work_log, mark)) == 3
    check_results(cfg, out, uri)  # still exactly once each, in Parquet and MLflow
    assert any((out / "_superseded").rglob("*.parquet"))


def test_sweep_against_mlflow_server(local_ray, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_http(uri + "/health", timeout=120)
        cfg = tiny_config(grid=dict(n=[4]))
        report = run_sweep(cfg, out=tmp_path / "out", tracking_uri=uri, progress=False)
        assert report.done == plan(cfg)[1]
        check_results(cfg, tmp_path / "out", uri)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
