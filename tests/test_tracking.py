"""What MLflow shows of a sweep (real local Ray, real MLflow on SQLite, real Parquet): readable
unique names, Duration = training time, curves against flow time with the bound as a relative
quantity, the configuration and summary on the parent, and no parent for a rerun with nothing to do."""

import json
import math

import pytest
from pipeline_helpers import mlflow_children, tiny_config

from pipeline.config import CURVE_POINTS
from pipeline.driver import run_sweep
from pipeline.tracking import (EXPERIMENT_KIND, TrackingError, auth_headers, check_uri, child_run_name, child_times,
                               curve_rows, redact, runs_link)
from records.tables import read_table


def parents(client, exp_id):
    return client.search_runs([exp_id], "tags.kind = 'sweep'", max_results=100)


@pytest.mark.slow  # a sweep on a local Ray into MLflow, three times
def test_mlflow_names_durations_curves_artifacts_and_no_empty_parent(local_ray, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = tiny_config(name="trk", grid=dict(n=[4], m=[16], bias=[False, True]), seeds=dict(init=2))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = run_sweep(cfg, out=out, tracking_uri=uri, progress=False)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment_name())
    assert exp.tags.get("mlflow.experimentKind") == EXPERIMENT_KIND["mlflow.experimentKind"]
    assert f"#/experiments/{exp.experiment_id}/runs" in "\n".join(report.lines())

    runs = read_table(out, "runs").to_pandas().set_index("run_id")
    curves = read_table(out, "curves").to_pandas()
    children = mlflow_children(uri, cfg.experiment_name())
    names = [c.info.run_name for c in children.values()]
    assert len(set(names)) == len(names) == len(runs)
    for rid, child in children.items():
        rec = runs.loc[rid]
        name = child.info.run_name
        for part in (f"n{rec.n}", f"k{rec.k}", f"m{rec.m}", f"s{rec.seed}", "nobias" if not rec.bias else "-bias"):
            assert part in name, (part, name)
        # Duration is the training time of the run's task (its seeds train together), not the logging time
        duration = (child.info.end_time - child.info.start_time) / 1000
        assert rec.task_wall_time - 1e-3 <= duration and child.info.end_time <= child.data.metrics["logged_at"], child
        # flow time and the relative bound, against the Parquet curves (t, and bound = exp(-lambda_* t) r0^2)
        mine = curves[curves.run_id == rid].sort_values("step")
        history = client.get_metric_history(child.info.run_id, "curve.t_lambda")
        t_lambda = {m.step: m.value for m in history}
        # the UI's "Relative time" axis is flow time in units of 1/lambda_*
        assert all(abs(m.timestamp - child.info.start_time - 1000 * m.value) <= 1 for m in history)
        bound_rel = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "curve.bound_rel")}
        # the default curve_points: that many checkpoints at most, the first and the last among them
        steps = sorted(t_lambda)
        assert len(steps) == min(CURVE_POINTS, len(mine)) and set(steps) <= set(mine.step)
        assert steps[0] == mine.step.iloc[0] and steps[-1] == mine.step.iloc[-1]
        for row in mine[mine.step.isin(steps)].itertuples():
            assert t_lambda[row.step] == pytest.approx(row.t * rec.lambda_star, rel=1e-9)
            assert bound_rel[row.step] == pytest.approx(row.bound / rec.r0_sq, rel=1e-5)
        assert mine.t.iloc[-1] * rec.lambda_star == pytest.approx(rec.t * rec.lambda_star, rel=1e-9)

    (parent,) = parents(client, exp.experiment_id)
    assert parent.info.run_name.startswith("#1 run trk ")
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.json", "summary.txt"} <= files
    (tmp_path / "dl").mkdir()
    config = open(client.download_artifacts(parent.info.run_id, "config.json", tmp_path / "dl")).read()
    assert json.loads(config) == json.loads(cfg.model_dump_json())
    summary = open(client.download_artifacts(parent.info.run_id, "summary.txt", tmp_path / "dl")).read()
    assert f"{len(runs)} done" in summary
    # artifacts next to the database, not in the working directory
    assert (tmp_path / "mlartifacts").is_dir()

    again = run_sweep(cfg, out=out, tracking_uri=uri, progress=False)
    assert again.lines()[0].startswith(f"nothing to do: all {len(runs)} runs")
    assert len(parents(client, exp.experiment_id)) == 1

    grown = run_sweep(tiny_config(name="trk", grid=dict(n=[4], m=[16, 32], bias=[False, True]), seeds=dict(init=2)),
                      out=out, tracking_uri=uri, progress=False)
    assert grown.done == len(runs)
    names = sorted(p.info.run_name for p in parents(client, exp.experiment_id))
    assert names[0].startswith("#1 run trk ") and names[1].startswith("#2 run trk ")

    # the same runs trained into another --out: already in the experiment, said so, no empty parent
    elsewhere = run_sweep(cfg, out=tmp_path / "out2", tracking_uri=uri, progress=False)
    assert elsewhere.done == elsewhere.mlflow_skipped == len(runs)
    assert any(f"{len(runs)} runs trained here were already logged" in line for line in elsewhere.lines())
    assert len(parents(client, exp.experiment_id)) == 2


def test_child_times_from_parquet_record_and_names():
    rec = dict(created_at="2026-12-01T22:00:10+00:00", task_wall_time=4.5, n=8, k=2, m=4096, delta=0.5, bias=True,
               seed=3, data_seed=0)
    start, end = child_times(rec)
    assert end - start == 4500 and end == 1796162410000  # 2026-12-01T22:00:10Z
    assert child_times(rec, span=(100.0, 101.25)) == (100000, 101250)
    assert child_run_name(rec) == "n8-k2-m4096-d0.5-bias-s3"
    assert child_run_name(dict(rec, bias=False, data_seed=2)) == "n8-k2-m4096-d0.5-nobias-s3-data2"
    assert runs_link("http://h:5000/", "7") == "http://h:5000/#/experiments/7/runs"
    assert math.isfinite(start)


@pytest.mark.slow  # the main job through the CLI, with its own Ray
def test_the_main_job_on_the_users_defaults(tmp_path):
    """`python -m pipeline run CONFIG` as the README's main job runs it: no --tracking-uri, no
    MLFLOW_TRACKING_URI (the default store, sqlite:///mlflow.db in the working directory) and Ray's own
    authentication default (not the test session's RAY_AUTH_MODE=disabled)."""
    import os
    import subprocess
    import sys

    from pipeline_helpers import mlflow_children, tiny_dict, write_yaml

    cfg_path = write_yaml(tmp_path / "tiny.yaml", tiny_dict(name="defaults", grid=dict(n=[4], m=[16], bias=[False])))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "SOBOLEV_WORK_LOG")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", cfg_path, "--out", "out", "--num-cpus", "1",
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "mlflow.db").is_file()
    children = mlflow_children(f"sqlite:///{tmp_path / 'mlflow.db'}", "defaults")
    assert len(children) == 3  # 1 cell x 3 seeds, each logged once
    assert "mlflow ui --backend-store-uri" in proc.stdout or "MLflow runs:" in proc.stdout


def test_curve_rows_picks_the_checkpoints_nearest_to_log_spaced_flow_times():
    """Planted: checkpoints at t = 0 and 10 per decade from 1e-3 to 1e3; 8 points are t = 0 and
    7 flow times log-spaced over the last 3 decades (half a decade apart, ends included); in step order."""
    import numpy as np

    from pipeline.tracking import CURVE_DECADES

    assert CURVE_DECADES == 3
    t = [0.0, *np.geomspace(1e-3, 1e3, 61)]
    rows = list(range(len(t)))[::-1]  # any order in, step order out
    half = 10 ** 0.5
    assert [t[i] for i in curve_rows(t, rows, 8)] == pytest.approx([0.0, 1, half, 10, 10 * half, 100, 100 * half, 1e3])
    assert [t[i] for i in curve_rows(t[:32], rows[-32:], 5)] == pytest.approx([0.0, 1e-3, 1e-2, 0.1, 1.0])  # 3 decades
    assert curve_rows(t, rows, None) == sorted(rows)  # all
    assert curve_rows(t, rows, 2) == [0, len(t) - 1]  # the first and the last
    assert curve_rows(t[:5], [0, 1, 2, 3, 4], 8) == [0, 1, 2, 3, 4]  # fewer checkpoints than points: all
    # with irregular checkpoints every pick is the nearest in log t, and none is picked twice
    t = [0.0, 0.01, 0.011, 0.5, 0.9, 1.0, 30.0]
    # targets 30e-3, 0.949, 30 (3 decades); 0.9 is nearer to 0.949 than 1.0 in log t, 0.011 nearer to 0.03 than 0.01
    assert [t[i] for i in curve_rows(t, list(range(7)), 4)] == [0.0, 0.011, 0.9, 30.0]


def test_credentials_never_in_a_uri_and_redacted_in_messages(monkeypatch):
    for uri, secret in [("http://alice:s3cr3t@127.0.0.1:5000", "s3cr3t"), ("https://bob:pw%40x@h/", "pw%40x"),
                        ("postgresql+psycopg://mlflow:dbpw@db:5432/mlflow", "dbpw")]:
        assert secret not in redact(uri) and "***" in redact(uri)
        with pytest.raises(TrackingError, match="carries credentials") as exc:
            check_uri(uri)
        assert secret not in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_USERNAME"):
        check_uri("http://alice@127.0.0.1:5000")  # a user name alone: it belongs in the environment too
    check_uri("postgresql+psycopg://mlflow@db:5432/mlflow")  # a database user without password: PGPASSWORD
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cr3t")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    assert auth_headers() == {"Authorization": "Basic YWxpY2U6czNjcjN0"}  # base64 of alice:s3cr3t; the pair wins
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert auth_headers() == {"Authorization": "Bearer tok"}
